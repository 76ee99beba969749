"""The engine under threads, and its lifecycle API (freeze, flush, drain, snapshot, fsync)."""

from __future__ import annotations

import dataclasses
import errno
import faulthandler
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from volume.engine import Engine, PathFS, format_volume, new_format
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore


def run_threads(targets: list[Callable[[], None]], limit: float = 30.0) -> None:
    """Run ``targets`` in threads; a thread still running after ``limit`` seconds fails the test
    with every thread's stack (a deadlock never hangs the run). Exceptions are re-raised."""
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + limit
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0))
    if any(t.is_alive() for t in threads):
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        pytest.fail(f"threads stalled for {limit} s (deadlock?); stacks are on stderr")
    if errors:
        raise errors[0]


@pytest.fixture
def engine(tmp_path: Path):
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    objects = LocalObjectStore(tmp_path / "bucket")
    fmt = new_format("conc", storage="file", bucket=f"{tmp_path}/bucket/", block_size_kib=64)
    format_volume(meta, objects, fmt)
    engine = Engine(meta, objects)
    yield engine
    engine.close()
    meta.close()


def test_scattered_writes_while_another_thread_opens_and_closes(engine: Engine) -> None:
    """The deadlock of issue 9: write held the inode lock and took the engine lock, release the
    other way round."""
    fs = PathFS(engine)
    fs.write_bytes("/f", b"")
    stop = time.monotonic() + 1.5
    rng = random.Random(1)

    def writer() -> None:
        fd = fs.open("/f", os.O_RDWR)
        while time.monotonic() < stop:
            fs.write(fd, b"x" * 100, rng.randrange(0, 8 << 20))
        fs.close(fd)

    def opener() -> None:
        while time.monotonic() < stop:
            fs.close(fs.open("/f", os.O_RDONLY))

    def truncater() -> None:
        while time.monotonic() < stop:
            fs.truncate("/f", rng.randrange(0, 9 << 20))

    run_threads([writer, opener, opener, truncater])
    assert fs.stat("/f").st_size >= 0


def test_freeze_refuses_changes_and_keeps_reads(engine: Engine) -> None:
    fs = PathFS(engine)
    fs.write_bytes("/a", b"hello")
    fd = fs.open("/a", os.O_RDWR)
    fs.write(fd, b"J", 0)  # buffered, acknowledged before the freeze
    engine.freeze()
    assert engine.frozen
    for change in (
        lambda: fs.write(fd, b"x", 0),
        lambda: fs.mkdir("/d"),
        lambda: fs.write_bytes("/b", b"b"),
        lambda: fs.rename("/a", "/c"),
        lambda: fs.unlink("/a"),
        lambda: fs.truncate("/a", 1),
        lambda: fs.open("/a", os.O_WRONLY),
        lambda: fs.chmod("/a", 0o600),
    ):
        with pytest.raises(OSError) as info:
            change()
        assert info.value.errno == errno.EROFS
    engine.flush()  # what was acknowledged before the freeze is published
    assert fs.read(fd, 10, 0) == b"Jello"
    snap = engine.snapshot(engine.meta._db_path.parent / "snap.db")
    assert snap > 0
    engine.thaw()
    fs.write(fd, b"!", 5)
    fs.close(fd)
    assert fs.read_bytes("/a") == b"Jello!"


def test_flush_publishes_every_open_file_without_closing(engine: Engine, tmp_path: Path) -> None:
    fs = PathFS(engine)
    fds = [fs.open(f"/f{i}", os.O_CREAT | os.O_WRONLY) for i in range(3)]
    for i, fd in enumerate(fds):
        fs.write(fd, bytes([65 + i]) * 1000)
    engine.flush()
    engine.drain(timeout=10)
    engine.snapshot(tmp_path / "snap.db")
    # the snapshot holds the lengths of the still-open files
    with (
        SQLiteMetaStore._connect(tmp_path / "snap.db", read_only=True) as store,
        store.transaction() as tx,
    ):
        lengths = sorted(tx.get_attr(tx.lookup(1, f"f{i}".encode())[0]).length for i in range(3))
    assert lengths == [1000, 1000, 1000]
    for fd in fds:
        fs.close(fd)


def test_fsync_takes_an_inode_and_stores_blocks(engine: Engine) -> None:
    fs = PathFS(engine)
    fd = fs.open("/f", os.O_CREAT | os.O_WRONLY)
    fs.write(fd, os.urandom(200_000))
    fs.fsync(fd)
    assert engine.blocks.pending_bytes == 0
    assert not engine.blocks._unsynced  # every stored block was fsynced
    fs.close(fd)


def test_a_snapshot_after_freeze_holds_every_write_acknowledged_before_it(
    engine: Engine, tmp_path: Path
) -> None:
    """What commit and finalize rely on: freeze, flush, drain, snapshot while writers run."""
    fs = PathFS(engine)
    acked: list[tuple[str, bytes]] = []  # appended once close() returned
    refused = []
    stop = threading.Event()

    def writer(w: int) -> None:
        fd = fs.open(f"/open{w}", os.O_CREAT | os.O_WRONLY)  # kept open across the freeze
        try:
            for i in range(10**6):
                if stop.is_set():
                    return
                data = f"{w}:{i}".encode() * 50
                try:
                    fs.write_bytes(f"/w{w}-{i}", data)
                    fs.write(fd, data, i * len(data))
                except OSError as exc:
                    assert exc.errno == errno.EROFS
                    refused.append(w)
                    return
                acked.append((f"/w{w}-{i}", data))
        finally:
            fs.close(fd)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    before = list(acked)  # acknowledged before the freeze began
    engine.freeze()
    engine.flush()
    engine.drain(timeout=30)
    engine.snapshot(tmp_path / "snap.db")
    stop.set()
    for t in threads:
        t.join(30)
    assert sorted(set(refused)) == [0, 1, 2]  # every writer met EROFS
    assert len(before) > 10
    SQLiteMetaStore.restore(tmp_path / "snap.db", tmp_path / "restored")
    meta = SQLiteMetaStore.open(tmp_path / "restored", read_only=True)
    reader = Engine(meta, engine.blocks.objects, read_only=True)
    view = PathFS(reader)
    for path, data in before:
        assert view.read_bytes(path) == data, path
    for path, data in before:  # and the files kept open hold those writes (no overlaps)
        w, i = (int(n) for n in path[2:].split("-"))
        fd = view.open(f"/open{w}")
        assert view.read(fd, len(data), i * len(data)) == data
        view.close(fd)
    reader.close()
    meta.close()


def test_fsync_waits_for_its_own_file_only(tmp_path: Path) -> None:
    class HeldStore(LocalObjectStore):
        """Block puts of slices up to ``upto`` wait for ``release``."""

        # every block goes through put (not staged in place)
        capabilities = dataclasses.replace(LocalObjectStore.capabilities, staging=False)

        upto = 1 << 62
        release = threading.Event()

        def put(self, key, data, *, if_absent=False):
            if "/chunks/" in key and int(key.rpartition("/")[2].split("_")[0]) <= self.upto:
                assert self.release.wait(30)
            super().put(key, data, if_absent=if_absent)

    meta = SQLiteMetaStore.open(tmp_path / "meta")
    objects = HeldStore(tmp_path / "bucket")
    fmt = new_format("own", storage="file", bucket=f"{tmp_path}/bucket/", block_size_kib=64)
    format_volume(meta, objects, fmt)
    engine = Engine(meta, objects, io_timeout=20)
    fs = PathFS(engine)
    big = fs.open("/big", os.O_CREAT | os.O_WRONLY)
    # two full blocks, handed over and held (fewer than the upload threads: the others stay free)
    fs.write(big, os.urandom(2 * 65536 + 100))
    (sw,) = engine._open[fs.fstat(big).st_ino].writer.slices.values()
    HeldStore.upto = sw.id  # later slices (the small file's) are stored at once
    small = fs.open("/small", os.O_CREAT | os.O_WRONLY)
    fs.write(small, b"s" * 4096)
    fs.fsync(small)  # returns while the big file's blocks are still held
    assert engine.blocks.pending_bytes >= 2 * 65536
    HeldStore.release.set()
    fs.fsync(big)
    assert engine.blocks.pending_bytes == 0
    fs.close(big)
    fs.close(small)
    engine.close()
    meta.close()
