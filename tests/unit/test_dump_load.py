"""Dump and load of a namespace in the JuiceFS JSON dump format (``volume.dump``).

The expected texts come from the format reference (and were checked against the real client's
``juicefs dump``), not from the code under test.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sqlite3
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from volume import dump as dump_module
from volume.engine import Engine, PathFS, format_volume, new_format
from volume.engine.check import check_metadata
from volume.errors import VolumeIndexCorrupt, VolumeMigrateError
from volume.dump import dump, escape, load, migrate, unescape
from tests.jfsclient import SKIP_REASON, juicefs_binary
from volume.juicefs import (
    CHUNK_SIZE,
    COUNTER_NEXT_CHUNK,
    COUNTER_NEXT_CLEANUP_SLICES,
    COUNTER_NEXT_INODE,
    COUNTER_NEXT_SESSION,
    COUNTER_NEXT_TRASH,
    COUNTER_TOTAL_INODES,
    COUNTER_USED_SPACE,
    DIR_LENGTH,
    ROOT_INODE,
    TRASH_INODE,
    TYPE_DIRECTORY,
    TYPE_FILE,
    Attr,
    Format,
    SliceRecord,
    unpack_slices,
)
from volume.stores import MetaStore
from volume.testing.memory import MemoryObjectStore
from volume_sqlite import SQLiteMetaStore

BS = 64 * 1024
ALL_COUNTERS = (
    COUNTER_USED_SPACE, COUNTER_TOTAL_INODES, COUNTER_NEXT_INODE, COUNTER_NEXT_CHUNK,
    COUNTER_NEXT_SESSION, COUNTER_NEXT_TRASH, COUNTER_NEXT_CLEANUP_SLICES,
)  # fmt: skip

# names that need every kind of escape, and how the dump writes them
ODD_NAMES = {
    b"a b": "a%20b",
    b"p%q": "p%25q",
    b'q"x': "q%22x",
    b"bs\\y": "bs%5Cy",
    b"nl\nz": "nl%0Az",
    b"bad\xff\xfe": "bad%FF%FE",
    "é日".encode(): "é日",
    b"lt<gt>&": "lt<gt>&",
    b"del\x7f": "del\x7f",
}
SYMLINK_TARGET = b't a\xff%"\\\n<>&\xc3\xa9'
XATTR_VALUE = b'\x00\x01\xff<>& "\\%\xe6\x97\xa5'


def pattern(n: int, seed: bytes = b"x") -> bytes:
    unit = hashlib.sha256(seed).digest()
    return (unit * (n // len(unit) + 1))[:n]


# =========================================================================== fixtures


class Built:
    """A volume written by the engine: SQLite metadata over a memory object store."""

    def __init__(self, root: Path, name: str, trash_days: int = 0):
        MemoryObjectStore.reset(name)
        self.objects = MemoryObjectStore(name)
        self.meta = SQLiteMetaStore.open(root / "meta")
        fmt = new_format(name, storage="memory", bucket=f"memory://{name}/", block_size_kib=64,
                         trash_days=trash_days)  # fmt: skip
        format_volume(self.meta, self.objects, fmt)
        self.files: dict[bytes, bytes] = {}

    def write_tree(self) -> None:
        """Directories, multi-block and multi-chunk sparse files, an empty and a truncated file,
        hard links in two directories, an odd symlink, binary xattrs, odd names, special files."""
        engine = Engine(self.meta, self.objects)
        fs = PathFS(engine, umask=0)
        fs.makedirs("/docs/nested/deeper")
        fs.mkdir("/other", 0o750)
        fs.mkdir("/odd")
        fs.write_bytes("/docs/multi", pattern(3 * BS + BS // 2))
        fd = fs.open("/sparse", os.O_WRONLY | os.O_CREAT)
        fs.write(fd, pattern(100, b"a"), 10)
        fs.write(fd, pattern(100, b"b"), 2 * CHUNK_SIZE + 5)
        fs.write(fd, pattern(BS + 7, b"c"), 3 * CHUNK_SIZE - 5)  # crosses into chunk 3
        fs.close(fd)
        fd = fs.open("/sparse", os.O_WRONLY)
        fs.write(fd, pattern(50, b"d"), 20)  # over the first write: a second record in chunk 0
        fs.close(fd)
        fs.write_bytes("/empty", b"")
        fs.write_bytes("/trunc", pattern(3 * BS, b"t"))
        fs.truncate("/trunc", 1000)  # appends an id-0 record
        fs.write_bytes("/docs/nested/orig", b"linked content")
        fs.link("/docs/nested/orig", "/other/link")
        fs.symlink(SYMLINK_TARGET, "/docs/link-to")
        fs.setxattr("/docs/multi", "user.bin", XATTR_VALUE)
        fs.setxattr("/docs/multi", "user.a", b"plain")
        fs.setxattr("/docs", "user.dir", b"on a directory")
        for i, name in enumerate(ODD_NAMES):
            fs.write_bytes(b"/odd/" + name, pattern(i + 1, name))
        fs.mkfifo("/fifo")
        fs.mknod("/chr", stat.S_IFCHR | 0o644, os.makedev(1, 3))
        fs.chown("/docs/multi", 1000, 1001)
        fs.utime("/docs/multi", ns=(1795515552202179500, 1795515552202179999))
        for path in ("/docs/multi", "/sparse", "/empty", "/trunc", "/docs/nested/orig"):
            self.files[path.encode()] = fs.read_bytes(path)
        for name in ODD_NAMES:
            self.files[b"/odd/" + name] = fs.read_bytes(b"/odd/" + name)
        engine.close()

    def dump_bytes(self, **options: Any) -> bytes:
        return dump_bytes(self.meta, **options)


def dump_bytes(meta: MetaStore, **options: Any) -> bytes:
    out = io.BytesIO()
    stats = dump(meta, out, **options)
    assert stats.bytes == len(out.getvalue())
    return out.getvalue()


def load_bytes(meta: MetaStore, data: bytes) -> dump_module.LoadStats:
    return load(meta, io.BytesIO(data))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    vol = Built(tmp_path_factory.mktemp("built"), "dumpvol")
    vol.write_tree()
    yield vol
    vol.meta.close()


@pytest.fixture
def fresh(tmp_path: Path):
    meta = SQLiteMetaStore.open(tmp_path / "fresh")
    yield meta
    meta.close()


def namespace(meta: MetaStore) -> list[tuple]:
    """Every node reachable from the root and the trash with everything the store keeps of it."""
    rows = []
    with meta.transaction() as tx:
        pending = [(b"/", ROOT_INODE), (b"/.trash", TRASH_INODE)]
        while pending:
            path, ino = pending.pop()
            attr = tx.get_attr(ino)
            if attr is None:
                continue
            chunks = [(i, tx.read_chunk(ino, i)) for i in tx.chunk_indexes(ino)]
            rows.append((path, ino, attr, tx.get_symlink(ino), tx.list_xattrs(ino), chunks,
                         tx.get_dir_stats(ino)))  # fmt: skip
            if attr.type == TYPE_DIRECTORY:
                for name, child, _type in tx.list_entries(ino):
                    pending.append((path.rstrip(b"/") + b"/" + name, child))
    return sorted(rows, key=lambda row: row[0])


def counters(meta: MetaStore) -> dict[str, int]:
    with meta.transaction() as tx:
        return {name: tx.get_counter(name) for name in ALL_COUNTERS}


def live_refs(meta: MetaStore) -> list[tuple[int, int, int]]:
    with meta.transaction() as tx:
        return sorted(r for r in tx.slice_refs() if r[2] > 0)


def entry_at(tree: dict, *names: str) -> dict:
    for name in names:
        tree = tree["entries"][name]
    return tree


# =========================================================================== escaping


def test_escape_matches_the_reference_examples() -> None:
    for raw, escaped in ODD_NAMES.items():
        assert escape(raw) == escaped
        assert unescape(escaped) == raw
    assert escape(b"plain-name.txt") == "plain-name.txt"
    assert escape(b"\xef\xbf\xbd") == "%EF%BF%BD"  # a real U+FFFD survives (JuiceFS keeps %EF)


def test_escape_round_trips_every_byte() -> None:
    for b in range(256):
        raw = bytes([b, 0x41, b]) + "é".encode() + bytes([b])
        assert unescape(escape(raw)) == raw
    truncated_utf8 = b"\xe6\x97x\xf0\x9f\x98"  # each byte of a broken sequence is escaped alone
    assert escape(truncated_utf8) == "%E6%97x%F0%9F%98"


def test_unescape_decodes_only_upper_case_pairs() -> None:
    assert unescape("%41%4a%4%") == b"A%4a%4%"
    assert unescape("%%41") == b"%A"


# =========================================================================== dump text


def test_dump_top_level_layout(built: Built) -> None:
    text = built.dump_bytes().decode()
    doc = json.loads(text)
    assert list(doc) == ["Setting", "Counters", "Sustained", "DelFiles", "FSTree", "Trash"]
    assert list(doc["Counters"]) == [
        "usedSpace", "usedInodes", "nextInodes", "nextChunk", "nextSession", "nextTrash",
    ]  # fmt: skip
    c = counters(built.meta)
    assert doc["Counters"]["nextInodes"] == c[COUNTER_NEXT_INODE]
    assert doc["Counters"]["usedInodes"] == c[COUNTER_TOTAL_INODES]
    assert doc["Setting"]["Name"] == "dumpvol" and doc["Setting"]["BlockSize"] == 64
    assert text.startswith('{\n  "Setting": {\n    "Name": "dumpvol",\n')
    assert '\n  "Sustained": [],\n  "DelFiles": [],\n  "FSTree": {\n    "attr": {"inode":1,' in text
    assert text.endswith("\n    }\n  }\n}\n")
    # no trash inode: the client writes a placeholder
    assert doc["Trash"] == {
        "attr": {"inode": TRASH_INODE, "type": "directory", "mode": 0, "uid": 0, "gid": 0,
                 "atime": 0, "mtime": 0, "ctime": 0, "nlink": 2, "length": 0},
        "entries": {},
    }  # fmt: skip


def test_dump_entries_attrs_and_escapes(built: Built) -> None:
    text = built.dump_bytes().decode()
    tree = json.loads(text)["FSTree"]
    multi = entry_at(tree, "docs", "multi")
    assert list(multi) == ["attr", "xattrs", "chunks"]
    assert list(multi["attr"]) == [
        "inode", "type", "mode", "uid", "gid", "atime", "mtime", "ctime",
        "atimensec", "mtimensec", "ctimensec", "nlink", "length",
    ]  # fmt: skip
    attr = multi["attr"]
    assert attr["atime"] == attr["mtime"] == 1795515552
    assert (attr["atimensec"], attr["mtimensec"]) == (202179500, 202179999)
    assert (attr["uid"], attr["gid"], attr["mode"]) == (1000, 1001, 0o666)
    assert multi["xattrs"] == [
        {"name": "user.a", "value": "plain"},
        {"name": "user.bin", "value": "%00%01%FF<>&%20%22%5C%25日"},
    ]
    assert '"value":"%00%01%FF\\u003c\\u003e\\u0026%20%22%5C%25日"' in text  # Go's HTML escapes
    assert list(entry_at(tree, "docs")) == ["attr", "xattrs", "entries"]
    assert entry_at(tree, "docs", "nested", "deeper")["entries"] == {}
    link = entry_at(tree, "docs", "link-to")
    assert link["symlink"] == "t%20a%FF%25%22%5C%0A<>&é"
    assert link["attr"]["length"] == 0  # dirs and symlinks dump length 0
    assert entry_at(tree, "docs")["attr"]["length"] == 0
    assert list(entry_at(tree, "odd")["entries"]) == sorted(
        ODD_NAMES.values(), key=lambda n: unescape(n)
    )
    for escaped in ODD_NAMES.values():
        assert f'\n          "{escaped}": {{\n' in text  # names are written raw, not JSON-escaped
    assert entry_at(tree, "fifo")["attr"]["type"] == "fifo"
    chr_attr = entry_at(tree, "chr")["attr"]
    assert (chr_attr["type"], chr_attr["rdev"], list(chr_attr)[-1]) == ("chardev", 259, "rdev")
    assert "chunks" not in entry_at(tree, "empty")


def test_dump_chunks_are_raw_records_in_stored_order(built: Built) -> None:
    text = built.dump_bytes().decode()
    tree = json.loads(text)["FSTree"]
    with built.meta.transaction() as tx:
        for path in (("sparse",), ("trunc",), ("docs", "multi")):
            entry = entry_at(tree, *path)
            ino = entry["attr"]["inode"]
            expected = []
            for indx in tx.chunk_indexes(ino):
                slices = []
                for r in unpack_slices(tx.read_chunk(ino, indx)):
                    s = {"id": r.id, "pos": r.pos, "size": r.size, "off": r.off, "len": r.len}
                    slices.append({k: v for k, v in s.items() if v or k not in ("pos", "off")})
                expected.append({"index": indx, "slices": slices})
            assert entry["chunks"] == expected
    sparse = entry_at(tree, "sparse")
    assert [c["index"] for c in sparse["chunks"]] == [0, 2, 3]
    assert len(sparse["chunks"][0]["slices"]) == 2
    trunc = entry_at(tree, "trunc")["chunks"][0]["slices"]
    assert trunc[-1] == {"id": 0, "pos": 1000, "size": 0, "len": 3 * BS - 1000}
    one_line = json.dumps(entry_at(tree, "trunc")["chunks"], separators=(",", ":"))
    assert f'\n        "chunks": {one_line}\n' in text  # a single chunk stays on one line
    assert '\n        "chunks": [\n          {"index":0,"slices":[' in text  # one per line


def test_dump_hard_link_appears_in_full_at_both_paths(built: Built) -> None:
    tree = json.loads(built.dump_bytes())["FSTree"]
    orig = entry_at(tree, "docs", "nested", "orig")
    assert entry_at(tree, "other", "link") == orig
    assert orig["attr"]["nlink"] == 2 and "chunks" in orig


def test_dump_stats_count_inodes_once(built: Built) -> None:
    stats = dump(built.meta, io.BytesIO())
    with built.meta.transaction() as tx:
        inodes = sum(1 for _ in tx.iter_attrs())
    assert stats.inodes == inodes  # root included, the hard link counted once
    assert stats.entries == inodes  # every inode but the root has a name, one has two


def test_dump_removes_secrets_unless_asked(tmp_path: Path) -> None:
    meta = SQLiteMetaStore.open(tmp_path)
    fmt = Format(Name="secrets", Bucket="/b/")
    fmt.values.update(SecretKey="s3cret", SessionToken="tok", AccessKey="ak")
    meta.format(fmt, 0)
    removed = json.loads(dump_bytes(meta))["Setting"]
    kept = json.loads(dump_bytes(meta, keep_secret_key=True))["Setting"]
    meta.close()
    assert (removed["SecretKey"], removed["SessionToken"], removed["AccessKey"]) == (
        "removed", "removed", "ak",
    )  # fmt: skip
    assert (kept["SecretKey"], kept["SessionToken"]) == ("s3cret", "tok")


def test_dump_refuses_acls_it_cannot_carry(fresh: SQLiteMetaStore) -> None:
    fresh.format(Format(Name="acls"), 0)
    with fresh.transaction(write=True) as tx:
        root = tx.get_attr(ROOT_INODE)
        root.access_acl = 1
        tx.set_attr(ROOT_INODE, root)
    with pytest.raises(VolumeMigrateError, match="POSIX ACLs"):
        dump(fresh, io.BytesIO())


# =========================================================================== golden text

GOLDEN_UUID = "8d6e2f8a-7b1c-4c55-9a43-0c1de9e1f00d"
GOLDEN_TIME_NS = 1795515552202179500  # SQL atime=1795515552202179, atimensec=500
GOLDEN = """\
{
  "Setting": {
    "Name": "golden",
    "UUID": "8d6e2f8a-7b1c-4c55-9a43-0c1de9e1f00d",
    "Storage": "file",
    "Tiers": {
      "0": {
        "ID": 0,
        "StorageClass": "",
        "Tag": ""
      }
    },
    "Bucket": "/data/\\u003cb\\u003e/",
    "BlockSize": 64,
    "Compression": "none",
    "EncryptAlgo": "aes256gcm-rsa",
    "TrashDays": 0,
    "MetaVersion": 1,
    "MinClientVersion": "1.1.0-A",
    "DirStats": true,
    "EnableACL": false
  },
  "Counters": {
    "usedSpace": 8192,
    "usedInodes": 2,
    "nextInodes": 4,
    "nextChunk": 8,
    "nextSession": 0,
    "nextTrash": 0
  },
  "Sustained": [],
  "DelFiles": [],
  "FSTree": {
    "attr": {"inode":1,"type":"directory","mode":493,"uid":0,"gid":0,"atime":1795515552,"mtime":1795515552,"ctime":1795515552,"atimensec":202179500,"mtimensec":202179500,"ctimensec":202179500,"nlink":3,"length":0},
    "entries": {
      "hello world.txt": {
        "attr": {"inode":2,"type":"regular","mode":420,"uid":1000,"gid":1000,"atime":1795515552,"mtime":1795515552,"ctime":1795515552,"nlink":1,"length":5},
        "chunks": [{"index":0,"slices":[{"id":7,"size":5,"len":5}]}]
      },
      "sub": {
        "attr": {"inode":3,"type":"directory","mode":448,"uid":0,"gid":0,"atime":1795515552,"mtime":1795515552,"ctime":1795515552,"nlink":2,"length":0},
        "entries": {
        }
      }
    }
  },
  "Trash": {
    "attr": {"inode":9223372032828243968,"type":"directory","mode":0,"uid":0,"gid":0,"atime":0,"mtime":0,"ctime":0,"nlink":2,"length":0},
    "entries": {
    }
  }
}
""".replace("hello world", "hello%20world")


def make_golden(meta: MetaStore) -> None:
    """Root, one 5-byte file and one empty directory, with the counters the engine would keep."""
    fmt = Format(Name="golden", UUID=GOLDEN_UUID, Bucket="/data/<b>/", BlockSize=64, TrashDays=0)
    meta.format(fmt, GOLDEN_TIME_NS)
    whole_second = GOLDEN_TIME_NS // 10**9 * 10**9
    with meta.transaction(write=True) as tx:
        root = tx.get_attr(ROOT_INODE)
        root.mode, root.nlink = 0o755, 3
        tx.set_attr(ROOT_INODE, root)
        tx.set_attr(2, Attr(TYPE_FILE, 0o644, 1000, 1000, whole_second, whole_second, whole_second,
                            nlink=1, length=5, parent=ROOT_INODE))  # fmt: skip
        tx.add_entry(ROOT_INODE, b"hello world.txt", 2, TYPE_FILE)
        tx.append_chunk(2, 0, SliceRecord(0, 7, 5, 0, 5).pack())
        tx.add_slice_ref(7, 5, 1)
        tx.set_attr(3, Attr(TYPE_DIRECTORY, 0o700, 0, 0, whole_second, whole_second, whole_second,
                            nlink=2, length=DIR_LENGTH, parent=ROOT_INODE))  # fmt: skip
        tx.add_entry(ROOT_INODE, b"sub", 3, TYPE_DIRECTORY)
        tx.update_dir_stats(ROOT_INODE, 5, 8192, 2)
        tx.update_dir_stats(3, 0, 0, 0)
        tx.set_counter(COUNTER_USED_SPACE, 8192)
        tx.set_counter(COUNTER_TOTAL_INODES, 2)
        tx.set_counter(COUNTER_NEXT_INODE, 4)
        tx.set_counter(COUNTER_NEXT_CHUNK, 8)


def test_golden_dump_text(fresh: SQLiteMetaStore) -> None:
    make_golden(fresh)
    assert check_metadata(fresh) == []
    assert dump_bytes(fresh).decode() == GOLDEN


def test_golden_text_loads(tmp_path: Path, fresh: SQLiteMetaStore) -> None:
    load_bytes(fresh, GOLDEN.encode())
    assert check_metadata(fresh) == []
    assert dump_bytes(fresh).decode() == GOLDEN
    reference = SQLiteMetaStore.open(tmp_path / "reference")
    make_golden(reference)
    assert namespace(fresh) == namespace(reference)
    reference.close()
    with fresh.transaction() as tx:
        assert tx.get_attr(ROOT_INODE).atime_ns == GOLDEN_TIME_NS
        assert tx.get_attr(TRASH_INODE) is None  # the placeholder does not become an inode


# =========================================================================== load


def test_load_reproduces_the_namespace(built: Built, fresh: SQLiteMetaStore) -> None:
    text = built.dump_bytes()
    stats = load_bytes(fresh, text)
    assert namespace(fresh) == namespace(built.meta)
    assert counters(fresh) == counters(built.meta)
    assert live_refs(fresh) == live_refs(built.meta)
    assert fresh.load_format() == built.meta.load_format()
    assert check_metadata(built.meta) == []
    assert check_metadata(fresh) == []
    assert dump_bytes(fresh) == text
    assert stats.inodes == dump(built.meta, io.BytesIO()).inodes
    assert stats.slices == sum(len(c["slices"]) for c in _all_chunks(json.loads(text)["FSTree"]))


def _all_chunks(entry: dict) -> list[dict]:
    """The chunks of every inode of a dumped tree, once per inode (hard links repeat them)."""
    chunks: dict[int, list[dict]] = {}
    pending = [entry]
    while pending:
        e = pending.pop()
        chunks[e["attr"]["inode"]] = e.get("chunks", [])
        pending += e.get("entries", {}).values()
    return [c for per_inode in chunks.values() for c in per_inode]


def test_loaded_store_reads_back_through_the_original_blocks(
    built: Built, fresh: SQLiteMetaStore
) -> None:
    text = built.dump_bytes()
    before = built.objects.stats.copy()
    load_bytes(fresh, text)
    assert (built.objects.stats - before).puts == 0
    engine = Engine(fresh, MemoryObjectStore("dumpvol"))
    fs = PathFS(engine)
    try:
        for path, data in built.files.items():
            assert fs.read_bytes(path) == data, path
        assert fs.readlink("/docs/link-to") == os.fsdecode(SYMLINK_TARGET)
        assert fs.getxattr("/docs/multi", "user.bin") == XATTR_VALUE
        assert fs.stat("/other/link").st_nlink == 2
    finally:
        engine.close()
    after = built.objects.stats - before
    assert (after.puts, after.deletes) == (0, 0)


def test_gzip_and_text_streams(built: Built, tmp_path: Path) -> None:
    path = tmp_path / "dump.json.gz"
    with gzip.open(path, "wb") as out:
        dump(built.meta, out)
    text_out = io.StringIO()
    dump(built.meta, text_out)
    assert gzip.decompress(path.read_bytes()) == built.dump_bytes() == text_out.getvalue().encode()
    meta = SQLiteMetaStore.open(tmp_path / "from-gz")
    with gzip.open(path, "rb") as src:
        load(meta, src)
    from_text = SQLiteMetaStore.open(tmp_path / "from-text")
    load(from_text, io.StringIO(text_out.getvalue()))
    assert namespace(meta) == namespace(from_text) == namespace(built.meta)
    meta.close()
    from_text.close()


def test_progress_is_reported(built: Built, fresh: SQLiteMetaStore, monkeypatch) -> None:
    monkeypatch.setattr(dump_module, "_PROGRESS_EVERY", 4)
    dumped: list[int] = []
    loaded: list[int] = []
    text = io.BytesIO()
    stats = dump(built.meta, text, progress=dumped.append)
    load(fresh, io.BytesIO(text.getvalue()), progress=loaded.append)
    assert dumped[-1] == stats.entries and dumped == sorted(dumped) and len(dumped) > 2
    assert loaded[-1] == stats.inodes and len(loaded) > 2


def test_trash_tree_round_trips(tmp_path: Path, fresh: SQLiteMetaStore) -> None:
    vol = Built(tmp_path, "trashvol", trash_days=1)
    vol.write_tree()
    hour = TRASH_INODE + 3
    with vol.meta.transaction(write=True) as tx:
        gone = tx.add_counter(COUNTER_NEXT_INODE, 1) - 1
        tx.set_attr(hour, Attr(TYPE_DIRECTORY, 0o555, nlink=2, length=DIR_LENGTH,
                               parent=TRASH_INODE, mtime_ns=5))  # fmt: skip
        tx.add_entry(TRASH_INODE, b"2026-11-24-10", hour, TYPE_DIRECTORY)
        tx.update_dir_stats(hour, 3, 4096, 1)
        tx.set_attr(gone, Attr(TYPE_FILE, 0o644, nlink=1, length=3, parent=hour))
        tx.add_entry(hour, f"1-{gone}-gone.txt".encode(), gone, TYPE_FILE)
        tx.append_chunk(gone, 0, SliceRecord(0, 4000, 3, 0, 3).pack())
        tx.add_slice_ref(4000, 3, 1)
        tx.update_dir_stats(TRASH_INODE, 0, 4096, 1)
        tx.add_counter(COUNTER_USED_SPACE, 2 * 4096)
        tx.add_counter(COUNTER_TOTAL_INODES, 2)
        tx.set_counter(COUNTER_NEXT_TRASH, 3)
        tx.set_counter(COUNTER_NEXT_CHUNK, max(4001, tx.get_counter(COUNTER_NEXT_CHUNK)))
    assert check_metadata(vol.meta) == []
    text = vol.dump_bytes()
    trash = json.loads(text)["Trash"]
    assert trash["attr"]["mode"] == 0o555
    assert list(trash["entries"]["2026-11-24-10"]["entries"]) == [f"1-{gone}-gone.txt"]
    load_bytes(fresh, text)
    assert namespace(fresh) == namespace(vol.meta)
    assert counters(fresh) == counters(vol.meta)
    assert check_metadata(fresh) == []
    assert dump_bytes(fresh) == text
    vol.meta.close()


def test_missing_trash_inode_stays_missing(tmp_path: Path, fresh: SQLiteMetaStore) -> None:
    """A volume formatted with a trash whose trash inode is gone: the placeholder is dumped,
    and the load removes the trash inode its own format made."""
    vol = Built(tmp_path, "notrash", trash_days=1)
    with vol.meta.transaction(write=True) as tx:
        tx.delete_attr(TRASH_INODE)
    text = vol.dump_bytes()
    load_bytes(fresh, text)
    with fresh.transaction() as tx:
        assert tx.get_attr(TRASH_INODE) is None
    assert dump_bytes(fresh) == text
    vol.meta.close()


def test_deep_tree_needs_no_recursion(fresh: SQLiteMetaStore, tmp_path: Path) -> None:
    depth = 3000  # far past Python's recursion limit
    fresh.format(Format(Name="deep", TrashDays=0), 0)
    with fresh.transaction(write=True) as tx:
        root = tx.get_attr(ROOT_INODE)
        root.nlink = 3
        tx.set_attr(ROOT_INODE, root)
        for ino in range(2, depth + 2):
            parent = ROOT_INODE if ino == 2 else ino - 1
            nlink = 2 if ino == depth + 1 else 3
            tx.set_attr(ino, Attr(TYPE_DIRECTORY, 0o755, nlink=nlink, length=DIR_LENGTH,
                                  parent=parent))  # fmt: skip
            tx.add_entry(parent, b"d", ino, TYPE_DIRECTORY)
            tx.update_dir_stats(parent, 0, 4096, 1)
        tx.update_dir_stats(depth + 1, 0, 0, 0)
        tx.set_counter(COUNTER_NEXT_INODE, depth + 2)
        tx.set_counter(COUNTER_USED_SPACE, depth * 4096)
        tx.set_counter(COUNTER_TOTAL_INODES, depth)
    assert check_metadata(fresh) == []
    text = dump_bytes(fresh)
    loaded = SQLiteMetaStore.open(tmp_path / "deep-loaded")
    load_bytes(loaded, text)
    assert namespace(loaded) == namespace(fresh)
    assert dump_bytes(loaded) == text
    loaded.close()


def test_directories_are_read_in_pages(built: Built, monkeypatch) -> None:
    whole = built.dump_bytes()
    monkeypatch.setattr(dump_module, "_LIST_PAGE", 2)
    assert built.dump_bytes() == whole


def test_legacy_chunkid_key_loads(fresh: SQLiteMetaStore) -> None:
    text = GOLDEN.replace('{"id":7,', '{"chunkid":7,')
    load_bytes(fresh, text.encode())
    assert dump_bytes(fresh).decode() == GOLDEN


def test_load_keeps_counters_that_run_ahead_of_the_tree(
    fresh: SQLiteMetaStore, tmp_path: Path
) -> None:
    """nextInode and nextChunk are never lowered: another version may own higher slice ids."""
    text = GOLDEN.replace('"nextInodes": 4', '"nextInodes": 9000').replace(
        '"nextChunk": 8', '"nextChunk": 1048576'
    )
    load_bytes(fresh, text.encode())
    c = counters(fresh)
    assert (c[COUNTER_NEXT_INODE], c[COUNTER_NEXT_CHUNK]) == (9000, 1048576)
    behind = GOLDEN.replace('"nextInodes": 4', '"nextInodes": 2').replace(
        '"nextChunk": 8', '"nextChunk": 1'
    )
    other = SQLiteMetaStore.open(tmp_path / "behind")
    load_bytes(other, behind.encode())
    c = counters(other)
    assert (c[COUNTER_NEXT_INODE], c[COUNTER_NEXT_CHUNK]) == (4, 8)  # recomputed from the tree
    other.close()


def test_hard_link_load_sets_nlink_and_parent_zero(built: Built, fresh: SQLiteMetaStore) -> None:
    load_bytes(fresh, built.dump_bytes())
    with fresh.transaction() as tx:
        ino = tx.lookup(tx.lookup(ROOT_INODE, b"other")[0], b"link")[0]
        attr = tx.get_attr(ino)
        assert (attr.nlink, attr.parent) == (2, 0)
        assert len(tx.entry_parents(ino)) == 2


# =========================================================================== bad input


def test_load_refuses_a_formatted_store(built: Built, fresh: SQLiteMetaStore) -> None:
    fresh.format(Format(Name="taken"), 0)
    with pytest.raises(VolumeMigrateError, match="empty"):
        load_bytes(fresh, built.dump_bytes())
    assert fresh.load_format().Name == "taken"


def test_load_refuses_a_store_that_is_not_empty(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "meta.db") as conn:
        conn.execute("CREATE TABLE unrelated (x)")
    meta = SQLiteMetaStore.open(tmp_path)
    with pytest.raises(VolumeMigrateError, match="empty"):
        load_bytes(meta, GOLDEN.encode())
    assert not meta.is_formatted()
    meta.close()


def _corrupt(document: dict, change: str) -> bytes:
    tree = document["FSTree"]
    if change == "missing FSTree":
        del document["FSTree"]
    elif change == "Setting is a list":
        document["Setting"] = []
    elif change == "inode is a string":
        tree["entries"]["sub"]["attr"]["inode"] = "3"
    elif change == "unknown type":
        tree["entries"]["sub"]["attr"]["type"] = "door"
    elif change == "entries is a list":
        tree["entries"]["sub"]["entries"] = []
    elif change == "slice without len":
        del tree["entries"]["hello%20world.txt"]["chunks"][0]["slices"][0]["len"]
    elif change == "nsec out of range":
        tree["attr"]["mtimensec"] = 10**9
    elif change == "directory at two paths":
        tree["entries"]["again"] = tree["entries"]["sub"]
    elif change == "chunks on a directory":
        tree["entries"]["sub"]["chunks"] = []
    elif change == "name with a slash":
        tree["entries"]["a/b"] = tree["entries"].pop("sub")
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "change",
    [
        "missing FSTree", "Setting is a list", "inode is a string", "unknown type",
        "entries is a list", "slice without len", "nsec out of range", "directory at two paths",
        "chunks on a directory", "name with a slash",
    ],
)  # fmt: skip
def test_load_refuses_malformed_dumps(fresh: SQLiteMetaStore, change: str) -> None:
    data = _corrupt(json.loads(GOLDEN), change)
    with pytest.raises(VolumeIndexCorrupt) as err:
        load_bytes(fresh, data)
    words = {"missing FSTree": "FSTree", "Setting is a list": "Setting",
             "directory at two paths": "two paths", "name with a slash": "a/b"}  # fmt: skip
    assert words.get(change, "FSTree") in str(err.value)
    assert not fresh.is_formatted()  # refused before anything was written


@pytest.mark.parametrize("data", [GOLDEN.encode()[:-40], b"", b"\xff\xfe{", b"[1, 2]"])
def test_load_refuses_what_is_not_a_dump(fresh: SQLiteMetaStore, data: bytes) -> None:
    with pytest.raises(VolumeIndexCorrupt):
        load_bytes(fresh, data)
    assert not fresh.is_formatted()


# =========================================================================== migrate


def test_migrate_copies_everything_including_secrets(built: Built, tmp_path: Path) -> None:
    src = SQLiteMetaStore.open(tmp_path / "src")
    load_bytes(src, built.dump_bytes())
    fmt = src.load_format()
    fmt.values["SecretKey"] = "s3cret"
    src.save_format(fmt)
    dst = SQLiteMetaStore.open(tmp_path / "dst")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    migrate(src, dst, tmp_dir=scratch)
    assert list(scratch.iterdir()) == []
    assert namespace(dst) == namespace(src)
    assert dst.load_format().values["SecretKey"] == "s3cret"
    assert dump_bytes(dst, keep_secret_key=True) == dump_bytes(src, keep_secret_key=True)
    with pytest.raises(VolumeMigrateError):
        migrate(src, dst, tmp_dir=scratch)  # the target is no longer empty
    assert list(scratch.iterdir()) == []
    src.close()
    dst.close()


# =========================================================================== the real client

JUICEFS = juicefs_binary()


@pytest.mark.skipif(JUICEFS is None, reason=SKIP_REASON)
def test_same_text_as_the_juicefs_client(built: Built, tmp_path: Path) -> None:
    """``juicefs dump`` of the engine's SQLite database is our dump, byte for byte, and
    ``juicefs load`` of our dump gives a consistent store with the same tree."""
    db = tmp_path / "copy"
    db.mkdir()
    built.meta.snapshot(db / "meta.db")
    theirs = tmp_path / "theirs.json"
    subprocess.run([JUICEFS, "dump", f"sqlite3://{db}/meta.db", str(theirs)], check=True,
                   capture_output=True)  # fmt: skip
    ours = built.dump_bytes()
    assert theirs.read_bytes() == ours
    (tmp_path / "ours.json").write_bytes(ours)
    loaded = tmp_path / "loaded"
    loaded.mkdir()
    subprocess.run([JUICEFS, "load", f"sqlite3://{loaded}/meta.db", str(tmp_path / "ours.json")],
                   check=True, capture_output=True)  # fmt: skip
    meta = SQLiteMetaStore.open(loaded, read_only=True)
    assert check_metadata(meta) == []
    assert json.loads(dump_bytes(meta))["FSTree"] == json.loads(ours)["FSTree"]
    meta.close()


@pytest.mark.skipif(JUICEFS is None, reason=SKIP_REASON)
def test_sustained_inodes_dump_as_the_juicefs_client_dumps_them(tmp_path: Path) -> None:
    """A snapshot taken while unlinked files are still open: both dumps list them under
    ``Sustained``, byte for byte, and a load leaves them out."""
    vol = Built(tmp_path, "sustained")
    engine = Engine(vol.meta, vol.objects)
    fs = PathFS(engine)
    for name in ("a", "b", "kept"):
        fs.write_bytes(f"/{name}", name.encode() * 1000)
    fds = [fs.open("/a"), fs.open("/b")]
    fs.unlink("/b")
    fs.unlink("/a")
    snap = tmp_path / "snap"
    snap.mkdir()
    vol.meta.snapshot(snap / "meta.db")
    for fd in fds:
        fs.close(fd)
    engine.close()
    vol.meta.close()

    meta = SQLiteMetaStore.open(snap, read_only=True)
    ours = dump_bytes(meta)
    meta.close()
    theirs = tmp_path / "theirs.json"
    subprocess.run([JUICEFS, "dump", f"sqlite3://{snap}/meta.db", str(theirs)], check=True,
                   capture_output=True)  # fmt: skip
    assert theirs.read_bytes() == ours
    sustained = json.loads(ours)["Sustained"]
    assert len(sustained) == 1 and len(sustained[0]["inodes"]) == 2  # b, then a
    loaded = SQLiteMetaStore.open(tmp_path / "loaded")
    load_bytes(loaded, ours)
    with loaded.transaction() as tx:
        assert tx.sustained() == []
        assert tx.get_counter(COUNTER_TOTAL_INODES) == 1  # "kept" only
    assert check_metadata(loaded) == []
    loaded.close()


def test_the_old_module_name_still_imports_with_a_deprecation_warning() -> None:
    import importlib
    import sys

    sys.modules.pop("volume.index", None)
    with pytest.warns(DeprecationWarning, match="import volume.dump"):
        old = importlib.import_module("volume.index")
    assert old.dump is dump_module.dump and old.migrate is dump_module.migrate
