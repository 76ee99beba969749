"""The keys and binary values the Redis store writes, read back with a plain Redis client and
checked against the JuiceFS 1.x layout (``pkg/meta/redis.go``, ``Attr.Marshal``)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import redis
from volume_redis import RedisMetaStore
from volume_redis._codec import pack_attr, unpack_attr

from volume.engine import Engine, PathFS, format_volume, new_format
from volume.juicefs import TRASH_INODE, TYPE_DIRECTORY, TYPE_FILE, Attr, SliceRecord
from volume_local import LocalObjectStore

pytestmark = pytest.mark.server


@pytest.fixture
def engine(tmp_path: Path):
    objects = LocalObjectStore.from_uri(str(tmp_path / "bucket"))
    meta = RedisMetaStore.open(tmp_path / "meta")
    format_volume(meta, objects, new_format("layout", storage="file", bucket=f"{tmp_path}/bucket/"))
    eng = Engine(meta, objects)
    yield eng
    eng.close()
    meta.close()


def raw(engine: Engine) -> redis.Redis:
    engine.meta._flush()  # queued writes reach the server
    return redis.Redis(unix_socket_path=engine.meta._server.socket)


def test_attr_record_is_juicefs_marshal() -> None:
    attr = Attr(
        type=TYPE_FILE, mode=0o4755, uid=1000, gid=100, atime_ns=1_700_000_000_123_456_789,
        mtime_ns=-1, ctime_ns=5, nlink=2, length=12345, rdev=7, parent=9, flags=3,
    )  # fmt: skip
    buf = pack_attr(attr)
    assert len(buf) == 72 and buf[-1] == 0
    fields = struct.unpack(">BHIIqIqIqIIQIQ", buf[:71])
    assert fields == (3, (TYPE_FILE << 12) | 0o4755, 1000, 100, 1_700_000_000, 123_456_789,
                      -1, 999_999_999, 0, 5, 2, 12345, 7, 9)  # fmt: skip
    assert unpack_attr(buf) == attr
    acl = Attr(type=TYPE_FILE, mode=0o600, access_acl=4, default_acl=5, tier=2)
    assert len(pack_attr(acl)) == 72 + 8 + 1 and unpack_attr(pack_attr(acl)) == acl
    assert unpack_attr(pack_attr(acl)[:71]).parent == 0  # short records read as JuiceFS reads them


def test_keys_after_format_and_writes(engine: Engine) -> None:
    fs = PathFS(engine)
    fs.mkdir("/dir")
    fs.write_bytes("/dir/file", b"x" * 5000)
    fs.write_bytes("/single", b"y")
    fs.link("/dir/file", "/hard")
    fs.symlink("dir/file", "/sym")
    fs.setxattr("/single", "user.k", b"v")
    r = raw(engine)
    ino = {p: fs.lstat(p).st_ino for p in ("/dir", "/dir/file", "/single", "/sym")}
    assert r.get("setting").startswith(b"{\n\"Name\": \"layout\",")
    # counters: lower-cased names, "last used" for inodes and slices
    with engine.meta.transaction() as tx:
        assert int(r.get("nextinode")) + 1 == tx.get_counter("nextInode")
    assert r.exists("nextInode") == 0 and r.exists("nextchunk") == 1
    assert int(r.get("totalInodes")) == 4 and int(r.get("usedSpace")) == 4096 + 8192 + 4096 + 4096
    # attrs
    root = unpack_attr(r.get("i1"))
    assert (root.type, root.nlink, root.parent) == (TYPE_DIRECTORY, 3, 1)
    assert r.exists(f"i{TRASH_INODE}") == int(engine.fmt.TrashDays > 0)
    assert all(len(r.get(f"i{i}")) == 72 for i in ino.values())
    # entries: 9 bytes, type then inode
    assert r.hget("d1", "dir") == struct.pack(">BQ", TYPE_DIRECTORY, ino["/dir"])
    assert r.hget(f"d{ino['/dir']}", "file") == struct.pack(">BQ", TYPE_FILE, ino["/dir/file"])
    # hard links: parent 0 and p{inode}; a single link has no p key
    assert unpack_attr(r.get(f"i{ino['/dir/file']}")).parent == 0
    assert r.hgetall(f"p{ino['/dir/file']}") == {b"1": b"1", str(ino["/dir"]).encode(): b"1"}
    assert r.exists(f"p{ino['/single']}") == 0 and r.exists(f"p{ino['/sym']}") == 0
    # chunks: lists of 24-byte records; sliceRef holds refs - 1
    records = r.lrange(f"c{ino['/dir/file']}_0", 0, -1)
    assert [len(rec) for rec in records] == [24]
    rec = SliceRecord(*struct.unpack(">IQIII", records[0]))
    assert (rec.pos, rec.len, rec.size) == (0, 5000, 5000)
    assert r.hget("sliceRef", f"k{rec.id}_{rec.size}") == b"0"
    assert r.get(f"s{ino['/sym']}") == b"dir/file"
    assert r.hgetall(f"x{ino['/single']}") == {b"user.k": b"v"}
    # directory statistics hashes
    assert int(r.hget("dirUsedInodes", "1")) == 4
    assert int(r.hget("dirDataLength", str(ino["/dir"]))) == 5000
    assert int(r.hget("dirUsedSpace", str(ino["/dir"]))) == 8192
    # unlinking one of two links leaves p{inode} with the other; the last one removes it
    fs.unlink("/hard")
    r = raw(engine)
    assert r.hgetall(f"p{ino['/dir/file']}") == {str(ino["/dir"]).encode(): b"1"}
    fs.unlink("/dir/file")
    r = raw(engine)
    assert r.exists(f"p{ino['/dir/file']}", f"i{ino['/dir/file']}", f"c{ino['/dir/file']}_0") == 0


def test_writes_reach_the_server_only_as_whole_transactions(engine: Engine) -> None:
    """Queued transactions are sent in one MULTI/EXEC: the server has all of them or none."""
    fs = PathFS(engine)
    fs.mkdir("/d")
    r = raw(engine)
    directory = fs.stat("/d").st_ino
    for i in range(10):
        fs.write_bytes(f"/d/f{i}", os.urandom(10))
        on_server = r.hgetall(f"d{directory}")  # whatever was sent so far ...
        for value in on_server.values():  # ... holds each entry with its inode: whole transactions
            assert r.exists(f"i{struct.unpack('>BQ', value)[1]}") == 1
    assert sorted(fs.listdir("/d")) == sorted(f"f{i}" for i in range(10))
    r = raw(engine)
    assert r.hlen(f"d{directory}") == 10


def _client_written(tmp_path: Path) -> tuple[int, int]:
    """A volume whose file ``/once`` names a slice without a sliceRef field, as the JuiceFS
    client leaves it (a slice written once); returns that slice. The store is closed, so the
    next open knows nothing about it."""
    meta = RedisMetaStore.open(tmp_path / "meta")
    objects = LocalObjectStore(tmp_path / "bucket")
    fmt = new_format("client", storage="file", bucket=f"{tmp_path}/bucket/", block_size_kib=64)
    format_volume(meta, objects, fmt)
    engine = Engine(meta, objects)
    PathFS(engine).write_bytes("/once", b"z" * 5000)
    engine.close()
    with meta.transaction() as tx:
        ((slice_id, size, _),) = [r for r in tx.slice_refs() if r[0]]
    meta._flush()
    assert meta._client.hdel(b"sliceRef", b"k%d_%d" % (slice_id, size)) == 1
    meta.close()
    return slice_id, size


def test_an_absent_slice_ref_field_reads_as_one_reference_as_in_juicefs(tmp_path: Path) -> None:
    """The JuiceFS client writes no sliceRef field for a slice referenced once (the field holds
    refs - 1): our listing and fsck read such a slice as 1 reference, and a reference dropped
    after the listing leaves 0 (what the client's HINCRBY -1 gives)."""
    slice_id, size = _client_written(tmp_path)
    meta = RedisMetaStore.open(tmp_path / "meta")
    from volume.engine.check import check_metadata

    assert check_metadata(meta) == []  # no "has no jfs_chunk_ref row"
    with meta.transaction(write=True) as tx:
        assert [r for r in tx.slice_refs() if r[0]] == [(slice_id, size, 1)]
        assert tx.add_slice_ref(slice_id, size, 1) == 2
        assert tx.add_slice_ref(slice_id, size, -2) == 0
    meta.close()


def test_a_reference_to_a_slice_named_without_a_field_counts_from_one(tmp_path: Path) -> None:
    """Outside any listing, an absent sliceRef field is 1 reference (what the client's HINCRBY
    counts from) for a slice chunk records name, and none for a slice nothing names yet."""
    slice_id, size = _client_written(tmp_path)
    meta = RedisMetaStore.open(tmp_path / "meta")
    try:
        with meta.transaction(write=True) as tx:
            assert tx.add_slice_ref(slice_id, size, 1) == 2  # a clone of the client's slice
            assert tx.add_slice_ref(slice_id, size + 1, 1) == 1  # named by no record
        meta._flush()
        assert meta._client.hget(b"sliceRef", b"k%d_%d" % (slice_id, size)) == b"1"
        with meta.transaction(write=True) as tx:
            assert tx.add_slice_ref(slice_id, size, -2) == 0
    finally:
        meta.close()


def test_deleting_a_client_written_file_leaves_its_slice_at_zero(tmp_path: Path) -> None:
    """The engine drops the one reference of a slice the client wrote: the field reads -1
    (refs 0), as the client's own HINCRBY -1 leaves it, and the metadata check passes."""
    slice_id, size = _client_written(tmp_path)
    meta = RedisMetaStore.open(tmp_path / "meta")
    engine = Engine(meta, LocalObjectStore(tmp_path / "bucket"))
    try:
        PathFS(engine).unlink("/once")
        engine.drain()
        meta._flush()
        assert meta._client.hget(b"sliceRef", b"k%d_%d" % (slice_id, size)) == b"-1"
        from volume.engine.check import check_metadata

        assert check_metadata(meta) == []
    finally:
        engine.close()
        meta.close()


def test_a_clone_of_a_client_written_slice_keeps_it_referenced(tmp_path: Path) -> None:
    """copy_file_range of the client's file then deleting the original: the clone still
    names the slice, so its count stays 1 (not 0, which would let it be cleaned up)."""
    slice_id, size = _client_written(tmp_path)
    meta = RedisMetaStore.open(tmp_path / "meta")
    engine = Engine(meta, LocalObjectStore(tmp_path / "bucket"))
    fs = PathFS(engine)
    try:
        src, dst = fs.open("/once"), fs.open("/clone", os.O_WRONLY | os.O_CREAT)
        assert fs.copy_file_range(src, dst, 5000) == 5000
        fs.close(src)
        fs.close(dst)
        fs.unlink("/once")
        engine.drain()
        with meta.transaction() as tx:
            assert [r for r in tx.slice_refs() if r[0]] == [(slice_id, size, 1)]
        from volume.engine.check import check_metadata

        assert check_metadata(meta) == []
        assert fs.read_bytes("/clone") == b"z" * 5000
    finally:
        engine.close()
        meta.close()


def test_pins_applied_inside_the_server_equal_the_pins_of_each_record(tmp_path: Path) -> None:
    """``volume.pins`` pins a redis snapshot with one script inside a scratch server (told by the
    store which slices are named without a field, or walking the chunks itself): the result is
    exactly what pinning each count through a transaction gives, for 64-bit ids too."""
    from volume.pins import FOREIGN_CHUNK, SLICE_PIN, pin_snapshot

    slice_id, size = _client_written(tmp_path)  # named by /once, no field: 1 reference
    big = (1 << 62) + 7  # ids past 2^53 do not fit a Lua number
    meta = RedisMetaStore.open(tmp_path / "meta")
    meta._client.rpush(b"c99_0", struct.pack(">IQIII", 0, big, 100, 0, 100))  # no field either
    meta._client.rpush(b"c99_1", struct.pack(">IQIII", 0, (1 << 63) - 1, 7, 0, 7))
    meta._client.hset(b"sliceRef", b"k%d_7" % ((1 << 63) - 1), b"1")  # 2 references
    meta._client.hset(b"sliceRef", b"k%d_100" % (big + 1), b"-1")  # 0 references, unnamed
    meta._client.hset(b"sliceRef", b"k%d_100" % (big + 2), str(SLICE_PIN + 3).encode())  # pinned
    meta.close()
    expected = {
        b"k%d_%d" % (slice_id, size): SLICE_PIN,
        b"k%d_100" % big: SLICE_PIN,
        b"k%d_7" % ((1 << 63) - 1): SLICE_PIN + 1,
        b"k%d_100" % (big + 1): SLICE_PIN - 1,
        b"k%d_100" % (big + 2): SLICE_PIN + 3,
    }

    def pinned(store: object, name: str, source: Path) -> dict[bytes, int]:
        snap = tmp_path / f"{name}.rdb"
        snap.write_bytes(source.read_bytes())
        pin_snapshot(store, snap)  # type: ignore[arg-type]
        RedisMetaStore.restore(snap, tmp_path / f"{name}-out")
        out = RedisMetaStore.open(tmp_path / f"{name}-out", read_only=True)
        try:
            with out.transaction() as tx:
                assert tx.get_counter("nextChunk") == FOREIGN_CHUNK
            return {f: int(v) for f, v in out._client.hgetall(b"sliceRef").items()}
        finally:
            out.close()

    live = RedisMetaStore.open(tmp_path / "meta")  # knows the unnamed fields (one scan)
    try:
        live.snapshot(tmp_path / "source.rdb")
        assert pinned(live, "told", tmp_path / "source.rdb") == expected
        assert live._named_unref == {b"k%d_%d" % (slice_id, size), b"k%d_100" % big}
    finally:
        live.close()
    read_only = RedisMetaStore.open(tmp_path / "meta", read_only=True)  # walks the chunks
    try:
        assert pinned(read_only, "walked", tmp_path / "source.rdb") == expected
    finally:
        read_only.close()
    assert pinned(RedisMetaStore, "each", tmp_path / "source.rdb") == expected  # pin_records
