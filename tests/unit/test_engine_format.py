"""What the engine writes is JuiceFS's format, and what the JuiceFS client writes reads back.

The database is inspected with plain ``sqlite3`` and the bucket with plain file listing, so these
tests do not trust the code under test to describe its own output.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from pathlib import Path

import pytest

from volume.engine import Engine, PathFS, format_volume, new_format
from volume.juicefs import (
    CHUNK_SIZE,
    TRASH_INODE,
    SliceRecord,
    block_key,
    slice_blocks,
    unpack_slices,
)
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

BS_KIB = 64
BS = BS_KIB * 1024
NAME = "fmtvol"


class Vol:
    """A formatted volume: a local bucket and a SQLite meta dir, plus raw access to both."""

    def __init__(self, root: Path):
        self.root = root
        self.bucket = root / "bucket"
        self.objects = LocalObjectStore.from_uri(str(self.bucket))
        self.meta_dir = root / "meta"
        meta = SQLiteMetaStore.open(self.meta_dir)
        fmt = new_format(NAME, storage="file", bucket=f"{self.bucket}/", block_size_kib=BS_KIB)
        format_volume(meta, self.objects, fmt)
        meta.close()
        self.engine: Engine | None = None

    def open(self) -> PathFS:
        self.engine = Engine(SQLiteMetaStore.open(self.meta_dir), self.objects)
        return PathFS(self.engine, umask=0)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine.meta.close()
            self.engine = None

    def sql(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.meta_dir / "meta.db")
        conn.text_factory = bytes
        return conn

    def blocks_on_disk(self) -> dict[str, int]:
        base = self.bucket / NAME / "chunks"
        return {
            str(p.relative_to(self.bucket)): p.stat().st_size for p in base.rglob("*") if p.is_file()
        }


@pytest.fixture
def vol(tmp_path: Path):
    v = Vol(tmp_path)
    yield v
    v.close()


def pattern(n: int, seed: bytes = b"x") -> bytes:
    unit = hashlib.sha256(seed).digest()
    return (unit * (n // len(unit) + 1))[:n]


def chunk_records(conn: sqlite3.Connection, inode: int) -> dict[int, list[SliceRecord]]:
    rows = conn.execute(
        "SELECT indx, CAST(slices AS BLOB) FROM jfs_chunk WHERE inode = ? ORDER BY indx", (inode,)
    )
    return {indx: unpack_slices(blob) for indx, blob in rows}


# =========================================================================== engine -> format


def test_blocks_in_bucket_match_slice_records(vol: Vol) -> None:
    fs = vol.open()
    fs.write_bytes("/a", pattern(3 * BS + 123))  # three full blocks and a tail
    fs.write_bytes("/b", pattern(10, b"b"))
    vol.close()
    with vol.sql() as conn:
        refs = conn.execute("SELECT chunkid, size, refs FROM jfs_chunk_ref").fetchall()
        kinds = {r[0] for r in conn.execute("SELECT typeof(slices) FROM jfs_chunk")}
    assert kinds == {b"blob"}
    expected = {
        block_key(NAME, sid, indx, bsize): bsize
        for sid, size, _ in refs
        for indx, bsize in slice_blocks(size, BS)
    }
    assert vol.blocks_on_disk() == expected
    assert sorted(size for _, size, _ in refs) == [10, 3 * BS + 123]
    assert all(r == 1 for *_, r in refs)


def test_sequential_copy_gives_one_slice_per_chunk(vol: Vol) -> None:
    """As observed from the JuiceFS client: a 70 MiB copy is one 64 MiB and one 6 MiB slice."""
    fs = vol.open()
    fd = fs.open("/big", os.O_WRONLY | os.O_CREAT)
    mib = pattern(1 << 20)
    for _ in range(70):
        fs.write(fd, mib)
    fs.close(fd)
    ino = fs.stat("/big").st_ino
    vol.close()
    with vol.sql() as conn:
        recs = chunk_records(conn, ino)
    assert [(r.pos, r.size, r.off, r.len) for r in recs[0]] == [(0, 64 << 20, 0, 64 << 20)]
    assert [(r.pos, r.size, r.off, r.len) for r in recs[1]] == [(0, 6 << 20, 0, 6 << 20)]
    assert recs[0][0].id != recs[1][0].id


def test_truncate_appends_zero_record_as_juicefs_does(vol: Vol) -> None:
    """Observed from the client: truncating a 3 MiB file to 1000 appends (1000, 0, 0, 0, 3144728)."""
    fs = vol.open()
    fs.write_bytes("/f", pattern(3 << 20))
    fs.truncate("/f", 1000)
    ino = fs.stat("/f").st_ino
    assert fs.read_bytes("/f") == pattern(1000)
    vol.close()
    with vol.sql() as conn:
        recs = chunk_records(conn, ino)[0]
        length, = conn.execute("SELECT length FROM jfs_node WHERE inode = ?", (ino,)).fetchone()
    assert recs[-1] == SliceRecord(1000, 0, 0, 0, 3144728)
    assert length == 1000


def test_node_rows_encode_modes_and_times_as_juicefs(vol: Vol) -> None:
    fs = vol.open()
    fs.write_bytes("/f", b"x")
    fs.chmod("/f", 0o4755)
    fs.utime("/f", ns=(1795515552202179500, 1795515552202179999))
    fs.symlink("target/of/link", "/l")
    fs.mkdir("/d", 0o750)
    f_ino, l_ino, d_ino = (fs.lstat(p).st_ino for p in ("/f", "/l", "/d"))
    vol.close()
    with vol.sql() as conn:
        row = conn.execute(
            "SELECT type, mode, atime, atimensec, mtime, mtimensec, rdev, parent, access_acl_id, "
            "default_acl_id, tier_id FROM jfs_node WHERE inode = ?",
            (f_ino,),
        ).fetchone()
        link = conn.execute(
            "SELECT n.type, n.length, typeof(s.target), s.target FROM jfs_node n "
            "JOIN jfs_symlink s USING (inode) WHERE inode = ?",
            (l_ino,),
        ).fetchone()
        d = conn.execute("SELECT type, mode, nlink, length FROM jfs_node WHERE inode = ?", (d_ino,))
        d = d.fetchone()
        edge_types = {r[0] for r in conn.execute("SELECT typeof(name) FROM jfs_edge")}
    assert row == (1, 0o4755, 1795515552202179, 500, 1795515552202179, 999, 0, 1, 0, 0, 0)
    assert link == (3, 14, b"blob", b"target/of/link")
    assert d == (2, 0o750, 2, 4096)
    assert edge_types == {b"blob"}


def test_counters_and_dir_stats_follow_the_tree(vol: Vol) -> None:
    fs = vol.open()
    fs.mkdir("/d")
    fs.write_bytes("/d/f", pattern(5000))
    fs.write_bytes("/g", b"")
    fs.link("/d/f", "/d/f2")
    d_ino = fs.stat("/d").st_ino
    vol.close()
    with vol.sql() as conn:
        counters = dict(conn.execute("SELECT name, value FROM jfs_counter"))
        stats = conn.execute(
            "SELECT data_length, used_space, used_inodes FROM jfs_dir_stats WHERE inode = ?",
            (d_ino,),
        ).fetchone()
    # d (4096) + f (align4k(5000) = 8192) + g (empty: 4096); the link adds no inode
    assert counters[b"usedSpace"] == 4096 + 8192 + 4096
    assert counters[b"totalInodes"] == 3
    assert stats == (10000, 16384, 2)  # two entries name the same 5000-byte file
    from volume.engine.check import check_metadata

    with SQLiteMetaStore.open(vol.meta_dir, read_only=True) as meta:
        assert check_metadata(meta) == []


def test_slice_ids_and_inodes_come_from_counters(vol: Vol) -> None:
    fs = vol.open()
    fs.write_bytes("/f", b"data")
    ino = fs.stat("/f").st_ino
    vol.close()
    with vol.sql() as conn:
        counters = dict(conn.execute("SELECT name, value FROM jfs_counter"))
        (sid,) = conn.execute("SELECT chunkid FROM jfs_chunk_ref").fetchone()
    assert 2 <= ino < counters[b"nextInode"]
    assert 1 <= sid < counters[b"nextChunk"]


# =========================================================================== JuiceFS -> engine


def put_slice(vol: Vol, sid: int, data: bytes) -> None:
    """Store a slice's blocks exactly as the client lays them out."""
    for indx, bsize in slice_blocks(len(data), BS):
        vol.objects.put(block_key(NAME, sid, indx, bsize), data[indx * BS : indx * BS + bsize])


def add_file(conn: sqlite3.Connection, ino: int, parent: int, name: bytes, length: int,
             nlink: int = 1, node_parent: int | None = None) -> None:  # fmt: skip
    now = time.time_ns() // 1000
    conn.execute(
        "INSERT INTO jfs_node (inode, type, flags, mode, uid, gid, atime, mtime, ctime, nlink, "
        "length, rdev, parent) VALUES (?, 1, 0, 420, 0, 0, ?, ?, ?, ?, ?, NULL, ?)",
        (ino, now, now, now, nlink, length, parent if node_parent is None else node_parent),
    )
    conn.execute(
        "INSERT INTO jfs_edge (parent, name, inode, type) VALUES (?, ?, ?, 1)", (parent, name, ino)
    )


def append_records(conn: sqlite3.Connection, ino: int, indx: int, *recs: SliceRecord) -> None:
    """Append as the client does: ``slices = slices || ?``, which leaves a TEXT value."""
    for i, rec in enumerate(recs):
        if i == 0:
            conn.execute(
                "INSERT INTO jfs_chunk (inode, indx, slices) VALUES (?, ?, ?)",
                (ino, indx, rec.pack()),
            )
        else:
            conn.execute(
                "UPDATE jfs_chunk SET slices = slices || ? WHERE inode = ? AND indx = ?",
                (rec.pack(), ino, indx),
            )
    for rec in recs:
        if rec.id:
            conn.execute(
                "INSERT INTO jfs_chunk_ref (chunkid, size, refs) VALUES (?, ?, 1) "
                "ON CONFLICT (chunkid) DO UPDATE SET refs = refs + 1",
                (rec.id, rec.size),
            )


def test_client_layout_reads_back(vol: Vol) -> None:
    """TEXT slice blobs, overlapping slices, an id-0 hole, a slice shared by two chunks,
    parent-0 hard links, NULL nullable columns and a trash tree."""
    a, b = pattern(3 * BS, b"a"), pattern(BS // 2, b"b")
    shared = pattern(2 * BS + 77, b"s")
    put_slice(vol, 11, a)
    put_slice(vol, 12, b)
    put_slice(vol, 13, shared)
    split = BS + 5  # bytes of the shared slice that end chunk 0
    with vol.sql() as conn:
        # /over: slice 11, then slice 12 over its middle, then an explicit hole at 10..20
        add_file(conn, 100, 1, b"over", 3 * BS)
        append_records(
            conn, 100, 0,
            SliceRecord(0, 11, len(a), 0, len(a)),
            SliceRecord(BS, 12, len(b), 0, len(b)),
            SliceRecord(10, 0, 0, 0, 10),
        )  # fmt: skip
        # /shared: one slice split across the chunk boundary
        add_file(conn, 101, 1, b"shared", CHUNK_SIZE + len(shared) - split)
        append_records(conn, 101, 0, SliceRecord(CHUNK_SIZE - split, 13, len(shared), 0, split))
        append_records(
            conn, 101, 1, SliceRecord(0, 13, len(shared), split, len(shared) - split)
        )
        # a file with two links and parent 0
        add_file(conn, 102, 1, b"link1", 4, nlink=2, node_parent=0)
        conn.execute("INSERT INTO jfs_edge (parent, name, inode, type) VALUES (1, ?, 102, 1)",
                     (b"link2",))  # fmt: skip
        put_slice(vol, 14, b"hard")
        append_records(conn, 102, 0, SliceRecord(0, 14, 4, 0, 4))
        # a trash tree: trash inode, an hour dir, a trashed file
        add_trash(conn)
        kinds = {r[0] for r in conn.execute("SELECT typeof(slices) FROM jfs_chunk WHERE inode=100")}
        conn.execute("UPDATE jfs_counter SET value = 200 WHERE name = 'nextInode'")
        conn.execute("UPDATE jfs_counter SET value = 100 WHERE name = 'nextChunk'")
    assert kinds == {b"text"}  # the client's append path really leaves TEXT

    fs = vol.open()
    expected = bytearray(a)
    expected[BS : BS + len(b)] = b
    expected[10:20] = bytes(10)
    assert fs.read_bytes("/over") == bytes(expected)
    whole_shared = fs.read_bytes("/shared")
    assert whole_shared[: CHUNK_SIZE - split] == bytes(CHUNK_SIZE - split)
    assert whole_shared[CHUNK_SIZE - split :] == shared
    assert fs.read_bytes("/link1") == fs.read_bytes("/link2") == b"hard"
    assert fs.stat("/link1").st_nlink == 2
    assert sorted(fs.listdir("/")) == ["link1", "link2", "over", "shared"]

    # the engine keeps the client's records and appends its own after them
    fs.unlink("/link1")
    assert fs.read_bytes("/link2") == b"hard"
    fd = fs.open("/over", os.O_WRONLY)
    fs.write(fd, b"XY", 1)
    fs.close(fd)
    expected[1:3] = b"XY"
    assert fs.read_bytes("/over") == bytes(expected)


def add_trash(conn: sqlite3.Connection) -> None:
    now = time.time_ns() // 1000
    hour = TRASH_INODE + 1
    for ino, parent in ((TRASH_INODE, 1), (hour, TRASH_INODE)):
        conn.execute(
            "INSERT OR IGNORE INTO jfs_node (inode, type, flags, mode, uid, gid, atime, mtime, "
            "ctime, nlink, length, rdev, parent) VALUES (?, 2, 0, 365, 0, 0, ?, ?, ?, 2, 4096, "
            "0, ?)",
            (ino, now, now, now, parent),
        )
    conn.execute("INSERT INTO jfs_edge (parent, name, inode, type) VALUES (?, ?, ?, 2)",
                 (TRASH_INODE, b"2026-11-24-10", hour))  # fmt: skip
    add_file(conn, 150, hour, b"1-150-gone.txt", 0)


# =========================================================================== bad data gives EIO


def test_corrupt_slice_blob_is_eio_with_log(vol: Vol, caplog: pytest.LogCaptureFixture) -> None:
    fs = vol.open()
    fs.write_bytes("/f", b"hello")
    ino = fs.stat("/f").st_ino
    vol.close()
    with vol.sql() as conn:
        conn.execute("UPDATE jfs_chunk SET slices = slices || x'00' WHERE inode = ?", (ino,))
    fs = vol.open()
    with pytest.raises(OSError) as err:
        fs.read_bytes("/f")
    assert err.value.errno == 5
    assert f"inode {ino}" in caplog.text


@pytest.mark.parametrize("damage", ["missing", "short"])
def test_missing_or_short_block_is_eio_naming_key(
    vol: Vol, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    fs = vol.open()
    fs.write_bytes("/f", pattern(BS + 10))
    ino = fs.stat("/f").st_ino
    vol.close()
    victim = sorted(vol.blocks_on_disk())[0]
    path = vol.bucket / victim
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:-1])
    fs = vol.open()
    with pytest.raises(OSError) as err:
        fs.read_bytes("/f")
    assert err.value.errno == 5
    assert victim in caplog.text and f"inode {ino}" in caplog.text


@pytest.mark.parametrize(
    "bucket, stored",
    [
        ("file:///data/bucket", "/data/bucket/"),
        ("file:///data/bucket/", "/data/bucket/"),
        ("/data/bucket", "/data/bucket/"),
        ("rel/dir", None),  # absolute against the working directory of the call
    ],
)
def test_a_file_bucket_is_stored_as_juicefs_format_stores_it(bucket: str, stored: str) -> None:
    stored = stored or os.path.abspath(bucket) + "/"
    assert new_format("v", storage="file", bucket=bucket).Bucket == stored


def test_other_buckets_are_stored_as_given() -> None:
    assert new_format("v", storage="memory", bucket="memory://m/").Bucket == "memory://m/"
