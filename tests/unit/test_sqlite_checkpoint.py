"""A writable SQLite store checkpoints its WAL on a thread and connection of its own, and syncs
outside its lock.

A checkpoint fsyncs the WAL and the database file. Run inside a ``COMMIT`` (SQLite's automatic
checkpoint), it held the store's one lock, and so every other metadata call of a mount, for
those fsyncs. These tests read the files with plain ``sqlite3`` to see who wrote what.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from volume_sqlite import SQLiteMetaStore
from volume_sqlite._checkpoint import CHANGES_PER_CHECKPOINT, INLINE_PAGES

from volume.juicefs import TYPE_FILE, Attr, Format
from volume.testing.metastore import NOW_NS

from tests.unit.test_engine_concurrency import run_threads

FIRST, LAST = 1000, 1 << 40  # the inodes the tests write, clear of the root and the trash
OURS = "SELECT inode FROM jfs_node WHERE inode BETWEEN ? AND ?"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteMetaStore]:
    store = SQLiteMetaStore.open(tmp_path / "meta")
    store.format(Format(Name="v", UUID="b41f0564-563c-43ec-b168-7a11e41b5368"), NOW_NS)
    yield store
    store.close()


def db_file(store: SQLiteMetaStore) -> Path:
    return Path(store._db_path)


def write_files(store: SQLiteMetaStore, inodes: range) -> None:
    """One write transaction per inode (each writes at least one WAL page)."""
    for inode in inodes:
        with store.transaction(write=True) as txn:
            txn.set_attr(inode, Attr(type=TYPE_FILE, mode=0o644, length=inode, nlink=1))


def in_database_file(path: Path) -> set[int]:
    """The test's inodes found in the database file itself, ignoring its WAL."""
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)) as conn:
        return {row[0] for row in conn.execute(OURS, (FIRST, LAST))}


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("checkpoint:")]


def test_commits_never_write_the_database_file_themselves(
    store: SQLiteMetaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the inline bound, only the checkpointer copies the WAL into the file: with it held
    back, thousands of commits (SQLite's own default would checkpoint at 1,000 pages) leave the
    database file byte for byte as it was."""
    assert store._checkpointer is not None
    monkeypatch.setattr(store._checkpointer, "committed", lambda total_changes: None)
    path = db_file(store)
    write_files(store, range(FIRST, FIRST + 1))
    before = hashlib.md5(path.read_bytes()).hexdigest()
    write_files(store, range(FIRST + 1, FIRST + 3000))
    assert hashlib.md5(path.read_bytes()).hexdigest() == before
    with closing(sqlite3.connect(path)) as conn:
        assert len(conn.execute(OURS, (FIRST, LAST)).fetchall()) == 3000  # through the WAL
        assert conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] >= 3000  # WAL pages
    with store.transaction() as txn:
        assert txn.get_attr(FIRST + 2999).length == FIRST + 2999  # type: ignore[union-attr]


def test_the_checkpointer_copies_the_wal_into_the_file(store: SQLiteMetaStore) -> None:
    """The commit that brings the changes to :data:`CHANGES_PER_CHECKPOINT` starts the
    checkpointer's thread, which copies the WAL into the database file.

    The file is read on its own (``immutable=1`` ignores the WAL) only after a complete
    checkpoint: one that copied part of the WAL, with writes going on, leaves pages of different
    moments in the file, which only the WAL beside it makes whole. So the last write here is
    the one that asks for the checkpoint."""
    assert store._checkpointer is not None
    with store._lock:
        base = store._conn.total_changes  # the format's rows count too
    count = CHANGES_PER_CHECKPOINT - base
    write_files(store, range(FIRST, FIRST + count - 1))
    assert not checkpoint_threads()  # a store that changed less never starts it
    write_files(store, range(FIRST + count - 1, FIRST + count))
    wait_for(lambda: store._checkpointer.done >= 1, "a background checkpoint")  # type: ignore
    assert len(checkpoint_threads()) == 1
    assert in_database_file(db_file(store)) == set(range(FIRST, FIRST + count))
    with closing(sqlite3.connect(db_file(store))) as conn:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000  # a new connection
    with store._lock:
        inline = store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    assert inline == INLINE_PAGES


def test_many_threads_commit_while_checkpoints_run(store: SQLiteMetaStore) -> None:
    """Four threads commit 12,000 changes while checkpoints run beside them: every change is
    there, the file is intact, the WAL stayed bounded, and closing removes the WAL and the
    thread."""
    path = db_file(store)
    wal = Path(f"{path}-wal")
    per_thread, biggest = 3000, [0]

    def writer(index: int) -> None:
        start = FIRST + index * per_thread
        for at in range(start, start + per_thread, 100):
            write_files(store, range(at, at + 100))
            biggest[0] = max(biggest[0], wal.stat().st_size)

    run_threads([functools.partial(writer, i) for i in range(4)], limit=120)
    assert store._checkpointer is not None and store._checkpointer.done >= 1
    page_size = 4096
    assert biggest[0] <= (INLINE_PAGES + 100) * (page_size + 24)  # frames carry a 24-byte header
    with store.transaction() as txn:
        attrs = [txn.get_attr(i) for i in range(FIRST, FIRST + 4 * per_thread)]
    assert [a.length if a else None for a in attrs] == list(range(FIRST, FIRST + 4 * per_thread))
    store.close()
    assert not checkpoint_threads()
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
    assert in_database_file(path) == set(range(FIRST, FIRST + 4 * per_thread))
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_closing_while_a_checkpoint_runs_loses_nothing(tmp_path: Path) -> None:
    """Close right after asking for checkpoints, over and over: every close waits for the
    running one, removes the WAL and leaves every change in the file."""
    for round_ in range(5):
        store = SQLiteMetaStore.open(tmp_path / "meta")
        if round_ == 0:
            store.format(Format(Name="v", UUID="b41f0564-563c-43ec-b168-7a11e41b5368"), NOW_NS)
        start = FIRST + round_ * CHANGES_PER_CHECKPOINT * 2
        write_files(store, range(start, start + CHANGES_PER_CHECKPOINT * 2))
        store.close()
        assert not checkpoint_threads()
        path = tmp_path / "meta" / "meta.db"
        assert not Path(f"{path}-wal").exists()
        assert max(in_database_file(path)) == start + CHANGES_PER_CHECKPOINT * 2 - 1


def test_a_read_only_store_has_no_checkpointer(store: SQLiteMetaStore, tmp_path: Path) -> None:
    write_files(store, range(FIRST, FIRST + 10))
    store.close()
    with closing(SQLiteMetaStore.open(tmp_path / "meta", read_only=True)) as reader:
        assert reader._checkpointer is None
        with reader.transaction() as txn:
            assert txn.get_attr(FIRST + 9) is not None


def test_sync_does_not_wait_for_other_transactions(store: SQLiteMetaStore) -> None:
    """``sync`` (fsync(2) in a mount, every id-batch refill) fsyncs outside the store's lock: a
    transaction held open by another thread does not hold it up, nor does it hold them up."""
    write_files(store, range(FIRST, FIRST + 10))
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.transaction(write=True) as txn:
            txn.set_attr(FIRST + 10, Attr(type=TYPE_FILE, mode=0o644, nlink=1))
            inside.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(10)
        synced = threading.Event()
        syncer = threading.Thread(target=lambda: (store.sync(), synced.set()))
        syncer.start()
        assert synced.wait(10), "sync waited for another thread's transaction"
    finally:
        release.set()
        holder.join()
    syncer.join()
