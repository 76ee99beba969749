"""A SQLite snapshot is pinned in place before it is published (``edit_snapshot``).

Pinning it through a restored scratch copy read every page twice more (the restore's
``quick_check``, then a second snapshot): 3 of the 5 s a commit of a million files took. In
place it must give the same file, be one self-contained file in rollback-journal mode after,
leave the live store as it was, and leave the staged file as it was when the edit fails.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from volume_sqlite import SQLiteMetaStore

from volume.juicefs import COUNTER_NEXT_CHUNK, Format
from volume.pins import FOREIGN_CHUNK, SLICE_PIN, pin_records, pin_snapshot
from volume.testing.metastore import NOW_NS

#: slice id -> references before pinning; the last is pinned already and must stay as it is
REFS = {7: 1, 8: 2, 9: 0, 10: SLICE_PIN + 3}
PINNED = {7: SLICE_PIN + 1, 8: SLICE_PIN + 2, 9: SLICE_PIN, 10: SLICE_PIN + 3}


@pytest.fixture
def live(tmp_path: Path) -> Iterator[SQLiteMetaStore]:
    store = SQLiteMetaStore.open(tmp_path / "meta")
    store.format(Format(Name="v", UUID="b41f0564-563c-43ec-b168-7a11e41b5368"), NOW_NS)
    with store.transaction(write=True) as tx:
        for slice_id, refs in REFS.items():
            tx.add_slice_ref(slice_id, 4096, refs)
        tx.set_counter(COUNTER_NEXT_CHUNK, 5 << 42)
    yield store
    store.close()


def refs_and_next_chunk(path: Path) -> tuple[dict[int, int], int]:
    store = SQLiteMetaStore.open(path.parent, read_only=True)
    try:
        with store.transaction() as tx:
            return (
                {slice_id: refs for slice_id, _, refs in tx.slice_refs()},
                tx.get_counter(COUNTER_NEXT_CHUNK),
            )
    finally:
        store.close()


def dump(path: Path) -> list[str]:
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
        return list(conn.iterdump())


def side_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_in_place_pins_give_what_a_scratch_copy_gives(
    live: SQLiteMetaStore, tmp_path: Path
) -> None:
    (tmp_path / "in-place").mkdir()
    (tmp_path / "scratch").mkdir()
    in_place = tmp_path / "in-place" / "meta.db"
    scratch = tmp_path / "scratch" / "meta.db"
    live.snapshot(in_place)
    live.snapshot(scratch)
    inode = in_place.stat().st_ino

    size = pin_snapshot(live, in_place)  # the live store offers edit_snapshot
    pin_snapshot(SQLiteMetaStore, scratch)  # a class does not: restored, pinned, snapshotted

    assert in_place.stat().st_ino == inode  # edited, not replaced by a second snapshot
    assert size == in_place.stat().st_size
    assert refs_and_next_chunk(in_place) == (PINNED, FOREIGN_CHUNK)
    assert dump(in_place) == dump(scratch)
    # one file, in rollback-journal mode (header bytes 18-19 are 1; WAL mode has 2)
    assert side_files(in_place) == []
    assert in_place.read_bytes()[18:20] == b"\x01\x01"
    with live.transaction() as tx:  # the live store is not changed
        assert {slice_id: refs for slice_id, _, refs in tx.slice_refs()} == REFS
        assert tx.get_counter(COUNTER_NEXT_CHUNK) == 5 << 42


def test_a_failed_edit_leaves_the_staged_file_as_it_was(
    live: SQLiteMetaStore, tmp_path: Path
) -> None:
    staged = tmp_path / "staged" / "meta.db"
    staged.parent.mkdir()
    live.snapshot(staged)
    before = staged.read_bytes()

    with pytest.raises(RuntimeError, match="mid-edit"):
        with live.edit_snapshot(staged) as edited:
            with edited.transaction(write=True) as tx:
                assert pin_records(tx) == 3
                raise RuntimeError("mid-edit")

    assert staged.read_bytes() == before
    assert side_files(staged) == []
    assert refs_and_next_chunk(staged) == (REFS, 5 << 42)
