"""fallocate and copy_file_range are recorded as the JuiceFS client records them: id-0 records
for punched or zeroed ranges, and a clone of slice records with raised reference counts (no
block read or written). Their outcomes against Linux are in the differential state machine."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from volume.engine import Engine, PathFS, format_volume, new_format
from volume.engine.check import check_metadata
from volume.juicefs import unpack_slices
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

BLOCK = 64 << 10


@pytest.fixture
def fs(tmp_path: Path):
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    objects = LocalObjectStore(tmp_path / "bucket")
    fmt = new_format("ranges", storage="file", bucket=f"{tmp_path}/bucket/", block_size_kib=64)
    format_volume(meta, objects, fmt)
    engine = Engine(meta, objects, compaction=None)
    yield PathFS(engine)
    engine.close()
    assert check_metadata(meta) == []
    meta.close()


def records(fs: PathFS, path: str, indx: int = 0):
    ino = fs.resolve(path)
    with fs.engine.meta.transaction() as tx:
        return unpack_slices(tx.read_chunk(ino, indx))


def refs(fs: PathFS) -> dict[int, int]:
    with fs.engine.meta.transaction() as tx:
        return {slice_id: count for slice_id, _, count in tx.slice_refs()}


def test_copy_file_range_clones_records_and_raises_counts(fs: PathFS) -> None:
    data = os.urandom(5 * BLOCK + 123)
    fs.write_bytes("/src", data)
    src = fs.open("/src", os.O_RDONLY)
    dst = fs.open("/dst", os.O_CREAT | os.O_RDWR)
    fs.write(dst, b"head")
    fs.engine.drain()
    uploads, fetches = fs.engine.blocks.stats.uploads, fs.engine.blocks.stats.fetches
    before = refs(fs)
    assert fs.copy_file_range(src, dst, 3 * BLOCK, BLOCK + 7, 10) == 3 * BLOCK
    assert fs.copy_file_range(src, dst, 100, len(data) + 5, 0) == 0  # past the source's end
    fs.close(src)
    fs.close(dst)
    fs.engine.drain()
    assert fs.engine.blocks.stats.uploads == uploads  # no block was written
    assert fs.engine.blocks.stats.fetches == fetches  # and nothing was read
    assert fs.read_bytes("/dst") == b"head" + bytes(6) + data[BLOCK + 7 : 4 * BLOCK + 7]
    (slice_id,) = {r.id for r in records(fs, "/src") if r.id}
    assert refs(fs)[slice_id] == before[slice_id] + 1
    cloned = [r for r in records(fs, "/dst") if r.id == slice_id]
    assert [(r.pos, r.off, r.len) for r in cloned] == [(10, BLOCK + 7, 3 * BLOCK)]


def test_copy_file_range_copies_holes_as_id0_records(fs: PathFS) -> None:
    fs.write_bytes("/src", b"")
    fd = fs.open("/src", os.O_RDWR)
    fs.write(fd, b"x" * 100, 1000)  # a hole [0, 1000) before the data
    dst = fs.open("/dst", os.O_CREAT | os.O_RDWR)
    fs.write(dst, b"y" * 2000)
    assert fs.copy_file_range(fd, dst, 1100, 0, 0) == 1100
    assert fs.read(dst, 3000, 0) == bytes(1000) + b"x" * 100 + b"y" * 900
    assert any(r.id == 0 and r.pos == 0 and r.len == 1000 for r in records(fs, "/dst"))
    fs.close(fd)
    fs.close(dst)


def test_fallocate_punch_and_zero_are_id0_records(fs: PathFS) -> None:
    data = os.urandom(3 * BLOCK)
    fs.write_bytes("/f", data)
    fd = fs.open("/f", os.O_RDWR)
    fs.engine.drain()
    uploads = fs.engine.blocks.stats.uploads
    fs.fallocate(fd, 0x03, 100, 50)  # PUNCH_HOLE | KEEP_SIZE
    fs.fallocate(fd, 0x10, 3 * BLOCK - 10, 100)  # ZERO_RANGE: grows the file
    fs.fallocate(fd, 0x01, 0, 10 * BLOCK)  # KEEP_SIZE: nothing visible changes
    fs.engine.drain()
    assert fs.engine.blocks.stats.uploads == uploads
    assert fs.fstat(fd).st_size == 3 * BLOCK + 90
    expected = data[:100] + bytes(50) + data[150 : 3 * BLOCK - 10] + bytes(100)
    assert fs.read(fd, 4 * BLOCK, 0) == expected
    holes = [(r.pos, r.len) for r in records(fs, "/f") if r.id == 0]
    assert holes == [(100, 50), (3 * BLOCK - 10, 10)]  # zeroed only inside the old length
    fs.close(fd)


def test_fallocate_refusals_follow_linux(fs: PathFS) -> None:
    fs.write_bytes("/f", b"abc")
    ro = fs.open("/f", os.O_RDONLY)
    rw = fs.open("/f", os.O_RDWR)
    for fd, mode, off, length, code in (
        (rw, 0, 0, 0, "EINVAL"),
        (rw, 0, -1, 10, "EINVAL"),
        (rw, 0x02, 0, 10, "EOPNOTSUPP"),  # PUNCH_HOLE needs KEEP_SIZE
        (rw, 0x08, 0, 4096, "EOPNOTSUPP"),  # collapse range: not served, as JuiceFS
        (ro, 0, 0, 10, "EBADF"),
    ):
        with pytest.raises(OSError) as info:
            fs.fallocate(fd, mode, off, length)
        assert errno.errorcode[info.value.errno] in (code, "ENOTSUP")
    fs.close(ro)
    fs.close(rw)
