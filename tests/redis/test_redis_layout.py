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


def test_an_absent_slice_ref_field_reads_as_one_reference_as_in_juicefs(tmp_path: Path) -> None:
    """The JuiceFS client writes no sliceRef field for a slice referenced once (the field holds
    refs - 1): our listing and fsck read such a slice as 1 reference, and a reference dropped
    after the listing leaves 0 (what the client's HINCRBY -1 gives)."""
    meta = RedisMetaStore.open(tmp_path / "meta")
    objects = LocalObjectStore(tmp_path / "bucket")
    fmt = new_format("absent", storage="file", bucket=f"{tmp_path}/bucket/", block_size_kib=64)
    format_volume(meta, objects, fmt)
    engine = Engine(meta, objects)
    PathFS(engine).write_bytes("/once", b"z" * 5000)
    engine.close()
    with meta.transaction() as tx:
        ((slice_id, size, refs),) = [r for r in tx.slice_refs() if r[0]]
    assert refs == 1
    meta._client.hdel(b"sliceRef", b"k%d_%d" % (slice_id, size))  # as the client writes it
    meta._reset_cache()
    from volume.engine.check import check_metadata

    assert check_metadata(meta) == []  # no "has no jfs_chunk_ref row"
    with meta.transaction(write=True) as tx:
        assert [r for r in tx.slice_refs() if r[0]] == [(slice_id, size, 1)]
        assert tx.add_slice_ref(slice_id, size, 1) == 2
        assert tx.add_slice_ref(slice_id, size, -2) == 0
    meta.close()
