"""How ``volume commit PATH`` reaches the ``volume mount`` process serving PATH.

The mount process listens on a Unix socket named after the mount path (in ``$XDG_RUNTIME_DIR``
or the temporary directory, private to the user); a request is one JSON line, so is the answer,
which ``{"progress": [done, total, unit]}`` lines may precede.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import socketserver
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from ..errors import VolumeNotMounted, VolumeUsageError

#: ``handler(request, send)``: the answer to ``request``; ``send(message)`` streams a message
#: before it (progress, as ``{"progress": [done, total, unit]}``)
Handler = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], dict[str, Any]]


def mount_key(path: str | os.PathLike[str]) -> Path:
    """The absolute spelling of a mount path (its parent's symlinks resolved)."""
    p = Path(path)
    return Path(os.path.realpath(p.parent)) / p.name if p.name else Path(os.path.realpath(p))


def socket_path(path: str | os.PathLike[str]) -> Path:
    base = (
        Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"volume-{os.getuid()}"
    )
    digest = hashlib.sha256(str(mount_key(path)).encode()).hexdigest()[:24]
    return base / f"{digest}.sock"


class _Requests(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: ControlServer = self.server  # type: ignore[assignment]
        lock = threading.Lock()

        def send(message: dict[str, Any]) -> None:
            with lock, contextlib.suppress(OSError):  # a client gone away stops nothing
                self.wfile.write(json.dumps(message).encode() + b"\n")
                self.wfile.flush()

        try:
            request = json.loads(self.rfile.readline() or b"{}")
            answer = server.handler(request, send)
        except Exception as exc:  # noqa: BLE001  (the client prints it as its error)
            answer = {"error": " ".join(str(exc).split()), "type": type(exc).__name__}
        send(answer)


class ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, mount_path: Path, handler: Handler):
        self.path = socket_path(mount_path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.exists():
            try:
                request(mount_path, {"verb": "ping"}, timeout=2)
            except VolumeNotMounted:
                self.path.unlink(missing_ok=True)  # left by a killed mount process
            else:
                raise VolumeUsageError(
                    f"{mount_key(mount_path)} is already served by a volume mount"
                )
        self.handler = handler
        self._closed = False
        super().__init__(str(self.path), _Requests)
        os.chmod(self.path, 0o600)
        self._thread = threading.Thread(
            target=self.serve_forever, name="volume-control", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.shutdown()
        self.server_close()
        self.path.unlink(missing_ok=True)


def request(
    mount_path: str | os.PathLike[str],
    payload: dict[str, Any],
    timeout: float,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Send one request to the mount process serving ``mount_path``; its answer (progress
    messages before it go to ``on_progress``)."""
    where = socket_path(mount_path)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        try:
            conn.connect(str(where))
        except (FileNotFoundError, ConnectionRefusedError):
            raise VolumeNotMounted(
                f"{mount_key(mount_path)} is not served by a `volume mount` of this user; mount a "
                f"version there first (volume mount VERSION PATH)"
            ) from None
        conn.sendall(json.dumps(payload).encode() + b"\n")
        with conn.makefile("rb") as lines:
            for line in lines:
                message = json.loads(line)
                if set(message) != {"progress"}:
                    return message
                if on_progress is not None:
                    on_progress(*message["progress"])
    finally:
        conn.close()
    return {}
