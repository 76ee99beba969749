"""``MetaStoreTests``: the conformance kit every metadata-store plugin runs.

Subclass it in the plugin's test suite and provide a ``store_factory`` fixture: a callable with
the signature of :meth:`MetaStore.open <volume.stores.MetaStore.open>`,
``(meta_dir, *, read_only=False) -> MetaStore``::

    class TestMyStore(MetaStoreTests):
        @pytest.fixture
        def store_factory(self):
            return MyStore.open

A store that needs a server starts it in that fixture (or a session fixture it depends on) and
stops it at teardown. Every store the kit opens is closed by the kit. The kit checks the
engine-neutral :class:`~volume.stores.MetaTxn` contract (counters in the SQL convention, byte
names, byte-ordered listings, rollback, isolation, read-only refusal, snapshot and restore);
checks of a store's own on-disk layout belong in the plugin's own tests.

Attribute values stay within the narrowest JuiceFS encoding (the Redis attr record): flags and
tier one byte, uid, gid, nlink, rdev and ACL ids four bytes, inodes and lengths signed 64-bit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from volume.errors import MetaStoreError, VolumeIndexCorrupt, VolumeReadOnly
from volume.juicefs import (
    COUNTER_NEXT_CHUNK,
    COUNTER_NEXT_CLEANUP_SLICES,
    COUNTER_NEXT_INODE,
    COUNTER_NEXT_SESSION,
    COUNTER_NEXT_TRASH,
    COUNTER_TOTAL_INODES,
    COUNTER_USED_SPACE,
    DIR_LENGTH,
    ROOT_INODE,
    SLICE_RECORD_SIZE,
    TRASH_INODE,
    TYPE_BLOCKDEV,
    TYPE_CHARDEV,
    TYPE_DIRECTORY,
    TYPE_FIFO,
    TYPE_FILE,
    TYPE_NAMES,
    TYPE_SOCKET,
    TYPE_SYMLINK,
    Attr,
    Format,
    SliceRecord,
)
from volume.stores import MetaStore

__all__ = ["MetaStoreTests", "StoreFactory", "populate", "store_contents"]

#: what a plugin's ``store_factory`` fixture returns
StoreFactory = Callable[..., MetaStore]

#: a format time with a sub-microsecond part (stored as 1795515552202179 us + 500 ns in SQL)
NOW_NS = 1795515552202179500
MAX_INT64 = (1 << 63) - 1
MAX_UINT32 = (1 << 32) - 1

FORMAT_COUNTERS = {
    COUNTER_NEXT_INODE: 2,
    COUNTER_NEXT_CHUNK: 1,
    COUNTER_NEXT_SESSION: 0,
    COUNTER_USED_SPACE: 0,
    COUNTER_TOTAL_INODES: 0,
    COUNTER_NEXT_CLEANUP_SLICES: 0,
}
ALL_COUNTERS = (*FORMAT_COUNTERS, COUNTER_NEXT_TRASH)


def _attr(type: int, mode: int, **fields: Any) -> Attr:
    fields.setdefault("atime_ns", NOW_NS)
    fields.setdefault("mtime_ns", NOW_NS + 1)
    fields.setdefault("ctime_ns", NOW_NS + 999)
    return Attr(type=type, mode=mode, **fields)


def _record(pos: int, slice_id: int, size: int, off: int = 0, length: int | None = None) -> bytes:
    return SliceRecord(pos, slice_id, size, off, size - off if length is None else length).pack()


# (inode, attrs) pairs covering every type, extreme field values and pre-1970 times
ATTR_CASES: list[tuple[int, Attr]] = [
    (2, _attr(TYPE_FILE, 0o644, uid=1000, gid=1000, length=12345, parent=ROOT_INODE)),
    (3, _attr(TYPE_DIRECTORY, 0o755, nlink=3, length=DIR_LENGTH, parent=ROOT_INODE)),
    (4, _attr(TYPE_SYMLINK, 0o777, length=11, parent=3)),
    (5, _attr(TYPE_FIFO, 0o600, parent=3)),
    (6, _attr(TYPE_BLOCKDEV, 0o660, rdev=(8 << 8) | 1, parent=3)),
    (7, _attr(TYPE_CHARDEV, 0o620, rdev=(136 << 8) | 4, parent=3)),
    (8, _attr(TYPE_SOCKET, 0o755, parent=3)),
    (9, _attr(TYPE_FILE, 0o4755, nlink=2, parent=0)),  # hard-linked: parent 0
    (
        MAX_INT64,
        Attr(
            type=TYPE_FILE, mode=0o7777, uid=MAX_UINT32, gid=MAX_UINT32,
            atime_ns=4_102_444_800_123_456_789, mtime_ns=1, ctime_ns=999,
            nlink=MAX_UINT32, length=MAX_INT64, rdev=MAX_UINT32, parent=MAX_INT64,
            flags=255, access_acl=MAX_UINT32, default_acl=MAX_UINT32, tier=255,
        ),
    ),
    (
        TRASH_INODE + 1,
        _attr(TYPE_DIRECTORY, 0o555, atime_ns=-1, mtime_ns=-1_500, ctime_ns=-(10**18) - 1,
              nlink=2, length=DIR_LENGTH, parent=TRASH_INODE, flags=33, access_acl=1,
              default_acl=2, tier=1),
    ),
    (10, _attr(TYPE_FILE, 0, atime_ns=0, mtime_ns=0, ctime_ns=0, nlink=0)),
]  # fmt: skip
ATTR_IDS = [f"{inode}-{TYPE_NAMES[attr.type]}" for inode, attr in ATTR_CASES]
ATTRS = dict(ATTR_CASES)

# every write primitive with arguments, for the read-only checks
WRITE_CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("set_attr", (20, _attr(TYPE_FILE, 0o644))),
    ("delete_attr", (ROOT_INODE,)),
    ("add_entry", (ROOT_INODE, b"new", 20, TYPE_FILE)),
    ("remove_entry", (ROOT_INODE, b"new")),
    ("set_symlink", (20, b"target")),
    ("delete_symlink", (20,)),
    ("set_xattr", (ROOT_INODE, "user.k", b"v")),
    ("remove_xattr", (ROOT_INODE, "user.k")),
    ("delete_xattrs", (ROOT_INODE,)),
    ("append_chunk", (20, 0, _record(0, 1, 100))),
    ("write_chunk", (20, 0, _record(0, 1, 100))),
    ("add_slice_ref", (1, 100, 1)),
    ("add_counter", (COUNTER_NEXT_INODE, 1)),
    ("set_counter", (COUNTER_NEXT_INODE, 100)),
    ("update_dir_stats", (ROOT_INODE, 1, 4096, 1)),
    ("delete_dir_stats", (ROOT_INODE,)),
]


def populate(store: MetaStore) -> None:
    """Write a small namespace with one record of every kind (dirs, files, a hard link, a
    symlink, xattrs, chunks, slice references, counters and dir stats)."""
    with store.transaction(write=True) as txn:
        for inode, attr in ATTR_CASES:
            txn.set_attr(inode, attr)
        txn.add_entry(ROOT_INODE, b"file", 2, TYPE_FILE)
        txn.add_entry(ROOT_INODE, b"dir", 3, TYPE_DIRECTORY)
        for inode, name in ((4, b"link\xff"), (5, b"fifo"), (6, b"blk"), (7, b"chr"), (8, b"s")):
            txn.add_entry(3, name, inode, ATTRS[inode].type)
        txn.add_entry(ROOT_INODE, b"hard", 9, TYPE_FILE)
        txn.add_entry(3, b"hard-too", 9, TYPE_FILE)
        txn.set_symlink(4, b"../fi\xfele")
        txn.set_xattr(2, "user.note", b"\x00binary\xff")
        txn.set_xattr(ROOT_INODE, "user.empty", b"")
        txn.append_chunk(2, 0, _record(0, 11, 12345))
        txn.append_chunk(2, 0, _record(100, 0, 0, 0, 50))
        txn.append_chunk(9, 3, _record(7, 12, 1 << 20, 4096, 8))
        txn.add_slice_ref(11, 12345, 1)
        txn.add_slice_ref(12, 1 << 20, 1)
        txn.set_counter(COUNTER_NEXT_INODE, 11)
        txn.set_counter(COUNTER_NEXT_CHUNK, 13)
        txn.set_counter(COUNTER_USED_SPACE, 123 * 4096)
        txn.set_counter(COUNTER_TOTAL_INODES, 10)
        txn.set_counter(COUNTER_NEXT_TRASH, 1)
        txn.update_dir_stats(ROOT_INODE, 12345, 4 * 4096, 3)
        txn.update_dir_stats(3, 11, 6 * 4096, 6)
        txn.add_sustained(2, 10)


def store_contents(store: MetaStore) -> dict[str, Any]:
    """Everything a store holds, read through the public interface, in a comparable form."""
    with store.transaction() as txn:
        attrs = list(txn.iter_attrs())
        dirs = [inode for inode, attr in attrs if attr.type == TYPE_DIRECTORY]
        contents = {
            "attrs": attrs,
            "entries": {d: [tuple(e) for e in txn.list_entries(d)] for d in dirs},
            "parents": {i: sorted(map(tuple, txn.entry_parents(i))) for i, _ in attrs},
            "symlinks": {i: txn.get_symlink(i) for i, a in attrs if a.type == TYPE_SYMLINK},
            "xattrs": {i: [tuple(x) for x in txn.list_xattrs(i)] for i, _ in attrs},
            "chunks": sorted(tuple(c) for c in txn.iter_chunks()),
            "slice_refs": sorted(tuple(r) for r in txn.slice_refs()),
            "counters": {name: txn.get_counter(name) for name in ALL_COUNTERS},
            "dir_stats": {d: _maybe_tuple(txn.get_dir_stats(d)) for d in dirs},
            "sustained": [tuple(s) for s in txn.sustained()],
        }
    contents["format"] = store.load_format().to_json()
    return contents


def _maybe_tuple(value: Any) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


class StoreOpener:
    """Opens stores through the plugin's factory and closes the ones a test leaves open."""

    def __init__(self, factory: StoreFactory) -> None:
        self._factory = factory
        self._open: list[MetaStore] = []

    def __call__(self, meta_dir: Path, *, read_only: bool = False) -> MetaStore:
        """Open the store kept in ``meta_dir``."""
        store = self._factory(meta_dir, read_only=read_only)
        self._open.append(store)
        return store

    def close(self, store: MetaStore) -> None:
        """Close one store now."""
        self._open.remove(store)
        store.close()

    def close_all(self) -> None:
        """Close every store still open."""
        while self._open:
            self._open.pop().close()


class MetaStoreTests:
    """The metadata-store conformance kit (see the module docstring)."""

    # ------------------------------------------------------------------ fixtures

    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        """``(meta_dir, *, read_only=False) -> MetaStore``; subclasses must override this."""
        raise NotImplementedError(
            "a MetaStoreTests subclass must provide the store_factory fixture"
        )

    @pytest.fixture
    def open_store(self, store_factory: StoreFactory) -> Iterator[StoreOpener]:
        """Opens stores with the plugin's factory; closes them at teardown."""
        opener = StoreOpener(store_factory)
        yield opener
        opener.close_all()

    @pytest.fixture
    def fmt(self) -> Format:
        """The Format the kit formats with (trash enabled, one unknown key kept verbatim)."""
        fmt = Format(
            Name="kit-volume",
            UUID="0b0c4a8e-3f5e-4d8e-9a43-6c1d2e3f4a5b",
            Bucket="/kit/bucket/",
        )
        fmt.values = {"Capacity": 1 << 40, "FutureSetting": "kept"}
        return fmt

    @pytest.fixture
    def meta_dir(self, tmp_path: Path) -> Path:
        """The meta dir of the main store under test."""
        return tmp_path / "meta"

    @pytest.fixture
    def store(self, open_store: StoreOpener, meta_dir: Path, fmt: Format) -> MetaStore:
        """A writable store, formatted with ``fmt`` at ``NOW_NS``."""
        store = open_store(meta_dir)
        store.format(fmt, NOW_NS)
        return store

    @pytest.fixture
    def populated(self, store: MetaStore) -> MetaStore:
        """``store`` with :func:`populate` applied."""
        populate(store)
        return store

    # ------------------------------------------------------------------ format

    def test_fresh_store_is_not_formatted(self, open_store: StoreOpener, tmp_path: Path) -> None:
        store = open_store(tmp_path / "fresh")
        assert not store.is_formatted()
        with pytest.raises(VolumeIndexCorrupt):
            store.load_format()

    def test_format_round_trip(self, store: MetaStore, fmt: Format) -> None:
        assert store.is_formatted()
        loaded = store.load_format()
        assert loaded.to_json() == fmt.to_json()
        assert loaded.values["FutureSetting"] == "kept"

    def test_save_format_replaces_it(self, store: MetaStore, fmt: Format) -> None:
        changed = Format.from_json(fmt.to_json())
        changed.TrashDays = 7
        changed.MinClientVersion = "1.2.0-A"
        store.save_format(changed)
        assert store.load_format().to_json() == changed.to_json()

    def test_format_refuses_a_formatted_store(self, store: MetaStore, fmt: Format) -> None:
        with pytest.raises(MetaStoreError):
            store.format(fmt, NOW_NS)
        assert store.load_format().to_json() == fmt.to_json()

    def test_root_after_format(self, store: MetaStore) -> None:
        with store.transaction() as txn:
            root = txn.get_attr(ROOT_INODE)
            assert not txn.has_entries(ROOT_INODE)
            assert txn.list_entries(ROOT_INODE) == []
            assert txn.entry_parents(ROOT_INODE) == []
        assert root == Attr(
            type=TYPE_DIRECTORY, mode=0o777, uid=0, gid=0,
            atime_ns=NOW_NS, mtime_ns=NOW_NS, ctime_ns=NOW_NS,
            nlink=2, length=DIR_LENGTH, rdev=0, parent=ROOT_INODE,
        )  # fmt: skip

    def test_trash_inode_after_format(self, store: MetaStore) -> None:
        with store.transaction() as txn:
            trash = txn.get_attr(TRASH_INODE)
            assert txn.entry_parents(TRASH_INODE) == []
            assert [inode for inode, _ in txn.iter_attrs()] == [ROOT_INODE, TRASH_INODE]
        assert trash == Attr(
            type=TYPE_DIRECTORY, mode=0o555, uid=0, gid=0,
            atime_ns=NOW_NS, mtime_ns=NOW_NS, ctime_ns=NOW_NS,
            nlink=2, length=DIR_LENGTH, parent=ROOT_INODE,
        )  # fmt: skip

    def test_no_trash_inode_without_trash_days(
        self, open_store: StoreOpener, tmp_path: Path, fmt: Format
    ) -> None:
        fmt.TrashDays = 0
        store = open_store(tmp_path / "no-trash")
        store.format(fmt, NOW_NS)
        with store.transaction() as txn:
            assert txn.get_attr(TRASH_INODE) is None
            assert [inode for inode, _ in txn.iter_attrs()] == [ROOT_INODE]

    def test_counters_after_format_in_sql_convention(self, store: MetaStore) -> None:
        with store.transaction() as txn:
            assert {name: txn.get_counter(name) for name in FORMAT_COUNTERS} == FORMAT_COUNTERS
            assert txn.get_counter(COUNTER_NEXT_TRASH) == 0

    # ------------------------------------------------------------------ attributes

    @pytest.mark.parametrize("inode, attr", ATTR_CASES, ids=ATTR_IDS)
    def test_attr_round_trip(self, store: MetaStore, inode: int, attr: Attr) -> None:
        with store.transaction(write=True) as txn:
            txn.set_attr(inode, attr)
            assert txn.get_attr(inode) == attr
        with store.transaction() as txn:
            assert txn.get_attr(inode) == attr

    def test_set_attr_replaces_every_field(self, store: MetaStore) -> None:
        first, second = ATTRS[2], ATTRS[MAX_INT64]
        with store.transaction(write=True) as txn:
            txn.set_attr(2, first)
            txn.set_attr(2, second)
        with store.transaction() as txn:
            assert txn.get_attr(2) == second

    def test_get_attr_of_missing_inode_is_none(self, store: MetaStore) -> None:
        with store.transaction() as txn:
            assert txn.get_attr(424242) is None

    def test_delete_attr(self, populated: MetaStore) -> None:
        with populated.transaction(write=True) as txn:
            txn.delete_attr(2)
            txn.delete_attr(424242)  # missing: no error
        with populated.transaction() as txn:
            assert txn.get_attr(2) is None
            assert txn.get_attr(3) is not None

    def test_iter_attrs_in_inode_order(self, populated: MetaStore) -> None:
        with populated.transaction() as txn:
            inodes = [inode for inode, _ in txn.iter_attrs()]
            attrs = dict(txn.iter_attrs())
        expected = sorted({ROOT_INODE, TRASH_INODE, *(inode for inode, _ in ATTR_CASES)})
        assert inodes == expected
        assert all(attrs[inode] == attr for inode, attr in ATTR_CASES)

    # ------------------------------------------------------------------ entries

    def test_entry_add_lookup_remove(self, store: MetaStore) -> None:
        with store.transaction(write=True) as txn:
            txn.add_entry(ROOT_INODE, b"a", 2, TYPE_FILE)
            txn.add_entry(ROOT_INODE, b"d", 3, TYPE_DIRECTORY)
            assert tuple(txn.lookup(ROOT_INODE, b"a")) == (2, TYPE_FILE)
            assert tuple(txn.lookup(ROOT_INODE, b"d")) == (3, TYPE_DIRECTORY)
            assert txn.lookup(ROOT_INODE, b"A") is None
            assert txn.lookup(3, b"a") is None
            txn.remove_entry(ROOT_INODE, b"a")
            txn.remove_entry(ROOT_INODE, b"missing")  # no-op
        with store.transaction() as txn:
            assert txn.lookup(ROOT_INODE, b"a") is None
            assert tuple(txn.lookup(ROOT_INODE, b"d")) == (3, TYPE_DIRECTORY)

    def test_entry_names_are_raw_bytes(self, store: MetaStore) -> None:
        names = [b"\xff\xfe", b"caf\xc3\xa9", b"x" * 255, b"\x01ctl", b"sp ace", b"%41", b"\\"]
        with store.transaction(write=True) as txn:
            for inode, name in enumerate(names, start=2):
                txn.add_entry(ROOT_INODE, name, inode, TYPE_FILE)
        with store.transaction() as txn:
            for inode, name in enumerate(names, start=2):
                assert tuple(txn.lookup(ROOT_INODE, name)) == (inode, TYPE_FILE)
            listed = txn.list_entries(ROOT_INODE)
        assert all(type(name) is bytes for name, _, _ in listed)
        assert sorted(name for name, _, _ in listed) == sorted(names)

    def test_list_entries_sorted_by_name_bytes(self, store: MetaStore) -> None:
        names = [b"b", b"a", b"\xff\xfe", b"B", b"ab", b"\xc3\xa9", b"a\x7f", b"0", b"~"]
        with store.transaction(write=True) as txn:
            for inode, name in enumerate(names, start=2):
                txn.add_entry(ROOT_INODE, name, inode, TYPE_FILE)
        with store.transaction() as txn:
            listed = [tuple(entry) for entry in txn.list_entries(ROOT_INODE)]
        inode_of = {name: inode for inode, name in enumerate(names, start=2)}
        assert listed == [(name, inode_of[name], TYPE_FILE) for name in sorted(names)]

    def test_list_entries_pagination(self, store: MetaStore) -> None:
        names = sorted(f"n{i:03d}".encode() for i in range(25))
        with store.transaction(write=True) as txn:
            for inode, name in enumerate(names, start=2):
                txn.add_entry(ROOT_INODE, name, inode, TYPE_FILE)
            txn.add_entry(3, b"elsewhere", 99, TYPE_FILE)
        pages: list[list[bytes]] = []
        after = None
        with store.transaction() as txn:
            while page := [e[0] for e in txn.list_entries(ROOT_INODE, after=after, limit=7)]:
                pages.append(page)
                after = page[-1]
            assert [e[0] for e in txn.list_entries(ROOT_INODE, after=b"n0105")] == names[11:]
            assert [e[0] for e in txn.list_entries(ROOT_INODE, after=b"")] == names
            assert txn.list_entries(ROOT_INODE, limit=0) == []
            assert txn.list_entries(ROOT_INODE, after=names[-1]) == []
        assert [len(page) for page in pages] == [7, 7, 7, 4]
        assert [name for page in pages for name in page] == names

    def test_has_entries(self, store: MetaStore) -> None:
        with store.transaction(write=True) as txn:
            assert not txn.has_entries(3)
            txn.add_entry(3, b"child", 4, TYPE_FILE)
            assert txn.has_entries(3)
            txn.remove_entry(3, b"child")
            assert not txn.has_entries(3)

    def test_entry_parents_of_hard_links(self, store: MetaStore) -> None:
        with store.transaction(write=True) as txn:
            txn.add_entry(ROOT_INODE, b"x", 5, TYPE_FILE)
            txn.add_entry(3, b"y", 5, TYPE_FILE)
            txn.add_entry(ROOT_INODE, b"z\xff", 5, TYPE_FILE)
            txn.add_entry(ROOT_INODE, b"other", 6, TYPE_FILE)
        with store.transaction() as txn:
            parents = sorted(tuple(p) for p in txn.entry_parents(5))
            assert txn.entry_parents(7) == []
        assert parents == [(ROOT_INODE, b"x"), (ROOT_INODE, b"z\xff"), (3, b"y")]

    # ------------------------------------------------------------------ symlinks

    def test_symlink_targets_are_raw_bytes(self, store: MetaStore) -> None:
        long_target = b"/".join([b"d" * 254] * 16)[:4096]
        with store.transaction(write=True) as txn:
            txn.set_symlink(4, b"../\xff\xfe/target")
            txn.set_symlink(5, long_target)
        with store.transaction(write=True) as txn:
            assert txn.get_symlink(4) == b"../\xff\xfe/target"
            assert txn.get_symlink(5) == long_target
            assert txn.get_symlink(6) is None
            txn.set_symlink(4, b"replaced")
            txn.delete_symlink(5)
        with store.transaction() as txn:
            assert txn.get_symlink(4) == b"replaced"
            assert txn.get_symlink(5) is None

    # ------------------------------------------------------------------ xattrs

    def test_xattrs(self, store: MetaStore) -> None:
        with store.transaction(write=True) as txn:
            txn.set_xattr(2, "user.b", b"\x00\xff binary")
            txn.set_xattr(2, "user.a", b"")
            txn.set_xattr(2, "trusted.\u00e9", b"accent")
            txn.set_xattr(3, "user.a", b"other inode")
        with store.transaction(write=True) as txn:
            assert txn.get_xattr(2, "user.b") == b"\x00\xff binary"
            assert txn.get_xattr(2, "user.a") == b""
            assert txn.get_xattr(2, "user.missing") is None
            assert [tuple(x) for x in txn.list_xattrs(2)] == [
                ("trusted.\u00e9", b"accent"),
                ("user.a", b""),
                ("user.b", b"\x00\xff binary"),
            ]
            txn.set_xattr(2, "user.a", b"replaced")
            assert txn.remove_xattr(2, "user.b") is True
            assert txn.remove_xattr(2, "user.b") is False
        with store.transaction(write=True) as txn:
            assert [x[0] for x in txn.list_xattrs(2)] == ["trusted.\u00e9", "user.a"]
            assert txn.get_xattr(2, "user.a") == b"replaced"
            txn.delete_xattrs(2)
        with store.transaction() as txn:
            assert txn.list_xattrs(2) == []
            assert [tuple(x) for x in txn.list_xattrs(3)] == [("user.a", b"other inode")]

    # ------------------------------------------------------------------ chunks

    def test_append_chunk_keeps_order_and_counts_records(self, store: MetaStore) -> None:
        first = _record(0, 1, 4096)
        hole = _record(10, 0, 0, 0, 20)  # a hole record: mostly NUL bytes
        pair = _record(0, 2, 8) + _record(8, 3, 1 << 20, 4096, 100)
        with store.transaction(write=True) as txn:
            assert txn.append_chunk(2, 0, first) == 1
            assert txn.append_chunk(2, 0, hole) == 2
            assert txn.append_chunk(2, 0, pair) == 4
            assert txn.append_chunk(2, 1, hole) == 1
        with store.transaction() as txn:
            assert txn.read_chunk(2, 0) == first + hole + pair
            assert txn.read_chunk(2, 1) == hole
            assert len(txn.read_chunk(2, 0)) == 4 * SLICE_RECORD_SIZE

    def test_read_missing_chunk_is_empty(self, store: MetaStore) -> None:
        with store.transaction() as txn:
            assert txn.read_chunk(2, 0) == b""
            assert txn.chunk_indexes(2) == []

    def test_write_chunk_replaces_and_empty_deletes(self, store: MetaStore) -> None:
        with store.transaction(write=True) as txn:
            txn.append_chunk(2, 0, _record(0, 1, 10) + _record(10, 2, 10))
            txn.write_chunk(2, 0, _record(0, 3, 20))
            txn.write_chunk(2, 5, _record(0, 4, 20))
            assert txn.read_chunk(2, 0) == _record(0, 3, 20)
            assert txn.append_chunk(2, 0, _record(0, 0, 0, 0, 5)) == 2
            txn.write_chunk(2, 5, b"")
            txn.write_chunk(2, 6, b"")  # missing: no error
        with store.transaction() as txn:
            assert txn.read_chunk(2, 0) == _record(0, 3, 20) + _record(0, 0, 0, 0, 5)
            assert txn.read_chunk(2, 5) == b""
            assert txn.chunk_indexes(2) == [0]

    def test_chunk_indexes_ascending(self, store: MetaStore) -> None:
        with store.transaction(write=True) as txn:
            for indx in (7, 0, 3, 1 << 30):
                txn.append_chunk(2, indx, _record(0, indx + 1, 10))
            txn.append_chunk(3, 2, _record(0, 99, 10))
        with store.transaction() as txn:
            assert txn.chunk_indexes(2) == [0, 3, 7, 1 << 30]
            assert txn.chunk_indexes(3) == [2]

    def test_iter_chunks(self, store: MetaStore) -> None:
        rows = {(2, 0): _record(0, 1, 10), (2, 4): _record(0, 2, 10) * 2, (9, 1): _record(5, 3, 9)}
        with store.transaction(write=True) as txn:
            for (inode, indx), records in rows.items():
                txn.append_chunk(inode, indx, records)
        with store.transaction() as txn:
            listed = {(inode, indx): records for inode, indx, records in txn.iter_chunks()}
        assert listed == rows

    # ------------------------------------------------------------------ slice references

    def test_slice_refs(self, store: MetaStore) -> None:
        with store.transaction(write=True) as txn:
            assert txn.add_slice_ref(10, 4096, 1) == 1
            assert txn.add_slice_ref(10, 4096, 2) == 3
            assert txn.add_slice_ref(10, 4096, -3) == 0
            assert txn.add_slice_ref(10, 4096, -1) == -1
            assert txn.add_slice_ref(MAX_INT64, 1 << 26, 1) == 1
            assert txn.add_slice_ref(11, 100, 0) == 0
        with store.transaction() as txn:
            refs = sorted(tuple(r) for r in txn.slice_refs())
        assert refs == [(10, 4096, -1), (11, 100, 0), (MAX_INT64, 1 << 26, 1)]

    # ------------------------------------------------------------------ counters

    def test_counters(self, store: MetaStore) -> None:
        with store.transaction(write=True) as txn:
            assert txn.get_counter("neverWritten") == 0
            assert txn.add_counter("fresh", 5) == 5
            assert txn.add_counter("fresh", -2) == 3
            assert txn.add_counter(COUNTER_NEXT_INODE, 1024) == 1026
            assert txn.add_counter(COUNTER_NEXT_CHUNK, 4096) == 4097
            txn.set_counter(COUNTER_NEXT_SESSION, 7)
            txn.set_counter("fresh", 1 << 62)
        with store.transaction() as txn:
            assert txn.get_counter("fresh") == 1 << 62
            assert txn.get_counter(COUNTER_NEXT_INODE) == 1026
            assert txn.get_counter(COUNTER_NEXT_CHUNK) == 4097
            assert txn.get_counter(COUNTER_NEXT_SESSION) == 7

    # ------------------------------------------------------------------ sustained inodes

    def test_sustained_inodes(self, store: MetaStore) -> None:
        with store.transaction(write=True) as txn:
            assert txn.sustained() == []
            txn.add_sustained(7, 40)
            txn.add_sustained(3, 41)
            txn.add_sustained(7, 12)
            txn.add_sustained(7, 40)  # again: no second record
            txn.add_sustained(MAX_INT64, MAX_INT64)
        with store.transaction(write=True) as txn:
            assert txn.sustained() == [(3, 41), (7, 40), (7, 12), (MAX_INT64, MAX_INT64)]
            txn.remove_sustained(7, 40)
            txn.remove_sustained(7, 99)  # missing: no error
            txn.remove_sustained(3, 12)  # another session's inode: untouched
        with store.transaction() as txn:
            assert [tuple(s) for s in txn.sustained()] == [(3, 41), (7, 12), (MAX_INT64, MAX_INT64)]

    # ------------------------------------------------------------------ dir stats

    def test_dir_stats_add_deltas(self, store: MetaStore) -> None:
        with store.transaction(write=True) as txn:
            assert txn.get_dir_stats(3) is None
            txn.update_dir_stats(3, 100, 4096, 1)
            txn.update_dir_stats(3, 50, 8192, 2)
            txn.update_dir_stats(3, -30, -4096, -1)
            txn.update_dir_stats(4, 0, 0, 0)
        with store.transaction(write=True) as txn:
            assert tuple(txn.get_dir_stats(3)) == (120, 8192, 2)
            assert tuple(txn.get_dir_stats(4)) == (0, 0, 0)
            txn.delete_dir_stats(3)
            txn.delete_dir_stats(5)  # missing: no error
        with store.transaction() as txn:
            assert txn.get_dir_stats(3) is None

    # ------------------------------------------------------------------ transactions

    def test_rollback_on_exception_leaves_nothing(self, populated: MetaStore) -> None:
        before = store_contents(populated)
        failure = RuntimeError("boom")
        with pytest.raises(RuntimeError) as raised, populated.transaction(write=True) as txn:
            txn.set_attr(50, _attr(TYPE_FILE, 0o600))
            txn.set_attr(2, _attr(TYPE_FILE, 0o000))
            txn.add_entry(ROOT_INODE, b"doomed", 50, TYPE_FILE)
            txn.remove_entry(ROOT_INODE, b"file")
            txn.set_symlink(50, b"t")
            txn.set_xattr(50, "user.k", b"v")
            txn.append_chunk(2, 0, _record(0, 99, 1))
            txn.add_slice_ref(99, 1, 1)
            txn.add_counter(COUNTER_NEXT_INODE, 1024)
            txn.update_dir_stats(ROOT_INODE, 1, 1, 1)
            raise failure
        assert raised.value is failure
        assert store_contents(populated) == before

    def test_read_transaction_sees_committed_data(self, store: MetaStore) -> None:
        with store.transaction(write=True) as txn:
            txn.add_entry(ROOT_INODE, b"committed", 2, TYPE_FILE)
        with store.transaction() as txn:
            assert tuple(txn.lookup(ROOT_INODE, b"committed")) == (2, TYPE_FILE)

    @pytest.mark.parametrize("method, args", WRITE_CALLS, ids=[c[0] for c in WRITE_CALLS])
    def test_write_in_read_transaction_raises(
        self, populated: MetaStore, method: str, args: tuple[Any, ...]
    ) -> None:
        before = store_contents(populated)
        with pytest.raises(VolumeReadOnly), populated.transaction() as txn:
            getattr(txn, method)(*args)
        assert store_contents(populated) == before

    def test_read_only_store_refuses_writes(
        self, populated: MetaStore, open_store: StoreOpener, meta_dir: Path, fmt: Format
    ) -> None:
        before = store_contents(populated)
        open_store.close(populated)
        read_only = open_store(meta_dir, read_only=True)
        with pytest.raises(VolumeReadOnly), read_only.transaction(write=True) as txn:
            txn.set_counter(COUNTER_NEXT_INODE, 1)
        with pytest.raises(VolumeReadOnly):
            read_only.save_format(fmt)
        with pytest.raises(VolumeReadOnly), read_only.transaction() as txn:
            txn.add_entry(ROOT_INODE, b"new", 20, TYPE_FILE)
        assert store_contents(read_only) == before

    def test_threads_never_see_a_half_done_transaction(self, store: MetaStore) -> None:
        """Writers move two counters together; readers on other threads must see them equal."""

        def write() -> None:
            for _ in range(100):
                with store.transaction(write=True) as txn:
                    txn.add_counter("left", 1)
                    txn.add_counter("right", 1)

        def read() -> None:
            for _ in range(200):
                with store.transaction() as txn:
                    left = txn.get_counter("left")
                    right = txn.get_counter("right")
                assert left == right, f"saw left={left} right={right}"

        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(work) for work in (write, write, read, read)]
        for future in futures:
            future.result()  # re-raises a thread's failure here
        with store.transaction() as txn:
            assert (txn.get_counter("left"), txn.get_counter("right")) == (200, 200)

    # ------------------------------------------------------------------ persistence

    def test_reopen_keeps_everything(
        self, populated: MetaStore, open_store: StoreOpener, meta_dir: Path
    ) -> None:
        before = store_contents(populated)
        open_store.close(populated)
        assert store_contents(open_store(meta_dir)) == before

    @pytest.mark.parametrize(
        "options", [{}, {"verified": True}, {"verified": True, "move": True}],
        ids=["copied", "verified", "verified-moved"],
    )  # fmt: skip
    def test_snapshot_then_restore_yields_identical_data(
        self, populated: MetaStore, open_store: StoreOpener, tmp_path: Path, options: dict
    ) -> None:
        """Also with ``verified=True`` (the file matched its recorded hash) and ``move=True``
        (the caller gives the file up: it is renamed into place, or copied then removed)."""
        before = store_contents(populated)
        index = tmp_path / "published" / populated.index_filename
        index.parent.mkdir()
        size = populated.snapshot(index)
        assert size == index.stat().st_size > 0
        assert store_contents(populated) == before  # the source is untouched
        restored_dir = tmp_path / "restored"
        type(populated).restore(index, restored_dir, **options)
        assert index.exists() != options.get("move", False)
        assert store_contents(open_store(restored_dir, read_only=True)) == before

    def test_restored_store_is_writable_and_independent(
        self, populated: MetaStore, open_store: StoreOpener, tmp_path: Path
    ) -> None:
        index = tmp_path / "index"
        populated.snapshot(index)
        type(populated).restore(index, tmp_path / "fork")
        fork = open_store(tmp_path / "fork")
        with fork.transaction(write=True) as txn:
            txn.add_entry(ROOT_INODE, b"only-in-fork", 2, TYPE_FILE)
        with populated.transaction() as txn:
            assert txn.lookup(ROOT_INODE, b"only-in-fork") is None

    def test_restore_replaces_an_existing_store(
        self, populated: MetaStore, open_store: StoreOpener, tmp_path: Path, fmt: Format
    ) -> None:
        index = tmp_path / "index"
        populated.snapshot(index)
        expected = store_contents(populated)
        target = tmp_path / "target"
        other = open_store(target)
        other.format(fmt, NOW_NS + 1)
        open_store.close(other)
        type(populated).restore(index, target)
        assert store_contents(open_store(target)) == expected

    def test_snapshot_of_a_read_only_store(
        self, populated: MetaStore, open_store: StoreOpener, meta_dir: Path, tmp_path: Path
    ) -> None:
        before = store_contents(populated)
        open_store.close(populated)
        read_only = open_store(meta_dir, read_only=True)
        read_only.snapshot(tmp_path / "index")
        type(read_only).restore(tmp_path / "index", tmp_path / "restored")
        assert store_contents(open_store(tmp_path / "restored", read_only=True)) == before

    @pytest.mark.parametrize("damage", ["empty", "random", "missing"])
    def test_verified_restore_still_refuses_a_file_of_another_kind(
        self, populated: MetaStore, tmp_path: Path, damage: str
    ) -> None:
        """A verified restore may skip scans for damage, not the check of what the file is."""
        index = tmp_path / "index"
        if damage != "missing":
            index.write_bytes(b"" if damage == "empty" else os.urandom(1 << 16))
        with pytest.raises(VolumeIndexCorrupt):
            type(populated).restore(index, tmp_path / "restored", verified=True)
        assert not (tmp_path / "restored" / populated.index_filename).exists()

    @pytest.mark.parametrize("damage", ["empty", "random", "truncated", "missing"])
    def test_restore_of_a_corrupt_index_raises(
        self, populated: MetaStore, tmp_path: Path, damage: str
    ) -> None:
        index = tmp_path / "index"
        populated.snapshot(index)
        good = index.read_bytes()
        if damage == "missing":
            index.unlink()
        else:
            index.write_bytes(
                {
                    "empty": b"",
                    "random": os.urandom(len(good)),
                    "truncated": good[: len(good) // 2],
                }[damage]
            )
        restored_dir = tmp_path / "restored"
        with pytest.raises(VolumeIndexCorrupt):
            type(populated).restore(index, restored_dir)
        assert not (restored_dir / populated.index_filename).exists()
