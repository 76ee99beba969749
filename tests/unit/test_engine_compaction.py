"""Compaction inside the engine: when it runs, what it leaves, and how it yields to writers that
change a chunk while it copies."""

from __future__ import annotations

import errno
import os
import random
import threading
from pathlib import Path

import pytest
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

from volume.engine import CompactionPolicy, Engine, PathFS, format_volume, new_format
from volume.engine.check import check_metadata
from volume.juicefs import unpack_slices

INLINE = CompactionPolicy(at_records=20, large_piece=1 << 20, background=False)


class GatedReads(LocalObjectStore):
    """A local store whose gets wait, once armed, until the test lets them go."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.armed = False
        self.waiting = threading.Event()
        self.go = threading.Event()

    def get(self, key, start=0, end=None):
        if self.armed:
            self.waiting.set()
            assert self.go.wait(10), "the test never let the read go"
        return super().get(key, start, end)


@pytest.fixture
def volume(tmp_path: Path):
    """(objects, meta dir) of a freshly formatted volume with 64 KiB blocks."""
    objects = GatedReads(tmp_path / "bucket")
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    fmt = new_format("compact", storage="file", bucket=objects.uri, block_size_kib=64)
    format_volume(meta, objects, fmt)
    meta.close()
    return objects, tmp_path / "meta"


def mount(volume, policy: CompactionPolicy | None = INLINE) -> tuple[Engine, PathFS]:
    objects, meta_dir = volume
    engine = Engine(SQLiteMetaStore.open(meta_dir), objects, compaction=policy)
    return engine, PathFS(engine)


def unmount(engine: Engine) -> None:
    engine.close()
    engine.meta.close()


def records(engine: Engine, ino: int, indx: int = 0):
    with engine.meta.transaction() as tx:
        return unpack_slices(tx.read_chunk(ino, indx))


def scattered_writes(fs: PathFS, fd: int, model: bytearray, count: int, seed: int = 1) -> None:
    """``count`` 100-byte writes at scattered offsets: each becomes a record of its own."""
    rnd = random.Random(seed)
    for _ in range(count):
        off = rnd.randrange(0, len(model) - 100) // 200 * 200
        data = rnd.randbytes(100)
        fs.write(fd, data, off)
        model[off : off + 100] = data
    fs.fsync(fd)


def test_small_writes_leave_short_chunks_with_the_same_bytes(volume) -> None:
    engine, fs = mount(volume)
    model = bytearray(os.urandom(300_000))
    fs.write_bytes("/f", bytes(model))
    fd = fs.open("/f", os.O_RDWR)
    scattered_writes(fs, fd, model, 200)
    ino = fs.fstat(fd).st_ino
    assert len(records(engine, ino)) < INLINE.at_records
    assert fs.read(fd, len(model) + 1, 0) == bytes(model)
    fs.close(fd)
    assert check_metadata(engine.meta) == []
    unmount(engine)
    engine, fs = mount(volume, None)
    assert fs.read_bytes("/f") == bytes(model)
    unmount(engine)


def test_without_a_policy_nothing_is_compacted(volume) -> None:
    engine, fs = mount(volume, None)
    model = bytearray(300_000)
    fs.write_bytes("/f", bytes(model))
    fd = fs.open("/f", os.O_RDWR)
    scattered_writes(fs, fd, model, 50)
    assert len(records(engine, fs.fstat(fd).st_ino)) >= 50
    fs.close(fd)
    unmount(engine)


def test_background_compaction_is_finished_by_drain(volume) -> None:
    engine, fs = mount(volume, CompactionPolicy(at_records=20))
    model = bytearray(os.urandom(300_000))
    fs.write_bytes("/f", bytes(model))
    fd = fs.open("/f", os.O_RDWR)
    scattered_writes(fs, fd, model, 19)  # with the first write's record: 20, a compaction
    engine.drain()
    assert len(records(engine, fs.fstat(fd).st_ino)) < 20
    assert fs.read(fd, len(model), 0) == bytes(model)
    fs.close(fd)
    unmount(engine)


def start_gated_compaction(volume, engine: Engine, ino: int) -> tuple[threading.Thread, list]:
    """Run ``compact_chunk(ino, 0)`` in a thread, stopped in its first block read."""
    objects = volume[0]
    result: list = []
    objects.armed = True
    thread = threading.Thread(target=lambda: result.append(engine.compact_chunk(ino, 0)))
    thread.start()
    assert objects.waiting.wait(10), "the compaction never read a block"
    objects.armed = False
    return thread, result


def fragmented_file(volume) -> tuple[Engine, PathFS, int, bytearray]:
    engine, fs = mount(volume, CompactionPolicy(at_records=10_000, background=False))
    model = bytearray(os.urandom(300_000))
    fs.write_bytes("/f", bytes(model))
    fd = fs.open("/f", os.O_RDWR)
    scattered_writes(fs, fd, model, 30)
    return engine, fs, fd, model


def test_records_appended_during_a_compaction_stay_after_it(volume) -> None:
    engine, fs, fd, model = fragmented_file(volume)
    ino = fs.fstat(fd).st_ino
    before = len(records(engine, ino))
    thread, result = start_gated_compaction(volume, engine, ino)
    scattered_writes(fs, fd, model, 3, seed=2)  # three more records while it copies
    late = records(engine, ino)[before:]
    assert len(late) == 3
    volume[0].go.set()
    thread.join()
    assert result == [True]
    after = records(engine, ino)
    assert len(after) < before
    assert after[-3:] == late
    assert fs.read(fd, len(model), 0) == bytes(model)  # the late writes win over the copy
    assert check_metadata(engine.meta, {ino}) == []
    fs.close(fd)
    unmount(engine)


def test_a_compaction_racing_a_truncation_changes_nothing(volume) -> None:
    engine, fs, fd, model = fragmented_file(volume)
    ino = fs.fstat(fd).st_ino
    thread, result = start_gated_compaction(volume, engine, ino)
    fs.ftruncate(fd, 0)  # the chunk row goes away while the compaction copies it
    volume[0].go.set()
    thread.join()
    assert result == [False]
    assert records(engine, ino) == []
    assert fs.fstat(fd).st_size == 0
    assert check_metadata(engine.meta, {ino}) == []
    fs.close(fd)
    unmount(engine)


def test_a_read_only_engine_never_compacts(volume) -> None:
    engine, fs = mount(volume)
    fs.write_bytes("/f", b"x")
    ino = fs.stat("/f").st_ino
    unmount(engine)
    objects, meta_dir = volume
    ro = Engine(SQLiteMetaStore.open(meta_dir, read_only=True), objects, read_only=True)
    with pytest.raises(OSError) as err:
        ro.compact_chunk(ino, 0)
    assert err.value.errno == errno.EROFS
    unmount(ro)


def test_policy_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="at_records"):
        CompactionPolicy(at_records=1)
    policy = CompactionPolicy(at_records=10)
    assert [n for n in range(30) if policy.wants(n)] == [10, 15, 20, 25]
