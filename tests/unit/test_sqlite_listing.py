"""The SQLite store's paged listing with attributes and its xattr questions, against the
generic answers of the store interface (what other stores give)."""

from __future__ import annotations

from pathlib import Path

from volume_sqlite import SQLiteMetaStore

from volume.juicefs import ROOT_INODE, TYPE_FILE, Attr, Format
from volume.stores import MetaTxn


def _store(tmp_path: Path) -> SQLiteMetaStore:
    store = SQLiteMetaStore.open(tmp_path / "meta")
    store.format(Format(Name="listing", UUID="0b0c4a8e-3f5e-4d8e-9a43-6c1d2e3f4a5b"), 0)
    with store.transaction(write=True) as tx:
        for i in range(50):
            ino = 100 + i
            if i != 7:  # an entry without an attributes row
                tx.set_attr(ino, Attr(type=TYPE_FILE, mode=0o644, length=i, parent=ROOT_INODE))
            tx.add_entry(ROOT_INODE, b"f%02d" % (49 - i), ino, TYPE_FILE)
        # times before 1970 and far ahead, which SQLite turns into nanoseconds for the listing
        tx.set_attr(101, Attr(type=TYPE_FILE, mode=0o600, atime_ns=-1, mtime_ns=-1_500,
                              ctime_ns=4_102_444_800_123_456_789, length=1, parent=ROOT_INODE))
        tx.set_xattr(103, "user.a", b"1")
        tx.set_xattr(103, "user.b", b"2")
        tx.set_xattr(140, "user.a", b"")
    return store


def test_paged_listing_with_attributes_matches_the_generic_one(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with store.transaction() as tx:
        whole = tx.list_entries_attrs(ROOT_INODE)
        assert [n for n, *_ in whole] == sorted(b"f%02d" % i for i in range(50))
        assert [a is None for n, i, t, a in whole].count(True) == 1
        assert whole == MetaTxn.list_entries_attrs(tx, ROOT_INODE)
        assert whole[48][3] == tx.get_attr(101) and whole[48][3].mtime_ns == -1_500
        pages, after = [], None
        while True:
            page = tx.list_entries_attrs(ROOT_INODE, after=after, limit=7)
            assert page == MetaTxn.list_entries_attrs(tx, ROOT_INODE, after, 7)
            pages += page
            if len(page) < 7:
                break
            after = page[-1][0]
        assert pages == whole
        assert tx.list_entries_attrs(ROOT_INODE, after=b"f45") == whole[46:]
        assert tx.list_entries_attrs(ROOT_INODE, limit=0) == []
    store.close()


def test_which_inodes_have_xattrs(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with store.transaction() as tx:
        inodes = list(range(95, 160))
        assert tx.inodes_with_xattrs(inodes) == {103, 140}
        assert tx.inodes_with_xattrs(inodes) == MetaTxn.inodes_with_xattrs(tx, inodes)
        assert tx.inodes_with_xattrs([]) == set() and tx.inodes_with_xattrs([104]) == set()
        assert tx.any_xattrs()
    with store.transaction(write=True) as tx:
        tx.delete_xattrs(103)
        tx.delete_xattrs(140)
    with store.transaction() as tx:
        assert not tx.any_xattrs()
        assert MetaTxn.any_xattrs(tx)  # the generic answer cannot tell: "maybe"
    store.close()
