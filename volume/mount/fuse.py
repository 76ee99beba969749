"""The FUSE transport: a kernel mount of an :class:`~volume.engine.Engine` through libfuse 3.

:class:`FuseMount` runs libfuse's multithreaded loop (through mfusepy) in a daemon thread of this
process, and mounts and unmounts it. The work is split along the layers of a call:

* :mod:`.operations`: :class:`EngineOperations`, the translator of libfuse's path-based calls to
  the engine's inode calls (one call to one engine call);
* :mod:`.session`: the libfuse session, mfusepy's ``FUSE`` with what it drops passed on;
* :mod:`._libfuse`: libfuse as mfusepy loads it, and the libfuse internals read through ctypes;
* this module: mount points, starting and stopping a mount.

See ``spec/fuse.md`` for the mount options and what they map to.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from ..engine import Engine
from ..errors import VolumeMountError, VolumeMountTimeout
from ._libfuse import LIBFUSE_PROBLEM
from .operations import EngineOperations, read_request_bytes
from .session import LibfuseSession

log = logging.getLogger("volume.mount.fuse")

__all__ = ["EngineOperations", "FuseMount", "fuse_usable", "prepare_mount_point"]

DEV_FUSE = "/dev/fuse"
FUSERMOUNT = "fusermount3"
PROBE_EXISTING_SECONDS = 5.0  # how long a mount already at the path may take to answer
EXIT_JOIN_SECONDS = 2.0  # how long interpreter exit waits for a busy mount's users to leave
MNT_FORCE = 1  # umount2 flag: for FUSE, abort the connection (the mount then answers ENOTCONN)
_created_mount_points: set[Path] = set()  # mount points prepare_mount_point made (removed after)


def fuse_usable() -> tuple[bool, str]:
    """Whether FUSE mounts can work here; when not, the string says why and what to do."""
    if not os.path.exists(DEV_FUSE):
        return False, f"{DEV_FUSE} does not exist; load the fuse module (or pass the device in)"
    try:
        os.close(os.open(DEV_FUSE, os.O_RDWR))
    except OSError as exc:
        return False, f"{DEV_FUSE} cannot be opened ({exc.strerror}); run with access to it"
    if LIBFUSE_PROBLEM:
        return False, LIBFUSE_PROBLEM
    if shutil.which(FUSERMOUNT) is None:
        return False, f"{FUSERMOUNT} is not on PATH; install fuse3 (apt-get install fuse3)"
    return True, ""

# =========================================================================== mount points


def _unescape(field: str) -> str:
    """A mountinfo path field (spaces, tabs, newlines and backslashes are octal escapes)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _mount_at(path: Path) -> tuple[str, str] | None:
    """``(fstype, "major:minor")`` of the topmost mount at ``path``, from mountinfo (no file-system
    call: a mount whose daemon hangs must not hang the caller)."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            parts = fields.split()
            if len(parts) > 4 and _unescape(parts[4]) == str(path):
                found = (rest.split()[0], parts[2])
    return found


def _probe(path: Path, seconds: float) -> os.stat_result | OSError | None:
    """Ask the file system at ``path`` for its statistics and attributes, in a helper thread: the
    attributes, the error, or None when no answer came within ``seconds`` (the thread is left
    blocked in the kernel until the mount answers or goes). ``statvfs`` always reaches the FUSE
    daemon, where ``stat`` may be answered from the kernel's attribute cache."""
    outcome: list[os.stat_result | OSError] = []

    def probe() -> None:
        try:
            os.statvfs(path)
            outcome.append(os.stat(path))
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=probe, name=f"fuse-probe:{path}", daemon=True)
    thread.start()
    thread.join(max(seconds, 0.0))
    return outcome[0] if outcome else None


def _fusermount(path: Path, *flags: str) -> bool:
    """``fusermount3 -u [flags] path``; whether it succeeded."""
    done = subprocess.run(
        [FUSERMOUNT, "-u", *flags, str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode:
        log.debug("%s -u %s %s: %s", FUSERMOUNT, " ".join(flags), path, done.stderr.strip())
    return done.returncode == 0


def prepare_mount_point(path: str | os.PathLike) -> Path:
    """Check a mount point before anything is mounted there, and return it absolute.

    Refuses files, non-empty directories and live mount points (:class:`VolumeMountError`),
    unmounts a dead FUSE mount left by a killed process, and creates a missing directory.
    """
    path = Path(os.path.realpath(Path(path).parent)) / Path(path).name  # the mountinfo spelling
    if _mount_at(path) is not None:
        probed = _probe(path, PROBE_EXISTING_SECONDS)
        if isinstance(probed, OSError) and probed.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            log.warning("%s: cleaning a dead FUSE mount (its process was killed)", path)
            _fusermount(path, "-z")
        else:
            raise VolumeMountError(
                f"{path} is already a mount point; unmount it ({FUSERMOUNT} -u {path}) or choose "
                f"another mount path"
            )
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise VolumeMountError(f"mount path {path} is not a directory; pass a directory path")
    if path.is_dir():
        if any(path.iterdir()):
            raise VolumeMountError(
                f"mount path {path} is not empty; pass an empty or missing directory"
            )
    else:
        path.mkdir(parents=True)
        _created_mount_points.add(path)
    return path


def _umount(path: Path, flags: int = 0) -> bool:
    """Unmount ``path`` (never lazily unless ``flags`` say so); whether it is unmounted."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.umount2(os.fsencode(path), flags) == 0:
            return True
        err = ctypes.get_errno()
        log.debug("umount2(%s, %d): %s", path, flags, os.strerror(err))
        return err == errno.EINVAL and _mount_at(path) is None
    return _fusermount(path)


def _release_mount_point(path: Path) -> None:
    """Remove a mount point this module created, right after its unmount: a process that goes
    on writing by path then gets ENOENT instead of filling the bare directory."""
    if path not in _created_mount_points:
        return
    _created_mount_points.discard(path)
    try:
        path.rmdir()
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            log.error("%s: something was written into the bare mount point after the unmount: "
                      "%s", path, sorted(os.listdir(path))[:5])  # fmt: skip
        elif exc.errno != errno.ENOENT:
            log.debug("%s: mount point kept: %s", path, exc)


# =========================================================================== the mount


class FuseMount:
    """A kernel mount of an engine, served by a daemon thread of this process.

    Use :meth:`start`; :meth:`stop` unmounts (it also runs at interpreter exit).
    """

    def __init__(self, engine: Engine, mount_path: Path, options: dict[str, Any]):
        self.engine = engine
        self.mount_path = mount_path
        self.options = options
        self.operations = EngineOperations(engine)
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._serve, name=f"fuse:{mount_path}", daemon=True
        )
        self._stop_lock = threading.Lock()
        self._stopped = False

    @classmethod
    def start(
        cls,
        engine: Engine,
        mount_path: Path,
        *,
        read_only: bool,
        attr_cache: float,
        entry_cache: float,
        dir_entry_cache: float,
        timeout: float,
        fsname: str,
        xattrs: bool = True,
    ) -> "FuseMount":
        """Mount ``engine`` at ``mount_path`` and return once the kernel gets answers from it.

        ``attr_cache`` / ``entry_cache`` / ``dir_entry_cache`` are the kernel's attribute, entry
        and negative-entry cache times in seconds. With ``xattrs=False`` the mount serves no
        extended attributes (see :meth:`EngineOperations.refuse_xattrs`). Raises
        :class:`VolumeMountError` when FUSE is unusable or the path is a file, a non-empty
        directory or a live mount point, and :class:`VolumeMountTimeout` (with nothing left
        mounted) when the mount does not answer within ``timeout`` seconds.
        """
        usable, why = fuse_usable()
        if not usable:
            raise VolumeMountError(f"cannot mount with FUSE: {why}")
        mount_path = prepare_mount_point(mount_path)
        options: dict[str, Any] = {
            "fsname": fsname,
            "subtype": "volume",
            "default_permissions": True,
            "use_ino": True,
            "attr_timeout": float(attr_cache),
            "entry_timeout": float(entry_cache),
            # a writable mount keeps no negative entries: a name created in-process is seen
            "negative_timeout": float(dir_entry_cache) if read_only else 0.0,
            "max_idle_threads": 10,  # libfuse 3.14's default is out of range: it says so on stderr
        }
        if os.geteuid() == 0:
            options["allow_other"] = True  # as JuiceFS: other users' processes see a root mount
        if read_only:
            options.update(ro=True, kernel_cache=True)  # nothing changes: keep the page cache
        else:
            # Keep the page cache across opens: every change reaches it, through the kernel's
            # write-through or our invalidations of in-process changes. Invalidating it on open
            # (auto_cache) or on a changed mtime (auto_inval_data) races the kernel's
            # write-through, which unlocks a written page before its WRITE is answered: a reader
            # could cache the old bytes and the writer read them back.
            options["kernel_cache"] = True
        mount = cls(engine, mount_path, options)
        if not xattrs:
            mount.operations.refuse_xattrs()
        previous_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM)}
        mount._thread.start()
        atexit.register(mount._stop_at_exit)
        try:  # (a KeyboardInterrupt anywhere in here leaves nothing mounted either)
            mount._wait_ready(timeout)
            mount._restore_signal_handlers(previous_handlers)
            mount._raise_readahead()
        except BaseException:
            mount._abandon()
            raise
        return mount

    def _serve(self) -> None:
        try:
            LibfuseSession(
                self.operations, str(self.mount_path), foreground=True, **self.options
            )
        except BaseException as exc:  # reported by start(); a clean unmount returns normally
            self._error = exc

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not (_mount_at(self.mount_path) or ("",))[0].startswith("fuse"):
            if not self._thread.is_alive():
                raise VolumeMountError(
                    f"libfuse could not mount {self.mount_path} ({self._error!r}); its message is "
                    f"on stderr"
                )
            if time.monotonic() > deadline:
                raise self._timeout(timeout)
            time.sleep(0.005)
        probed = _probe(self.mount_path, deadline - time.monotonic())
        if probed is None:
            raise self._timeout(timeout)
        if isinstance(probed, OSError):
            raise VolumeMountError(f"the new mount at {self.mount_path} fails: {probed}")

    def _timeout(self, timeout: float) -> VolumeMountTimeout:
        return VolumeMountTimeout(
            f"the FUSE mount at {self.mount_path} did not answer within {timeout} s; it was "
            f"unmounted again. Retry with a longer timeout, or check the metadata and object "
            f"stores it reads"
        )

    def _abandon(self) -> None:
        """Undo a failed start: detach the mount at once. The loop ends by itself once the
        calls in flight return (a hung engine call keeps it, and only it, alive)."""
        with self._stop_lock:
            self._stopped = True
        atexit.unregister(self._stop_at_exit)
        if _mount_at(self.mount_path) is not None:
            _fusermount(self.mount_path, "-z")
        self._thread.join(1.0)

    def _raise_readahead(self) -> None:
        """Let sequential reads arrive as whole requests (:func:`read_request_bytes`, about
        1 MiB): the kernel caps FUSE readahead at its 128 KiB default whatever the daemon asks,
        unless the mount's bdi says otherwise (only root may set it; others keep 128 KiB
        requests)."""
        mounted = _mount_at(self.mount_path)
        if mounted is None:
            return
        try:
            with open(f"/sys/class/bdi/{mounted[1]}/read_ahead_kb", "w") as f:
                f.write(str(read_request_bytes() // 1024))
        except OSError as exc:
            log.debug("%s: kernel readahead left at its default: %s", self.mount_path, exc)

    def _restore_signal_handlers(self, handlers: dict[int, Any]) -> None:
        """libfuse takes SIGHUP and SIGTERM to end its loop; give them back to the process (a
        terminated process should terminate, not just lose its mount)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)

    @property
    def mounted(self) -> bool:
        """Whether the mount is up (its loop runs and the kernel lists it)."""
        return self._thread.is_alive() and _mount_at(self.mount_path) is not None

    def _stop_at_exit(self) -> None:
        # briefly: files this process still holds open keep the mount busy
        self.stop(timeout=EXIT_JOIN_SECONDS)

    def stop(self, timeout: float = 30.0) -> None:
        """Unmount and wait for the loop to end; idempotent.

        Never lazily: a lazy unmount lets the next path lookup of a process still working in
        the mount land in the bare mount-point directory. A busy mount stays mounted (read-only
        when its engine is frozen) until its users leave or ``timeout`` passes; then its
        connection is aborted: its users get ENOTCONN, and it is unmounted once they are gone.
        A mount point that was created for the mount is removed right after it.
        """
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        with self.operations._later_lock:
            self.operations.closed = True
        atexit.unregister(self._stop_at_exit)
        deadline = time.monotonic() + timeout
        pause = 0.01
        while _mount_at(self.mount_path) is not None:
            if _umount(self.mount_path):
                break
            if time.monotonic() >= deadline:
                self._abort()
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
        else:
            _release_mount_point(self.mount_path)
        if _mount_at(self.mount_path) is None:
            _release_mount_point(self.mount_path)
        self._thread.join(max(deadline - time.monotonic(), EXIT_JOIN_SECONDS))
        if self._thread.is_alive():
            log.warning("the FUSE loop of %s still runs after the unmount", self.mount_path)

    def _abort(self) -> None:
        """The mount stayed busy past its timeout: never a lazy unmount. As root, abort its
        connection (its users get ENOTCONN); otherwise (only root may abort a connection) it
        stays mounted, frozen, while this process lives. Either way it is unmounted in the
        background once its users have left."""
        path = self.mount_path
        if os.geteuid() == 0:
            log.warning("%s is still busy: its connection is aborted (its users get ENOTCONN)",
                        path)  # fmt: skip
            _umount(path, MNT_FORCE)
        else:
            log.warning("%s is still busy: it stays mounted until its users leave (they get "
                        "ENOTCONN if this process exits first)", path)  # fmt: skip

        def reap() -> None:
            while _mount_at(path) is not None and not _umount(path):
                time.sleep(1.0)
            _release_mount_point(path)

        threading.Thread(target=reap, name=f"fuse-reap:{path}", daemon=True).start()

    def __repr__(self) -> str:
        return f"FuseMount({str(self.mount_path)!r}, mounted={self.mounted})"
