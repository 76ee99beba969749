"""check_metadata: silent on engine-built trees, and each of its checks can fail.

Every corruption is made by hand through a write transaction on a healthy volume, and must be
reported with the expected message.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest

from volume.engine import Engine, PathFS, format_volume, new_format
from volume.engine.check import check_metadata
from volume.juicefs import (
    CHUNK_SIZE,
    COUNTER_NEXT_CHUNK,
    COUNTER_NEXT_INODE,
    COUNTER_TOTAL_INODES,
    COUNTER_USED_SPACE,
    ROOT_INODE,
    TYPE_DIRECTORY,
    TYPE_FILE,
    Attr,
    SliceRecord,
    unpack_slices,
)
from volume.stores import MetaTxn
from volume.testing.memory import MemoryObjectStore
from volume_sqlite import SQLiteMetaStore


@dataclass
class Volume:
    """A healthy volume built through the engine, with the inode numbers of its nodes."""

    meta: SQLiteMetaStore
    engine: Engine
    fs: PathFS
    ino: dict[str, int]

    def corrupt(self, change: Callable[[MetaTxn, "Volume"], None]) -> list[str]:
        """Apply ``change`` in a write transaction; the problems the check then reports."""
        with self.meta.transaction(write=True) as tx:
            change(tx, self)
        return check_metadata(self.meta)

    def attr(self, tx: MetaTxn, path: str) -> Attr:
        attr = tx.get_attr(self.ino[path])
        assert attr is not None
        return attr

    def slice_of(self, tx: MetaTxn, path: str) -> SliceRecord:
        """The first data record of the file's first chunk."""
        return next(r for r in unpack_slices(tx.read_chunk(self.ino[path], 0)) if r.id)


def _build_tree(fs: PathFS) -> None:
    fs.makedirs("/d/sub")
    fs.write_bytes("/f", os.urandom(200_000))  # several 64 KiB blocks
    fs.write_bytes("/d/g", b"g" * 5000)
    fs.link("/d/g", "/d/sub/g-link")
    fs.symlink("d/g", "/s")
    fs.mkfifo("/p")
    fd = fs.open("/sparse", os.O_RDWR | os.O_CREAT)
    fs.write(fd, b"past the first chunk", CHUNK_SIZE + 100)
    fs.ftruncate(fd, CHUNK_SIZE + 50)
    fs.close(fd)
    fs.write_bytes("/gone", b"x" * 10)
    fs.rename("/gone", "/d/renamed")
    fs.unlink("/d/renamed")
    fs.setxattr("/f", "user.k", b"v")


@pytest.fixture
def volume(tmp_path) -> Iterator[Volume]:
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    name = f"check-{uuid.uuid4().hex}"
    objects = MemoryObjectStore.from_uri(f"memory://{name}")
    fmt = new_format("check", storage="memory", bucket=objects.uri, block_size_kib=64)
    format_volume(meta, objects, fmt)
    engine = Engine(meta, objects)
    fs = PathFS(engine)
    _build_tree(fs)
    engine.drain()
    paths = ["/", "/d", "/d/sub", "/f", "/d/g", "/s", "/p", "/sparse"]
    try:
        yield Volume(meta, engine, fs, {p: fs.lstat(p).st_ino for p in paths})
    finally:
        engine.close()
        meta.close()
        MemoryObjectStore.reset(name)


def test_a_healthy_tree_has_no_problems(volume: Volume) -> None:
    assert check_metadata(volume.meta) == []


def _sustained(volume: Volume) -> list[tuple[int, int]]:
    with volume.meta.transaction() as tx:
        return [tuple(row) for row in tx.sustained()]


def _forget_sustained(volume: Volume) -> None:
    with volume.meta.transaction(write=True) as tx:
        for session, ino in tx.sustained():
            tx.remove_sustained(session, ino)


def test_a_file_unlinked_while_open_is_sustained_until_its_last_close(volume: Volume) -> None:
    fs = volume.fs
    fd = fs.open("/d/g", os.O_RDWR)
    fs.write(fd, b"more", 5000)
    fs.unlink("/d/g")
    fs.unlink("/d/sub/g-link")
    fs.ftruncate(fd, 3)  # its length changes: no directory's stats may change with it
    open_inode = fs.fstat(fd).st_ino
    assert [ino for _session, ino in _sustained(volume)] == [open_inode]
    assert check_metadata(volume.meta) == []
    assert check_metadata(volume.meta, {open_inode}) == []
    _forget_sustained(volume)
    assert any("not sustained: it leaked" in p for p in check_metadata(volume.meta))
    problems = check_metadata(volume.meta, {open_inode})
    assert any("open with no link left, but not sustained" in p for p in problems)
    fs.close(fd)
    assert _sustained(volume) == []
    assert check_metadata(volume.meta) == []


def test_a_directory_removed_while_open_is_sustained_until_released(volume: Volume) -> None:
    fs = volume.fs
    fd = fs.open("/d/sub/..", os.O_RDONLY)  # /d
    fs.unlink("/d/sub/g-link")
    fs.rmdir("/d/sub")
    fs.unlink("/d/g")
    fs.rmdir("/d")
    assert [ino for _session, ino in _sustained(volume)] == [volume.ino["/d"]]
    assert check_metadata(volume.meta) == []
    _forget_sustained(volume)
    assert any("not sustained: it leaked" in p for p in check_metadata(volume.meta))
    fs.close(fd)
    assert check_metadata(volume.meta) == []


def test_sustained_rows_must_name_unlinked_inodes(volume: Volume) -> None:
    with volume.meta.transaction(write=True) as tx:
        tx.add_sustained(5, volume.ino["/f"])
        tx.add_sustained(5, 999_999)
    problems = check_metadata(volume.meta)
    assert any("session 5 sustains inode 999999, which does not exist" in p for p in problems)
    assert any("session 5 sustains" in p and "/f" in p and "has links" in p for p in problems)


def _set(path: str, **fields: object) -> Callable[[MetaTxn, Volume], None]:
    """A change setting attribute fields of the node at ``path``."""

    def change(tx: MetaTxn, v: Volume) -> None:
        attr = v.attr(tx, path)
        for name, value in fields.items():
            setattr(attr, name, value)
        tx.set_attr(v.ino[path], attr)

    return change


def _retype_entry(tx: MetaTxn, v: Volume) -> None:
    tx.remove_entry(ROOT_INODE, b"f")
    tx.add_entry(ROOT_INODE, b"f", v.ino["/f"], TYPE_DIRECTORY)


def _extra_ref(tx: MetaTxn, v: Volume) -> None:
    rec = v.slice_of(tx, "/f")
    tx.add_slice_ref(rec.id, rec.size, 1)


def _zero_refs(tx: MetaTxn, v: Volume) -> None:
    rec = v.slice_of(tx, "/f")
    tx.add_slice_ref(rec.id, rec.size, -1)


def _record_with_other_size(tx: MetaTxn, v: Volume) -> None:
    rec = v.slice_of(tx, "/f")
    tx.append_chunk(v.ino["/f"], 0, SliceRecord(0, rec.id, rec.size + 1, 0, 10).pack())


def _record_past_its_slice(tx: MetaTxn, v: Volume) -> None:
    rec = v.slice_of(tx, "/f")
    tx.append_chunk(v.ino["/f"], 0, SliceRecord(0, rec.id, rec.size, rec.size - 5, 10).pack())
    tx.add_slice_ref(rec.id, rec.size, 1)


def _chunk_of_a_directory(tx: MetaTxn, v: Volume) -> None:
    tx.append_chunk(v.ino["/d"], 0, SliceRecord(0, 0, 0, 0, 10).pack())


CORRUPTIONS: dict[str, tuple[Callable[[MetaTxn, Volume], None], str]] = {
    "root missing": (lambda tx, v: tx.delete_attr(ROOT_INODE), "root inode 1 is missing"),
    "entry naming a missing inode": (
        lambda tx, v: tx.add_entry(ROOT_INODE, b"ghost", 999_999, TYPE_FILE),
        "names missing inode 999999",
    ),
    "entry with the wrong type": (_retype_entry, "has type 2, but inode"),
    "entry with an invalid name": (
        lambda tx, v: tx.add_entry(v.ino["/d"], b"x/y", v.ino["/f"], TYPE_FILE),
        "is not a valid name",
    ),
    "entry named dot": (
        lambda tx, v: tx.add_entry(v.ino["/d"], b".", v.ino["/f"], TYPE_FILE),
        "is not a valid name",
    ),
    "entries under a file": (
        lambda tx, v: tx.add_entry(v.ino["/f"], b"x", v.ino["/p"], 4),
        "is not a directory but has entries",
    ),
    "directory named twice": (
        lambda tx, v: tx.add_entry(ROOT_INODE, b"d2", v.ino["/d"], TYPE_DIRECTORY),
        "is named by 2 entries",
    ),
    "unreachable inode": (
        lambda tx, v: tx.set_attr(900_000, Attr(type=TYPE_FILE, mode=0o644, nlink=1, parent=1)),
        "inode 900000 (regular) is not reachable from the root",
    ),
    "inode without links": (
        lambda tx, v: tx.set_attr(900_001, Attr(type=TYPE_FILE, mode=0o644, nlink=0)),
        "has no link and is not sustained: it leaked",
    ),
    "directory nlink": (_set("/d", nlink=5), "has nlink 5, expected 3"),
    "file nlink": (_set("/f", nlink=2), "has nlink 2, but 1 entries"),
    "hard-linked file with a parent": (_set("/d/g", parent=1), "so its parent must be 0"),
    "file with another parent": (_set("/f", parent=7), "has parent 7, but its entry is in"),
    "directory with another parent": (_set("/d/sub", parent=1), "has parent 1, but its entry"),
    "root with another parent": (_set("/", parent=3), "has parent 3, expected 1"),
    "directory length": (_set("/d", length=1), "has length 1, expected 4096"),
    "symlink length": (_set("/s", length=99), "has length 99, but its target has 3 bytes"),
    "symlink without target": (
        lambda tx, v: tx.delete_symlink(v.ino["/s"]),
        "has no target row",
    ),
    "target row of a non-symlink": (
        lambda tx, v: tx.set_symlink(v.ino["/f"], b"x"),
        "is not a symlink but has a target row",
    ),
    "fifo with a length": (_set("/p", length=3), "has length 3, expected 0"),
    "dir stats row of a file": (
        lambda tx, v: tx.update_dir_stats(v.ino["/f"], 0, 0, 0),
        "is not a directory but has a dir_stats row",
    ),
    "wrong dir stats": (
        lambda tx, v: tx.update_dir_stats(v.ino["/d"], 1, 0, 0),
        "has dir stats (length, space, inodes) (5001, 12288, 2), expected (5000, 12288, 2)",
    ),
    "chunk of a directory": (_chunk_of_a_directory, "exists, but the inode is not a regular file"),
    "corrupt chunk blob": (
        lambda tx, v: tx.write_chunk(v.ino["/f"], 3, b"12345"),
        "is not a multiple of 24",
    ),
    "record past the chunk end": (
        lambda tx, v: tx.append_chunk(
            v.ino["/f"], 0, SliceRecord(CHUNK_SIZE - 5, 0, 0, 0, 10).pack()
        ),
        "runs past the end of the chunk",
    ),
    "record past its slice": (_record_past_its_slice, "reads past the end of its slice"),
    "refs too high": (_extra_ref, "has refs 2, but 1 records name it"),
    "refs zero while named": (_zero_refs, "has refs 0, but 1 records name it"),
    "slice named with two sizes": (_record_with_other_size, "is named with different sizes"),
    "refs of an unnamed slice": (
        lambda tx, v: tx.add_slice_ref(500_000, 10, 1),
        "slice 500000 (size 10) has refs 1, but no record names it",
    ),
    "usedSpace": (
        lambda tx, v: tx.add_counter(COUNTER_USED_SPACE, 4096),
        "counter usedSpace is",
    ),
    "totalInodes": (
        lambda tx, v: tx.add_counter(COUNTER_TOTAL_INODES, -1),
        "counter totalInodes is",
    ),
    "nextInode": (lambda tx, v: tx.set_counter(COUNTER_NEXT_INODE, 2), "counter nextInode is 2"),
    "nextChunk": (lambda tx, v: tx.set_counter(COUNTER_NEXT_CHUNK, 1), "counter nextChunk is 1"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_each_corruption_is_reported(volume: Volume, case: str) -> None:
    change, expected = CORRUPTIONS[case]
    problems = volume.corrupt(change)
    assert any(expected in p for p in problems), problems


def test_a_missing_ref_row_is_reported(tmp_path) -> None:
    """A record naming a slice with no jfs_chunk_ref row at all (built on an empty volume)."""
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    objects = MemoryObjectStore.from_uri(f"memory://check-{uuid.uuid4().hex}")
    format_volume(meta, objects, new_format("check", storage="memory", bucket=objects.uri))
    try:
        with meta.transaction(write=True) as tx:
            tx.set_attr(2, Attr(type=TYPE_FILE, mode=0o644, nlink=1, length=10, parent=1))
            tx.add_entry(ROOT_INODE, b"f", 2, TYPE_FILE)
            tx.append_chunk(2, 0, SliceRecord(0, 7, 10, 0, 10).pack())
            tx.add_counter(COUNTER_USED_SPACE, 4096)
            tx.add_counter(COUNTER_TOTAL_INODES, 1)
            tx.set_counter(COUNTER_NEXT_INODE, 3)
            tx.set_counter(COUNTER_NEXT_CHUNK, 8)
        problems = check_metadata(meta)
        assert problems == [
            "slice 7 (size 10) is named by 1 records but has no jfs_chunk_ref row"
        ], problems
    finally:
        meta.close()
