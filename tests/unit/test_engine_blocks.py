"""The block store's buffers: recycled only once stored, never visible to a reader afterwards."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import pytest

from volume.engine import Engine, PathFS, format_volume, new_format
from volume.engine.blocks import BlockStore, close_spans
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

BLOCK = 64 << 10


class GatedStore(LocalObjectStore):
    """A local store whose puts wait until the test opens the gate."""

    # every block goes through put (not staged in place)
    capabilities = dataclasses.replace(LocalObjectStore.capabilities, staging=False)

    def __init__(self, root: Path):
        super().__init__(root)
        self.gate = threading.Event()

    def put(self, key, data, *, if_absent=False):
        assert self.gate.wait(10), "the test never opened the gate"
        super().put(key, data, if_absent=if_absent)


@pytest.fixture
def store(tmp_path: Path):
    objects = GatedStore(tmp_path / "bucket")
    blocks = BlockStore(objects, "vol", BLOCK, upload_workers=2)
    yield objects, blocks
    objects.gate.set()
    blocks.close()


def test_a_stored_buffer_is_handed_out_again(store) -> None:
    objects, blocks = store
    objects.gate.set()
    buf = blocks.block_buffer()
    assert len(buf) == BLOCK
    buf[:] = b"a" * BLOCK
    blocks.upload(1, 0, buf)
    blocks.drain()
    again = blocks.block_buffer()
    assert again is buf  # no fresh pages to fault in
    again[:] = b"b" * BLOCK  # the stored object is a copy: reusing the buffer cannot change it
    assert objects.get(blocks.key(1, 0, BLOCK)) == b"a" * BLOCK


def test_a_pending_block_reads_as_a_copy(store) -> None:
    objects, blocks = store
    buf = blocks.block_buffer()
    buf[:] = os.urandom(BLOCK)
    expected = bytes(buf)
    blocks.upload(7, 0, buf)  # the gate is shut: the block stays pending
    part = blocks.read(7, BLOCK, 100, 1000)
    whole = blocks.read(7, BLOCK, 0, BLOCK)
    assert type(part) is bytes and type(whole) is bytes
    objects.gate.set()
    blocks.drain()
    blocks.block_buffer()[:] = bytes(BLOCK)  # the recycled buffer, overwritten
    assert (part, whole) == (expected[100:1100], expected)
    assert blocks.read(7, BLOCK, 0, BLOCK) == expected  # now from the store


def test_partial_and_failed_blocks_are_not_recycled(store) -> None:
    objects, blocks = store
    objects.gate.set()
    tail = bytearray(b"t" * 100)  # a slice's short last block
    blocks.upload(2, 0, tail)
    blocks.drain()
    assert blocks.block_buffer() is not tail


class BufferedStore(LocalObjectStore):
    """A local store whose blocks are buffered in memory and put (as a remote store's are)."""

    capabilities = dataclasses.replace(LocalObjectStore.capabilities, staging=False)


@pytest.mark.parametrize("store_cls", [BufferedStore, LocalObjectStore], ids=["buffered", "staged"])
def test_the_engine_reuses_buffers_without_mixing_files(tmp_path: Path, store_cls) -> None:
    """Sequential writes of several files, each drained, read back byte for byte: buffers (or
    staged blocks) that went through one file's blocks carry none of its bytes into the next."""
    objects = store_cls(tmp_path / "bucket")
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    fmt = new_format("reuse", storage="file", bucket=f"{tmp_path}/bucket/", block_size_kib=64)
    format_volume(meta, objects, fmt)
    engine = Engine(meta, objects)
    fs = PathFS(engine)
    contents = {}
    for i, size in enumerate([5 * BLOCK, 3 * BLOCK + 17, 300_000, 4 * BLOCK - 1]):
        data = os.urandom(size)
        contents[f"/f{i}"] = data
        fd = fs.open(f"/f{i}", os.O_WRONLY | os.O_CREAT)
        for off in range(0, size, 300_000):  # writes large enough to fill whole-block buffers
            fs.write(fd, data[off : off + 300_000])
        fs.close(fd)
        engine.drain()
    for path, data in contents.items():
        assert fs.read_bytes(path) == data
    engine.close()
    meta.close()
    reopened = SQLiteMetaStore.open(tmp_path / "meta")
    engine = Engine(reopened, objects)
    for path, data in contents.items():
        assert PathFS(engine).read_bytes(path) == data
    engine.close()
    reopened.close()


def test_stored_blocks_take_a_small_share_of_memory_and_read_back() -> None:
    """Blocks a writer stored keep at most ``WRITTEN_CACHE_BYTES`` in memory (not the whole
    block cache: that broke the buffer_size_mb + 200 MiB bound while writing 2 GiB); the latest
    read back from memory, older ones from the store, byte-exactly."""
    from volume.engine.blocks import WRITTEN_CACHE_BYTES
    from volume.testing.memory import MemoryObjectStore

    block = 1 << 20
    MemoryObjectStore.reset("written-share")
    blocks = BlockStore(MemoryObjectStore("written-share"), "vol", block, cache_bytes=256 << 20)
    try:
        count = 2 * WRITTEN_CACHE_BYTES // block
        data = [os.urandom(block) for _ in range(count)]
        for indx, piece in enumerate(data):
            blocks.upload(3, indx, bytearray(piece))
        blocks.drain()
        assert blocks._written.size <= WRITTEN_CACHE_BYTES
        assert blocks._cache.size + blocks._written.size <= WRITTEN_CACHE_BYTES
        fetches = blocks.stats.fetches
        assert blocks.read(3, count * block, (count - 1) * block, block) == data[-1]
        assert blocks.stats.fetches == fetches  # the last one is still in memory
        assert blocks.read(3, count * block, 0, block) == data[0]
        assert blocks.stats.fetches == fetches + 1  # the first one came from the store
    finally:
        blocks.close()


class CountingGatedStore(GatedStore):
    """A gated store that counts the puts waiting at its gate (uploads in flight)."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.waiting = 0
        self._count_lock = threading.Lock()

    def put(self, key, data, *, if_absent=False):
        with self._count_lock:
            self.waiting += 1
        super().put(key, data, if_absent=if_absent)


def test_a_two_block_buffer_keeps_two_uploads_in_flight(tmp_path: Path) -> None:
    """The block a writer is filling does not starve uploads: with a buffer of two blocks, two
    uploads are in flight while the writer waits for room (it used to be one: the block being
    handed over was counted twice)."""
    objects = CountingGatedStore(tmp_path / "bucket")
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    fmt = new_format("twoup", storage="file", bucket=f"{tmp_path}/bucket/", block_size_kib=64)
    objects.gate.set()  # formatting writes to the store too
    format_volume(meta, objects, fmt)
    engine = Engine(meta, objects, buffer_bytes=2 * BLOCK, upload_workers=4)
    objects.gate.clear()
    objects.waiting = 0
    fs = PathFS(engine)
    data = os.urandom(4 * BLOCK)
    fd = fs.open("/f", os.O_WRONLY | os.O_CREAT)
    writer = threading.Thread(target=fs.write, args=(fd, data, 0))
    writer.start()
    try:
        for _ in range(100):  # until the writer waits with the uploads it could start
            if objects.waiting >= 2:
                break
            writer.join(0.05)
        assert objects.waiting >= 2, f"{objects.waiting} upload(s) in flight with a 2-block buffer"
        assert writer.is_alive()  # and the bound still holds the writer back
    finally:
        objects.gate.set()
        writer.join(10)
    fs.close(fd)
    engine.drain()
    assert fs.read_bytes("/f") == data
    engine.close()
    meta.close()


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_reading_into_a_buffer_gives_what_read_returns(tmp_path: Path, kind: str) -> None:
    """``read_into`` (the FUSE layer's read) against ``read`` over holes, a short tail, blocks
    still pending, stored blocks and a chunk boundary, on a store that reads into the buffer
    itself (local) and one that uses the default copy (memory); nothing past the answer is
    touched. ``read_spans`` (the FUSE layer's read of block files) gives the same bytes where
    they all lie in files (stored blocks of the local store), and None elsewhere."""
    import random

    from volume.juicefs import CHUNK_SIZE
    from volume.testing.memory import MemoryObjectStore

    if kind == "local":
        objects = GatedStore(tmp_path / "bucket")
    else:
        MemoryObjectStore.reset("read-into")
        objects = MemoryObjectStore("read-into")
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    fmt = new_format("into", storage="file", bucket=f"{tmp_path}/bucket/", block_size_kib=64)
    if kind == "local":
        objects.gate.set()  # formatting stores objects too
    format_volume(meta, objects, fmt)
    engine = Engine(meta, objects)
    if kind == "local":
        objects.gate.clear()
    fs = PathFS(engine)
    rng = random.Random(7)
    size = CHUNK_SIZE + 5 * BLOCK + 123
    fd = fs.open("/f", os.O_RDWR | os.O_CREAT)
    written = (0, 3 * BLOCK + 5, CHUNK_SIZE - BLOCK, size - 300)  # holes between the writes
    for off in written:
        fs.write(fd, rng.randbytes(2 * BLOCK if off < size - 300 else 300), off)
    fh = fs._file(fd).fh
    in_files: list[int] = []  # the parts of the reads answered with file ranges
    for step in range(60):
        if step == 30 and kind == "local":
            assert engine.blocks.stats.cache_hits > 0  # pending
            objects.gate.set()  # the first half reads pending blocks, the rest stored ones
            engine.drain()
        offset = max(0, rng.choice(written) + rng.randrange(-BLOCK, 3 * BLOCK))
        room = rng.choice([1, 100, BLOCK, 3 * BLOCK + 7, 1 << 20])
        expected = fs.read(fd, room, offset)
        buffer = bytearray(b"\xee" * (room + 5))
        n = engine.read_into(fh, offset, memoryview(buffer)[:room])
        assert n == len(expected)
        assert buffer[:n] == expected
        assert buffer[n:] == b"\xee" * (room + 5 - n)
        spans = engine.read_spans(fh, offset, room)
        if spans == []:
            assert expected == b""  # past the end
        elif spans is not None:
            try:
                assert b"".join(os.pread(f, n, at) for f, at, n in spans) == expected
            finally:
                close_spans(spans)
            in_files.append(len(spans))
    assert (max(in_files, default=0) >= 2) if kind == "local" else in_files == []
    if kind == "local":
        objects.gate.set()
    fs.close(fd)
    engine.close()
    meta.close()


class HintedStore(LocalObjectStore):
    """A local store that records the read-ahead hints it is given."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.hints: list[str] = []

    def will_read(self, key: str) -> None:
        self.hints.append(key)
        super().will_read(key)


def test_a_sequential_reader_has_the_next_blocks_read_ahead_once(tmp_path: Path) -> None:
    """A local store is asked to read ahead the blocks past a sequential reader (the disk
    otherwise waits for each block in turn), each block once; a random reader gives no hint."""
    objects = HintedStore(tmp_path / "bucket")
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    fmt = new_format("ahead", storage="file", bucket=f"{tmp_path}/bucket/", block_size_kib=64)
    format_volume(meta, objects, fmt)
    engine = Engine(meta, objects, readahead_blocks=2)
    fs = PathFS(engine)
    data = os.urandom(8 * BLOCK)
    fs.write_bytes("/f", data)
    engine.drain()
    fd = fs.open("/f")
    assert fs.read(fd, 1000, 5 * BLOCK) == data[5 * BLOCK : 5 * BLOCK + 1000]  # not sequential
    assert objects.hints == []
    got = b"".join(fs.read(fd, BLOCK // 2, off) for off in range(0, 8 * BLOCK, BLOCK // 2))
    assert got == data
    keys = sorted(set(objects.hints))
    assert len(keys) == len(objects.hints), "a block was hinted twice"
    assert len(keys) == 7  # every block but the first, ahead of the reader
    assert all(k.rsplit("_", 2)[1] != "0" for k in keys)
    fs.close(fd)
    engine.close()
    meta.close()


def test_a_short_block_file_fails_its_spans_with_eio_and_leaves_no_descriptor(
    tmp_path: Path,
) -> None:
    import errno

    objects = LocalObjectStore(tmp_path / "bucket")
    blocks = BlockStore(objects, "vol", BLOCK)
    for indx in range(3):
        objects.put(blocks.key(5, indx, BLOCK), bytes([indx]) * BLOCK)
    spans = blocks.file_spans(5, 3 * BLOCK, BLOCK - 10, 20)
    assert spans is not None and [(at, n) for _, at, n in spans] == [(BLOCK - 10, 10), (0, 10)]
    assert b"".join(os.pread(fd, n, at) for fd, at, n in spans) == b"\0" * 10 + b"\1" * 10
    close_spans(spans)
    before = len(os.listdir("/proc/self/fd"))
    with open(objects.root / blocks.key(5, 2, BLOCK), "r+b") as f:
        f.truncate(BLOCK - 1)  # damaged behind the store's back
    with pytest.raises(OSError) as caught:
        blocks.file_spans(5, 3 * BLOCK, 0, 3 * BLOCK)
    assert caught.value.errno == errno.EIO and "expected" in str(caught.value)
    objects.delete(blocks.key(5, 1, BLOCK))
    with pytest.raises(OSError) as caught:
        blocks.file_spans(5, 3 * BLOCK, 0, 3 * BLOCK)
    assert caught.value.errno == errno.EIO and "missing" in str(caught.value)
    assert len(os.listdir("/proc/self/fd")) == before  # the files opened first were closed
    blocks.close()
