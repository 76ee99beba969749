"""Blocks written in place in a store that stages objects (the local store): nothing buffered or
put, a refused seal falls back to the upload path, a failed write fails the caller's write; the
same for writes whose bytes wait in a pipe (a FUSE mount's big writes), which move into the
staged blocks by splice."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from volume.engine import Engine, PathFS, format_volume, new_format
from volume.engine.check import check_metadata
from volume.stores import ObjectStore
from volume.testing import MemoryObjectStore, PipeStream
from volume_local import LocalObjectStore, StagedFile
from volume_sqlite import SQLiteMetaStore

from tests.unit.test_local_store import unnamed_open_files

BLOCK = 64 << 10


class _Staged(StagedFile):
    _store: "CountingStore"

    def write(self, offset, data):
        limit = self._store.failing_writes_at
        if limit is not None and offset + len(data) > limit:
            half = max(0, limit - offset)
            super().write(offset, memoryview(data)[:half])  # part of it lands, as when a disk fills
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        super().write(offset, data)

    def write_stream(self, offset, data):
        self._store.stream_writes += 1
        limit = self._store.failing_writes_at
        if limit is not None and offset + len(data) > limit:
            half = max(0, limit - offset)
            super().write_stream(offset, data[:half])
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        super().write_stream(offset, data)

    def seal(self, key, length):
        if self._store.failing_seals:
            self._store.failing_seals -= 1
            raise OSError(errno.EIO, "injected seal failure")
        super().seal(key, length)
        self._store.seals.append(key)


class CountingStore(LocalObjectStore):
    """A local store that counts puts and can make seals or staged writes fail."""

    staged_class = _Staged

    def __init__(self, root: Path):
        super().__init__(root)
        self.puts: list[str] = []
        self.seals: list[str] = []
        self.failing_seals = 0
        self.stream_writes = 0
        self.failing_writes_at: int | None = None  # fail staged writes reaching past this offset

    def put(self, key, data, *, if_absent=False):
        self.puts.append(key)
        super().put(key, data, if_absent=if_absent)


def _volume(tmp_path: Path) -> tuple[CountingStore, SQLiteMetaStore, Engine]:
    objects = CountingStore(tmp_path / "bucket")
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    fmt = new_format("staged", storage="file", bucket=f"{tmp_path}/bucket/", block_size_kib=64)
    format_volume(meta, objects, fmt)
    return objects, meta, Engine(meta, objects)


def _reopened_reads(meta: SQLiteMetaStore, objects: ObjectStore) -> bytes:
    """``/f`` as a new engine on the volume reads it."""
    reopened = Engine(meta, objects)
    try:
        return PathFS(reopened).read_bytes("/f")
    finally:
        reopened.close()


def _leftovers(objects: LocalObjectStore) -> list[str]:
    """Staged blocks neither sealed nor discarded: unnamed files below the bucket this process
    holds open, and temporary files in it. Closes the store first, and with it the files it
    made ahead for the next blocks (which are not staged blocks)."""
    objects.close()
    return unnamed_open_files(objects.root) + [p.name for p in objects.root.rglob(".jfs.*")]


def test_blocks_are_sealed_in_place_and_never_put(tmp_path: Path) -> None:
    objects, meta, engine = _volume(tmp_path)
    fs = PathFS(engine)
    data = os.urandom(5 * BLOCK + 123)
    fd = fs.open("/f", os.O_WRONLY | os.O_CREAT)
    for off in range(0, len(data), 40_000):  # writes straddling block boundaries
        fs.write(fd, data[off : off + 40_000])
    fs.write(fd, b"overwritten", 5 * BLOCK + 3)  # inside the unsealed tail block
    fs.close(fd)
    expected = data[: 5 * BLOCK + 3] + b"overwritten" + data[5 * BLOCK + 14 :]
    assert fs.read_bytes("/f") == expected
    assert not [key for key in objects.puts if "/chunks/" in key]
    assert len(objects.seals) == 6 and objects.seals[-1].endswith(f"_{len(data) - 5 * BLOCK}")
    assert engine.blocks.buffered_bytes == 0 and engine.blocks.pending_bytes == 0
    engine.close()
    assert _leftovers(objects) == []
    assert _reopened_reads(meta, objects) == expected
    assert check_metadata(meta) == []
    meta.close()


def test_a_refused_seal_falls_back_to_the_upload(tmp_path: Path) -> None:
    objects, meta, engine = _volume(tmp_path)
    fs = PathFS(engine)
    data = os.urandom(3 * BLOCK + 5)
    objects.failing_seals = 2  # a full block and the tail
    fd = fs.open("/f", os.O_WRONLY | os.O_CREAT)
    fs.write(fd, data[:BLOCK])
    fs.write(fd, data[BLOCK:])
    fs.close(fd)
    engine.drain()
    block_puts = [key for key in objects.puts if "/chunks/" in key]
    assert len(block_puts) == 2 and len(objects.seals) == 2
    assert fs.read_bytes("/f") == data
    engine.close()
    assert _leftovers(objects) == []
    assert _reopened_reads(meta, objects) == data
    meta.close()


def _write(fs: PathFS, fd: int, data: bytes, offset: int, piped: bool) -> int:
    """``fs.write`` of ``data``, or of a stream of it waiting in a pipe."""
    if not piped:
        return fs.write(fd, data, offset)
    with PipeStream(data) as stream:
        return fs.write(fd, stream, offset)


@pytest.mark.parametrize("piped", [False, True], ids=["buffer", "pipe"])
def test_a_failed_staged_write_fails_the_write_and_loses_nothing_before_it(
    tmp_path: Path, piped: bool
) -> None:
    objects, meta, engine = _volume(tmp_path)
    fs = PathFS(engine)
    head = os.urandom(BLOCK + 1000)
    fd = fs.open("/f", os.O_WRONLY | os.O_CREAT)
    fs.write(fd, head)
    objects.failing_writes_at = 2000  # within the second block
    with pytest.raises(OSError) as caught:
        _write(fs, fd, os.urandom(5000), len(head), piped)
    assert caught.value.errno == errno.ENOSPC
    objects.failing_writes_at = None
    _write(fs, fd, b"tail", len(head), piped)  # the file goes on after its last good byte
    fs.close(fd)
    assert fs.read_bytes("/f") == head + b"tail"
    engine.close()
    assert _leftovers(objects) == []
    assert check_metadata(meta) == []
    meta.close()


def test_an_unlinked_file_leaves_no_staged_block(tmp_path: Path) -> None:
    objects, meta, engine = _volume(tmp_path)
    fs = PathFS(engine)
    fd = fs.open("/f", os.O_WRONLY | os.O_CREAT)
    fs.write(fd, os.urandom(BLOCK // 2))
    assert len(_leftovers(objects)) == 1  # the staged tail block
    fs.unlink("/f")
    fs.close(fd)
    engine.close()
    assert _leftovers(objects) == []
    meta.close()


def test_a_stream_moves_into_the_staged_blocks(tmp_path: Path) -> None:
    objects, meta, engine = _volume(tmp_path)
    fs = PathFS(engine)
    data = os.urandom(3 * BLOCK + 999)
    fd = fs.open("/f", os.O_WRONLY | os.O_CREAT)
    fs.write(fd, data[:77])
    with PipeStream(data[77:]) as stream:  # from an unaligned offset, across three blocks
        assert fs.write(fd, stream, 77) == len(data) - 77
    fs.close(fd)
    assert objects.stream_writes == 4  # one per block the stream reaches
    assert fs.read_bytes("/f") == data
    assert not [key for key in objects.puts if "/chunks/" in key]
    assert engine.blocks.buffered_bytes == 0
    engine.close()
    assert _leftovers(objects) == []
    assert _reopened_reads(meta, objects) == data
    meta.close()


def test_a_stream_is_buffered_for_a_store_that_does_not_stage(tmp_path: Path) -> None:
    objects = MemoryObjectStore("buffered")
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    fmt = new_format("buffered", storage="memory", bucket="memory://buffered/", block_size_kib=64)
    format_volume(meta, objects, fmt)
    engine = Engine(meta, objects)
    fs = PathFS(engine)
    data = os.urandom(2 * BLOCK + 5)
    fd = fs.open("/f", os.O_WRONLY | os.O_CREAT)
    with PipeStream(data) as stream:
        fs.write(fd, stream, 0)
    fs.close(fd)
    assert fs.read_bytes("/f") == data
    engine.close()
    assert _reopened_reads(meta, objects) == data
    meta.close()
