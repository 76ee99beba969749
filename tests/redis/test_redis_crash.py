"""Durability on redis: a process writes files with fsync each and lists each name in a manifest
once its fsync returned; it is killed with SIGKILL at a random point (in one variant its
redis-server too, in the other the server survives it); a new engine over the same meta_dir finds
every listed file with its exact content, and no block key is ever put twice.

The redis twin of tests/unit/test_engine_crash.py (the crash test the JuiceFS project runs in CI).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from volume.engine import Engine, PathFS, format_volume, new_format
from volume.engine.check import check_metadata
from volume_local import LocalObjectStore
from volume_redis import RedisMetaStore
from volume_redis._server import PID_FILE, _is_running

FILE_BYTES = 4096


class LoggedStore(LocalObjectStore):
    """A local store that appends the key of every block put to ``puts.log`` (all processes)."""

    def __init__(self, root: Path, log: Path):
        super().__init__(root)
        self._log = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def put(self, key, data, *, if_absent=False):
        if "/chunks/" in key:
            os.write(self._log, key.encode() + b"\n")
        super().put(key, data, if_absent=if_absent)


def content(i: int) -> bytes:
    return (f"file {i:08d} ".encode() * (FILE_BYTES // 14 + 1))[:FILE_BYTES]


def open_engine(root: Path) -> tuple[RedisMetaStore, Engine]:
    meta = RedisMetaStore.open(root / "meta")
    objects = LoggedStore(root / "bucket", root / "puts.log")
    if not meta.is_formatted():
        fmt = new_format("crash", storage="file", bucket=f"{root}/bucket/", block_size_kib=64)
        format_volume(meta, objects, fmt)
    return meta, Engine(meta, objects)


def _child(root: Path, start: int) -> None:
    """Write files ``d<k>/f<i>`` from ``start`` on, forever: fsync, then list the name."""
    _, engine = open_engine(root)
    fs = PathFS(engine)
    with open(root / "manifest", "a", buffering=1) as manifest:
        for i in range(start, 10**9):
            d = f"/d{i // 1000}"
            if i % 1000 == 0 or i == start:
                fs.makedirs(d, exist_ok=True)
            fd = fs.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
            fs.write(fd, content(i))
            fs.fsync(fd)
            fs.close(fd)
            manifest.write(f"{d}/f{i}\n")  # only after fsync returned


def crash_once(root: Path, start: int, at_least: int, kill_server: bool) -> None:
    """Run a writer from file ``start`` and SIGKILL it once ``at_least`` more names are listed
    (plus a random few milliseconds); with ``kill_server`` its redis-server is SIGKILLed too."""
    child = subprocess.Popen([sys.executable, __file__, str(root), str(start)])
    manifest = root / "manifest"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if child.poll() is not None:
                pytest.fail(f"the writer exited by itself with status {child.returncode}")
            if manifest.exists() and len(manifest.read_bytes().splitlines()) >= at_least:
                break
            time.sleep(0.02)
        time.sleep(random.uniform(0, 0.05))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    server = int((root / "meta" / PID_FILE).read_text())
    assert _is_running(server), "the redis-server should outlive the SIGKILL of its mounter"
    if kill_server:
        os.kill(server, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _is_running(server) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _is_running(server)


def verify(root: Path) -> int:
    names = (root / "manifest").read_text().splitlines()
    meta, engine = open_engine(root)
    fs = PathFS(engine)
    for name in names:
        i = int(name.rpartition("/f")[2])
        assert fs.read_bytes(name) == content(i), f"{name} lost or damaged after SIGKILL"
    fs.write_bytes("/after", b"x" * 100_000)  # goes on without reusing the killed one's ids
    fd = fs.open("/after", os.O_RDONLY)
    fs.fsync(fd)
    fs.close(fd)
    puts = Counter((root / "puts.log").read_text().splitlines())
    twice = [key for key, n in puts.items() if n > 1]
    assert not twice, f"block keys put twice: {twice[:5]}"
    engine.close()
    assert check_metadata(meta) == []
    meta.close()
    return len(names)


def run(root: Path, rounds: int, per_round: int, kill_server: bool) -> None:
    for r in range(rounds):
        listed = len((root / "manifest").read_text().splitlines()) if r else 0
        start = listed + 1000 * r  # a new range: the killed writer may have made more files
        crash_once(root, start, listed + per_round, kill_server)
        assert verify(root) >= listed + per_round


@pytest.mark.parametrize("kill_server", [False, True], ids=["server-survives", "server-killed"])
def test_fsynced_files_survive_sigkill_on_redis(tmp_path: Path, kill_server: bool) -> None:
    run(tmp_path, rounds=2, per_round=150, kill_server=kill_server)


@pytest.mark.slow
def test_fsynced_files_survive_sigkill_on_redis_long(tmp_path: Path) -> None:
    n = int(os.environ.get("VOLUME_CRASH_FILES", "10000"))
    run(tmp_path, rounds=3, per_round=n // 3, kill_server=True)


if __name__ == "__main__":
    _child(Path(sys.argv[1]), int(sys.argv[2]))
