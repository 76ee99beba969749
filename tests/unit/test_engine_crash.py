"""Durability at the engine level, on each metadata store (SQLite, Redis): a process writes files
with fsync each and lists each name in a manifest once its fsync returned; it is killed with
SIGKILL at a random point (on Redis, in one round its redis-server survives it and in the next it
is SIGKILLed too); a new engine over the same meta_dir finds every listed file with its exact
content, and no block key is ever put twice (the id batches of the killed process are never handed
out again).

Modelled on the crash test the JuiceFS project runs in CI. The default run kills after a few
hundred files; ``-m slow`` after 10,000.
"""

from __future__ import annotations

import dataclasses
import errno
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
from volume.stores import MetaStore
from volume_local import LocalObjectStore, StagedFile
from volume_sqlite import SQLiteMetaStore

FILE_BYTES = 4096
#: the metadata stores the crash test runs on; a Redis store's server is a process of its own
STORES = ["sqlite", pytest.param("redis", marks=pytest.mark.server)]


class LoggedStaged(StagedFile):
    _store: "LoggedStore"

    def seal(self, key, length):
        self._store.logged(key)
        super().seal(key, length)


class LoggedStore(LocalObjectStore):
    """A local store that appends the key of every block it stores, put or staged and sealed, to
    ``puts.log`` (all processes)."""

    staged_class = LoggedStaged

    def __init__(self, root: Path, log: Path):
        super().__init__(root)
        self._log = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def logged(self, key: str) -> None:
        if "/chunks/" in key:
            os.write(self._log, key.encode() + b"\n")

    def put(self, key, data, *, if_absent=False):
        self.logged(key)
        super().put(key, data, if_absent=if_absent)


class BufferedLoggedStore(LoggedStore):
    """The same, with every block buffered in memory and put (as a remote store's are)."""

    capabilities = dataclasses.replace(LocalObjectStore.capabilities, staging=False)


#: how blocks reach the bucket: written in place (the local store's way) or buffered and put
BLOCK_PATHS = {"staged": LoggedStore, "buffered": BufferedLoggedStore}


def content(i: int) -> bytes:
    return (f"file {i:08d} ".encode() * (FILE_BYTES // 14 + 1))[:FILE_BYTES]


def open_meta(root: Path, store: str) -> MetaStore:
    if store == "redis":
        from volume_redis import RedisMetaStore

        return RedisMetaStore.open(root / "meta")
    return SQLiteMetaStore.open(root / "meta")


def open_engine(
    root: Path, store: str = "sqlite", blocks: str = "staged"
) -> tuple[MetaStore, Engine]:
    meta = open_meta(root, store)
    objects = BLOCK_PATHS[blocks](root / "bucket", root / "puts.log")
    if not meta.is_formatted():
        fmt = new_format("crash", storage="file", bucket=f"{root}/bucket/", block_size_kib=64)
        format_volume(meta, objects, fmt)
    return meta, Engine(meta, objects)


def _child(root: Path, start: int, store: str, blocks: str) -> None:
    """Write files ``d<k>/f<i>`` from ``start`` on, forever: fsync, then list the name."""
    _, engine = open_engine(root, store, blocks)
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


def crash_once(
    root: Path, start: int, at_least: int, store: str, kill_server: bool, blocks: str
) -> None:
    """Run a writer from file ``start`` and SIGKILL it once ``at_least`` more names are listed
    (plus a random few milliseconds); on Redis, with ``kill_server`` its redis-server is
    SIGKILLed too."""
    child = subprocess.Popen([sys.executable, __file__, str(root), str(start), store, blocks])
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
    if store == "redis":
        from volume_redis._server import PID_FILE, _is_running

        server = int((root / "meta" / PID_FILE).read_text())
        assert _is_running(server), "the redis-server should outlive the SIGKILL of its mounter"
        if kill_server:
            os.kill(server, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _is_running(server) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not _is_running(server)


def verify(root: Path, store: str, blocks: str) -> int:
    names = (root / "manifest").read_text().splitlines()
    meta, engine = open_engine(root, store, blocks)
    fs = PathFS(engine)
    for name in names:
        i = int(name.rpartition("/f")[2])
        assert fs.read_bytes(name) == content(i), f"{name} lost or damaged after SIGKILL"
    # writing goes on after the crash without reusing any id of the killed process
    fs.write_bytes("/after", b"x" * 100_000)
    fd = fs.open("/after", os.O_RDONLY)
    fs.fsync(fd)
    fs.close(fd)
    puts = Counter((root / "puts.log").read_text().splitlines())
    twice = [key for key, n in puts.items() if n > 1]
    assert not twice, f"block keys put twice: {twice[:5]}"
    engine.close()
    assert check_metadata(meta) == []  # nothing half done in what the kill left behind
    meta.close()
    return len(names)


def run(
    root: Path, store: str, per_round: int, kill_server: list[bool], blocks: str = "staged"
) -> None:
    """One round per entry of ``kill_server``: whether that round's kill takes the Redis server
    down with the writer (SQLite has none)."""
    for r, kill in enumerate(kill_server):
        listed = len((root / "manifest").read_text().splitlines()) if r else 0
        start = listed + 1000 * r  # a new range: the killed writer may have made more files
        crash_once(root, start, listed + per_round, store, kill, blocks)
        assert verify(root, store, blocks) >= listed + per_round


@pytest.mark.parametrize("blocks", list(BLOCK_PATHS))
@pytest.mark.parametrize("store", STORES)
def test_fsynced_files_survive_sigkill(tmp_path: Path, store: str, blocks: str) -> None:
    # on Redis: first its server outlives the writer, then it dies with it
    run(tmp_path, store, per_round=150, kill_server=[False, True], blocks=blocks)


@pytest.mark.slow
@pytest.mark.parametrize("store", STORES)
def test_fsynced_files_survive_sigkill_long(tmp_path: Path, store: str) -> None:
    n = int(os.environ.get("VOLUME_CRASH_FILES", "10000"))
    run(tmp_path, store, per_round=n // 3, kill_server=[True] * 3)


if __name__ == "__main__":
    _child(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])


def test_a_full_metadata_disk_answers_enospc_and_publishes_nothing_half_done(tmp_path: Path):
    meta, engine = open_engine(tmp_path)
    fs = PathFS(engine)
    fs.write_bytes("/kept", b"k" * 5000)
    pages = meta._conn.execute("PRAGMA page_count").fetchone()[0]
    meta._conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite's own "disk is full"
    with pytest.raises(OSError) as info:
        for i in range(10_000):
            fs.write_bytes(f"/f{i:05d}-{'x' * 200}", b"")
    assert info.value.errno == errno.ENOSPC
    assert fs.read_bytes("/kept") == b"k" * 5000
    assert check_metadata(meta) == []
    meta._conn.execute("PRAGMA max_page_count = 1073741823")
    fs.write_bytes("/after", b"a")  # space again: changes go on
    engine.close()
    meta.close()


def test_local_sync_fsyncs_each_ancestor_directory_once(tmp_path: Path, monkeypatch) -> None:
    store = LocalObjectStore(tmp_path / "bucket")
    store.put("v/chunks/0/0/1_0_4", b"abcd")
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store.sync(["v/chunks/0/0/1_0_4"])
    root = str(tmp_path / "bucket")
    assert synced == [
        f"{root}/v/chunks/0/0/1_0_4",
        f"{root}/v/chunks/0/0",
        f"{root}/v/chunks/0",
        f"{root}/v/chunks",
        f"{root}/v",
        root,
    ]
    synced.clear()
    store.put("v/chunks/0/0/2_0_4", b"efgh")
    store.sync(["v/chunks/0/0/2_0_4"])
    assert synced == [f"{root}/v/chunks/0/0/2_0_4", f"{root}/v/chunks/0/0"]


def test_past_the_remembered_keys_fsync_syncs_the_whole_store(tmp_path: Path, monkeypatch):
    from volume.engine import blocks

    monkeypatch.setattr(blocks, "MAX_UNSYNCED", 2)
    meta, engine = open_engine(tmp_path)
    calls: list[object] = []
    real = engine.blocks._store_sync
    engine.blocks._store_sync = lambda keys: (calls.append(keys), real(keys))
    fs = PathFS(engine)
    fd = fs.open("/f", os.O_CREAT | os.O_WRONLY)
    fs.write(fd, os.urandom(5 * 65536))
    fs.fsync(fd)
    assert calls == [None]  # five blocks stored, two remembered: everything is synced
    fs.write(fd, b"tail", 5 * 65536)
    fs.fsync(fd)
    assert len(calls) == 2 and calls[1] is not None and len(calls[1]) == 1
    fs.close(fd)
    engine.close()
    meta.close()
