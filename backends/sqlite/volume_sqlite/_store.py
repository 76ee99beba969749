"""``SQLiteMetaStore``: one volume's namespace in a JuiceFS v1.4 SQLite metadata database.

The live database is ``<meta_dir>/meta.db`` in WAL mode (as the JuiceFS client keeps it). A
snapshot is a single self-contained file in rollback-journal mode, so it can be uploaded as is,
opened read-only without side files and mounted by the JuiceFS client.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

from volume.errors import MetaStoreError, VolumeIndexCorrupt, VolumeReadOnly
from volume.juicefs import (
    COUNTER_NEXT_INODE,
    DIR_LENGTH,
    ROOT_INODE,
    TRASH_INODE,
    TYPE_DIRECTORY,
    Attr,
    Format,
)
from volume.stores import MetaStore, MetaStoreCapabilities, parse_stored_format, place_file

from ._checkpoint import INLINE_PAGES, Checkpointer
from ._schema import FORMAT_COUNTERS, JUICEFS_SCHEMA
from ._txn import GET_ATTR, SQLiteTxn, _attr_from_row, translate_error

INDEX_FILENAME = "meta.db"

_BUSY_TIMEOUT_S = 5.0  # what the JuiceFS client waits for a lock held by another process
# synchronous=NORMAL in WAL mode: commits do not fsync, yet a crash never corrupts the file (it
# may only lose the latest transactions). Committed versions are snapshots, fsynced on their own.
# Checkpoints run beside the store's lock (see _checkpoint.py); the connection's own only bounds
# the WAL.
_WRITABLE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA cache_size=-65536",  # up to 64 MiB of page cache, allocated only as used
    f"PRAGMA wal_autocheckpoint={INLINE_PAGES}",
)
# schema_version reads the header, so a file that is no database fails at open, not later
_READ_ONLY_PRAGMAS = ("PRAGMA schema_version", "PRAGMA cache_size=-65536")
# a staged snapshot edited before its upload (edit_snapshot): it stays one file in
# rollback-journal mode; nothing to fsync, since a crash discards the staged file anyway
_STAGED_PRAGMAS = (
    "PRAGMA schema_version",
    "PRAGMA journal_mode=DELETE",
    "PRAGMA synchronous=OFF",
    "PRAGMA cache_size=-65536",
)

_SCHEMA_OBJECT_COUNT = "SELECT count(*) FROM sqlite_master"
_HAS_SETTING_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jfs_setting'"
_GET_FORMAT = "SELECT value FROM jfs_setting WHERE name = 'format'"
_SET_FORMAT = (
    "INSERT INTO jfs_setting (name, value) VALUES ('format', ?) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)
_TO_ROLLBACK_JOURNAL = "PRAGMA journal_mode=DELETE"
_QUICK_CHECK = "PRAGMA quick_check"

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100
_SIDE_FILE_SUFFIXES = ("-wal", "-shm", "-journal")


class SQLiteMetaStore(MetaStore):
    """A JuiceFS SQLite metadata database, used through one connection shared by all threads.

    Transactions are serialised by a lock held for their whole duration, so a read transaction
    never observes a write transaction half done. Open it with :meth:`open`.
    """

    name = "sqlite"
    capabilities = MetaStoreCapabilities(embedded=True, juicefs_compatible=True)
    index_filename = INDEX_FILENAME

    def __init__(
        self, db_path: Path, conn: sqlite3.Connection, read_only: bool, *, wal: bool = True
    ) -> None:
        """Wrap an open connection; use :meth:`open` instead. ``wal``: the connection is in
        WAL mode (a writable one then gets a checkpointer)."""
        self._db_path = db_path
        self._conn = conn
        self._read_only = read_only
        self._lock = threading.RLock()
        self._synced_db: tuple[int, int] | None = None  # (mtime, size) at the last sync
        self._checkpointer = None if read_only or not wal else Checkpointer(db_path)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, meta_dir: str | Path, *, read_only: bool = False) -> SQLiteMetaStore:
        """Open ``<meta_dir>/meta.db``; a writable open creates the directory and an empty database.

        A read-only open never writes the database file: it uses SQLite's read-only mode, and
        for a file that nobody has open (no ``-wal`` or ``-journal`` file) it also declares the
        file immutable: SQLite creates no ``-wal``/``-shm`` side files and takes no file locks.
        Nobody may change the file while a read-only store has it open.
        """
        db_path = Path(meta_dir) / cls.index_filename
        if read_only and not db_path.is_file():
            raise MetaStoreError(
                f"there is no metadata database at {db_path}; restore the volume's index into "
                f"{meta_dir} first"
            )
        if not read_only:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        return cls._connect(db_path, read_only)

    @classmethod
    def _connect(cls, db_path: Path, read_only: bool, *, staged: bool = False) -> SQLiteMetaStore:
        target, pragmas = (
            (_read_only_uri(db_path), _READ_ONLY_PRAGMAS)
            if read_only
            else (str(db_path), _STAGED_PRAGMAS if staged else _WRITABLE_PRAGMAS)
        )
        conn = None
        try:
            conn = sqlite3.connect(
                target,
                uri=read_only,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,  # we issue BEGIN / COMMIT ourselves
                check_same_thread=False,  # shared by the engine's threads, guarded by our lock
            )
            for pragma in pragmas:
                conn.execute(pragma)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise translate_error(exc, db_path) from exc
        return cls(db_path, conn, read_only, wal=not staged)

    @classmethod
    def restore(
        cls,
        index_path: str | Path,
        meta_dir: str | Path,
        *,
        verified: bool = False,
        move: bool = False,
    ) -> None:
        """Install the snapshot ``index_path`` as ``<meta_dir>/meta.db``, atomically.

        The file is checked first, read-only (SQLite header and size, ``quick_check`` unless
        ``verified``, every JuiceFS table and column this store uses, a valid Format, a root
        inode); any failure raises :class:`~volume.errors.VolumeIndexCorrupt` and leaves
        ``meta_dir`` as it was. (``quick_check`` reads every page: half of a cold mount of a
        large index, and needless once the file matched its recorded hash.)
        The copy (the file itself with ``move``) is put in rollback-journal mode, and stale
        ``-wal``/``-shm`` files of a previous ``meta.db`` are removed before it is renamed over
        it.
        """
        index_path, meta_dir = Path(index_path), Path(meta_dir)
        _check_sqlite_header(index_path)
        try:
            with closing(cls._connect(index_path, read_only=True)) as source:
                source._check_usable(integrity=not verified)
        except (sqlite3.Error, MetaStoreError) as exc:
            raise VolumeIndexCorrupt(
                f"{index_path} is not a usable volume index (a JuiceFS v1.4 SQLite metadata "
                f"database), so it cannot be restored: {exc}"
            ) from exc
        meta_dir.mkdir(parents=True, exist_ok=True)
        staging = meta_dir / f".{cls.index_filename}.restoring"
        _remove_database(staging)
        try:
            place_file(index_path, staging, move=move)
            _use_rollback_journal(staging)
            _fsync(staging)
        except BaseException:
            _remove_database(staging)
            raise
        target = meta_dir / cls.index_filename
        _remove_side_files(target)  # a stale -wal would be replayed into the new file
        os.replace(staging, target)

    def _check_usable(self, integrity: bool = True) -> None:
        """Raise unless the database is intact (``integrity``: SQLite's ``quick_check`` of every
        page) and holds a formatted JuiceFS v1.4 schema.

        One statement runs on every table and column this store uses, so a schema of an older
        JuiceFS (no ``tier_id`` column, say) is refused here rather than on first use.
        """
        self.load_format()
        with self.transaction() as txn:
            if integrity:
                problems = [row[0] for row in self._conn.execute(_QUICK_CHECK)]
                if problems != ["ok"]:
                    raise VolumeIndexCorrupt(
                        f"{self._db_path} is a damaged SQLite database: "
                        f"{'; '.join(problems[:5])}"
                    )
            if txn.get_attr(ROOT_INODE) is None:
                raise VolumeIndexCorrupt(f"{self._db_path} has no root inode")
            txn.list_entries(ROOT_INODE, limit=1)
            txn.get_symlink(ROOT_INODE)
            txn.list_xattrs(ROOT_INODE)
            txn.read_chunk(ROOT_INODE, 0)
            next(iter(txn.slice_refs()), None)
            txn.get_counter(COUNTER_NEXT_INODE)
            txn.get_dir_stats(ROOT_INODE)

    # ------------------------------------------------------------------ format

    def is_formatted(self) -> bool:
        """Whether the ``jfs_setting`` row ``format`` exists."""
        return self._stored_format() is not None

    def format(self, fmt: Format, now_ns: int) -> None:
        """Create the v1.4 schema and the rows ``juicefs format`` writes, in one transaction.

        Rows: the Format setting, the root inode (and the trash inode when ``TrashDays > 0``)
        and the six counters of a fresh volume. Like ``juicefs format``, no ``jfs_dir_stats``
        row: a directory's row is created by its first change, starting from zero.
        """
        with self.transaction(write=True) as txn:
            if self._conn.execute(_SCHEMA_OBJECT_COUNT).fetchone()[0]:
                raise MetaStoreError(
                    f"{self._db_path} already holds tables; format needs an empty database"
                )
            for statement in JUICEFS_SCHEMA:
                self._conn.execute(statement)
            self._conn.execute(_SET_FORMAT, (fmt.to_json(),))
            root = Attr(
                type=TYPE_DIRECTORY, mode=0o777, uid=0, gid=0,
                atime_ns=now_ns, mtime_ns=now_ns, ctime_ns=now_ns,
                nlink=2, length=DIR_LENGTH, parent=ROOT_INODE,
            )  # fmt: skip
            txn.set_attr(ROOT_INODE, root)
            if fmt.TrashDays > 0:
                trash = root.copy()
                trash.mode = 0o555
                txn.set_attr(TRASH_INODE, trash)
            for name, value in FORMAT_COUNTERS:
                txn.set_counter(name, value)

    def load_format(self) -> Format:
        """The stored Format; VolumeIndexCorrupt when the row is missing or not a Format."""
        return parse_stored_format(
            self._stored_format(),
            missing=f"{self._db_path} is not a formatted volume index: it has no jfs_setting "
            f"row 'format'",
            holder=f"the format setting in {self._db_path}",
        )

    def save_format(self, fmt: Format) -> None:
        """Replace the stored Format (written exactly as JuiceFS writes it)."""
        with self.transaction(write=True):
            self._conn.execute(_SET_FORMAT, (fmt.to_json(),))

    def _stored_format(self) -> str | bytes | None:
        with self.transaction():
            if self._conn.execute(_HAS_SETTING_TABLE).fetchone() is None:
                return None
            row = self._conn.execute(_GET_FORMAT).fetchone()
        return None if row is None else row[0]

    # ------------------------------------------------------------------ transactions

    def transaction(self, write: bool = False) -> SQLiteTxn:
        """A transaction: committed when the block exits normally, rolled back on an exception.

        Transactions do not nest. SQLite errors leaving the block become
        :class:`~volume.errors.MetaStoreError` (:class:`~volume.errors.VolumeIndexCorrupt` for a
        damaged file); a write transaction on a read-only store, or a write method inside a read
        transaction, raises :class:`~volume.errors.VolumeReadOnly`.
        """
        if write and self._read_only:
            raise VolumeReadOnly(
                f"the metadata store {self._db_path} was opened read-only; open it writable to "
                f"change it"
            )
        return SQLiteTxn(
            self._conn, self._lock, self._db_path, write,
            self._checkpointer.committed if self._checkpointer is not None else None,
        )  # fmt: skip

    def read_attr(self, inode: int) -> Attr | None:
        """One inode's attributes, read outside any explicit transaction: a single SELECT is
        its own consistent read, and costs a third of a ``BEGIN``/``SELECT``/``COMMIT``.
        (The store's lock keeps it out of another thread's transaction on the connection.)"""
        try:
            with self._lock:
                if self._conn.in_transaction:  # this thread's own transaction is open
                    raise MetaStoreError(
                        "read_attr runs outside transactions; use get_attr inside one"
                    )
                row = self._conn.execute(GET_ATTR, (inode,)).fetchone()
        except sqlite3.Error as exc:
            raise translate_error(exc, self._db_path) from exc
        return None if row is None else _attr_from_row(row)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, dest: str | Path) -> int:
        """Copy the database consistently into the single file ``dest``; returns its size.

        SQLite's online backup copies every page (so ``sqlite_master`` keeps the exact DDL text
        and order, which ``VACUUM INTO`` would reorder). The copy is then switched to
        rollback-journal mode: one self-contained file, no ``-wal``/``-shm`` needed to open it.
        It is fsynced and renamed into place, so ``dest`` is never a partial file.
        """
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        _remove_database(part)
        try:
            with self._lock:
                if self._conn.in_transaction:
                    raise MetaStoreError(
                        "a snapshot cannot be taken inside a transaction; take it after the "
                        "transaction ends"
                    )
                with closing(sqlite3.connect(part)) as target:
                    self._conn.backup(target)
            _use_rollback_journal(part)
            _fsync(part)
            os.replace(part, dest)
        except sqlite3.Error as exc:
            _remove_database(part)
            raise translate_error(exc, self._db_path) from exc
        except BaseException:
            _remove_database(part)
            raise
        return dest.stat().st_size

    @contextmanager
    def edit_snapshot(self, snapshot: str | Path) -> Iterator[SQLiteMetaStore]:
        """A writable store over ``snapshot``, a file :meth:`snapshot` wrote, edited in place:
        what :mod:`volume.pins` changes in a snapshot before it is published. This store is not
        changed.

        The file is not checked again (this store wrote it) and stays in rollback-journal mode,
        so each transaction either lands whole or leaves the file as it was, and once the block
        exits it is one self-contained file again. Commits do not fsync: the file is staged for
        an upload, and a caller that fails discards it. Restoring a scratch copy instead would
        read every page twice more (its ``quick_check`` and a second snapshot): 3 of a 5 s
        commit of a million files.
        """
        store = type(self)._connect(Path(snapshot), read_only=False, staged=True)
        try:
            yield store
        finally:
            store.close()

    def sync(self) -> None:
        """Make every committed transaction durable: the WAL (and the database file, which a
        checkpoint may have written) are fsynced. Commits themselves run with
        ``synchronous=NORMAL``, which already survives the kill of this process; this makes them
        survive a power loss too (what fsync(2) in a mounted volume waits for).

        It runs outside the store's lock, so other threads' transactions go on meanwhile: the
        frames of every transaction committed before the call are in the WAL file's pages
        already, or, when the WAL started over since, in the database file, which the
        checkpoint that allowed that restart fsynced first."""
        if self._read_only:
            return
        try:
            _fsync(Path(f"{self._db_path}-wal"))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise MetaStoreError(f"cannot fsync the WAL of {self._db_path}: {exc}") from exc
        try:
            info = self._db_path.stat()
            state = (info.st_mtime_ns, info.st_size)
            if state != self._synced_db:  # a checkpoint wrote it since the last sync
                _fsync(self._db_path)
                self._synced_db = state
        except OSError as exc:
            raise MetaStoreError(f"cannot fsync {self._db_path}: {exc}") from exc

    def close(self) -> None:
        """Close the connection (a writable store checkpoints and removes its WAL file)."""
        if self._checkpointer is not None:
            self._checkpointer.close()  # first: the last connection closed removes the WAL
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        mode = "read-only" if self._read_only else "writable"
        return f"{type(self).__name__}({str(self._db_path)!r}, {mode})"


# --------------------------------------------------------------------------- file helpers


def _read_only_uri(db_path: Path) -> str:
    """The SQLite URI for opening ``db_path`` without writing anything beside or into it.

    A file no connection has open (no ``-wal`` or ``-journal`` beside it) is also declared
    immutable: a read-only store's file does not change while it is open (volume opens only
    committed indexes read-only, in a meta dir it holds locked). SQLite then neither creates
    ``-wal``/``-shm`` files for a WAL-mode file nor takes a file lock and rereads the header at
    each transaction, which halves the cost of a metadata read.
    """
    uri = db_path.resolve().as_uri() + "?mode=ro"
    if not any(Path(f"{db_path}{suffix}").exists() for suffix in ("-wal", "-journal")):
        uri += "&immutable=1"
    return uri


def _check_sqlite_header(path: Path) -> None:
    """Raise VolumeIndexCorrupt unless ``path`` starts like a complete SQLite database."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(_HEADER_SIZE)
    except FileNotFoundError as exc:
        raise VolumeIndexCorrupt(f"the index file {path} does not exist") from exc
    if len(header) < _HEADER_SIZE or not header.startswith(_SQLITE_MAGIC):
        raise VolumeIndexCorrupt(
            f"{path} is not a SQLite database ({size} bytes without a SQLite header); it is "
            f"empty, truncated or another kind of file"
        )
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size  # 1 encodes 64 KiB
    if page_size < 512 or page_size & (page_size - 1):
        raise VolumeIndexCorrupt(f"{path} has an invalid SQLite page size {page_size}")
    page_count = int.from_bytes(header[28:32], "big")
    # the page count is trustworthy when "version-valid-for" equals the change counter
    if header[24:28] == header[92:96] and size < page_count * page_size:
        raise VolumeIndexCorrupt(
            f"{path} is truncated: {size} bytes, but its header counts {page_count} pages of "
            f"{page_size} bytes"
        )


def _use_rollback_journal(path: Path) -> None:
    """Switch a database file we own to rollback-journal mode (a no-op when it already is)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(_TO_ROLLBACK_JOURNAL)


def _remove_side_files(path: Path) -> None:
    """Remove the journal, WAL and shared-memory files of a database."""
    for suffix in _SIDE_FILE_SUFFIXES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _remove_database(path: Path) -> None:
    """Remove a database file and its side files."""
    path.unlink(missing_ok=True)
    _remove_side_files(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
