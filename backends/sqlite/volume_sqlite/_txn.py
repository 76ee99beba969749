"""Record operations on the JuiceFS SQLite tables, run inside one SQLite transaction.

Every primitive runs a single prepared statement. The SQL strings are module constants, so the
connection's statement cache always hits.

Storage classes follow what the JuiceFS client binds: entry names, symlink targets, xattr values
and slice records are BLOBs (bound as ``bytes``); xattr names and counter names are TEXT. Byte
columns are read through ``CAST(... AS BLOB)`` because the client's append path turns
``jfs_chunk.slices`` into TEXT with embedded NUL bytes, which Python could not decode as str.
"""

from __future__ import annotations

import errno
import functools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from volume.errors import MetaStoreError, VolumeIndexCorrupt, VolumeReadOnly
from volume.juicefs import SLICE_RECORD_SIZE, Attr
from volume.stores import MetaTxn

# UPSERT ... RETURNING (counters, chunk appends, slice references) needs SQLite 3.35
_MIN_SQLITE = (3, 35, 0)
if sqlite3.sqlite_version_info < _MIN_SQLITE:
    raise ImportError(
        f"volume_sqlite needs SQLite {'.'.join(map(str, _MIN_SQLITE))} or newer, but Python's "
        f"sqlite3 module uses SQLite {sqlite3.sqlite_version}; use a Python built against a "
        f"newer SQLite"
    )

# --------------------------------------------------------------------------- statements

BEGIN_READ = "BEGIN"
BEGIN_WRITE = "BEGIN IMMEDIATE"  # take the write lock up front: no upgrade deadlocks later
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"

# Attr's fields, in its order, from a jfs_node row (``{n}``: the table's alias and a dot, or
# nothing). Times are whole nanoseconds, from JuiceFS's microseconds and the nanoseconds past
# them, computed by SQLite: a listing of 100,000 entries builds no Python integers for the parts.
# Nullable columns read NULL as 0 (JuiceFS writes 0 itself; NULL appears only in rows written by
# other tools).
_ATTR_COLUMNS = (
    "{n}type, {n}mode, {n}uid, {n}gid, {n}atime * 1000 + {n}atimensec, "
    "{n}mtime * 1000 + {n}mtimensec, {n}ctime * 1000 + {n}ctimensec, {n}nlink, {n}length, "
    "IFNULL({n}rdev, 0), IFNULL({n}parent, 0), {n}flags, IFNULL({n}access_acl_id, 0), "
    "IFNULL({n}default_acl_id, 0), IFNULL({n}tier_id, 0)"
)
GET_ATTR = f"SELECT {_ATTR_COLUMNS.format(n='')} FROM jfs_node WHERE inode = ?"
ITER_ATTRS = f"SELECT inode, {_ATTR_COLUMNS.format(n='')} FROM jfs_node ORDER BY inode"
SET_ATTR = (
    "INSERT OR REPLACE INTO jfs_node (inode, type, mode, uid, gid, atime, atimensec, mtime, "
    "mtimensec, ctime, ctimensec, nlink, length, rdev, parent, flags, access_acl_id, "
    "default_acl_id, tier_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
DELETE_ATTR = "DELETE FROM jfs_node WHERE inode = ?"

LOOKUP = "SELECT inode, type FROM jfs_edge WHERE parent = ? AND name = ?"
ADD_ENTRY = "INSERT INTO jfs_edge (parent, name, inode, type) VALUES (?, ?, ?, ?)"
REMOVE_ENTRY = "DELETE FROM jfs_edge WHERE parent = ? AND name = ?"
# BLOB comparison is memcmp, so ORDER BY name is byte order; both walk UQE_jfs_edge_edge.
LIST_ENTRIES = (
    "SELECT CAST(name AS BLOB), inode, type FROM jfs_edge WHERE parent = ? ORDER BY name LIMIT ?"
)
LIST_ENTRIES_AFTER = (
    "SELECT CAST(name AS BLOB), inode, type FROM jfs_edge WHERE parent = ? AND name > ? "
    "ORDER BY name LIMIT ?"
)
HAS_ENTRIES = "SELECT 1 FROM jfs_edge WHERE parent = ? LIMIT 1"
ENTRY_PARENTS = (
    "SELECT parent, CAST(name AS BLOB) FROM jfs_edge WHERE inode = ? ORDER BY parent, name"
)

GET_SYMLINK = "SELECT CAST(target AS BLOB) FROM jfs_symlink WHERE inode = ?"
SET_SYMLINK = "INSERT OR REPLACE INTO jfs_symlink (inode, target) VALUES (?, ?)"
DELETE_SYMLINK = "DELETE FROM jfs_symlink WHERE inode = ?"

GET_XATTR = "SELECT CAST(value AS BLOB) FROM jfs_xattr WHERE inode = ? AND name = ?"
SET_XATTR = (
    "INSERT INTO jfs_xattr (inode, name, value) VALUES (?, ?, ?) "
    "ON CONFLICT (inode, name) DO UPDATE SET value = excluded.value"
)
REMOVE_XATTR = "DELETE FROM jfs_xattr WHERE inode = ? AND name = ?"
LIST_XATTRS = "SELECT name, CAST(value AS BLOB) FROM jfs_xattr WHERE inode = ? ORDER BY name"
DELETE_XATTRS = "DELETE FROM jfs_xattr WHERE inode = ?"

READ_CHUNK = "SELECT CAST(slices AS BLOB) FROM jfs_chunk WHERE inode = ? AND indx = ?"
# `||` yields TEXT; the CAST keeps our rows BLOB (and turns a client-written TEXT row back into
# one). length() of a BLOB counts bytes, of a TEXT only up to the first NUL.
APPEND_CHUNK = (
    "INSERT INTO jfs_chunk (inode, indx, slices) VALUES (?, ?, ?) "
    "ON CONFLICT (inode, indx) DO UPDATE SET slices = CAST(slices || excluded.slices AS BLOB) "
    f"RETURNING length(slices) / {SLICE_RECORD_SIZE}"
)
WRITE_CHUNK = (
    "INSERT INTO jfs_chunk (inode, indx, slices) VALUES (?, ?, ?) "
    "ON CONFLICT (inode, indx) DO UPDATE SET slices = excluded.slices"
)
DELETE_CHUNK = "DELETE FROM jfs_chunk WHERE inode = ? AND indx = ?"
CHUNK_INDEXES = "SELECT indx FROM jfs_chunk WHERE inode = ? ORDER BY indx"
ITER_CHUNKS = "SELECT inode, indx, CAST(slices AS BLOB) FROM jfs_chunk ORDER BY inode, indx"

ADD_SLICE_REF = (
    "INSERT INTO jfs_chunk_ref (chunkid, size, refs) VALUES (?, ?, ?) "
    "ON CONFLICT (chunkid) DO UPDATE SET refs = refs + excluded.refs RETURNING refs"
)
SLICE_REFS = "SELECT chunkid, size, refs FROM jfs_chunk_ref ORDER BY chunkid"

GET_COUNTER = "SELECT value FROM jfs_counter WHERE name = ?"
ADD_COUNTER = (
    "INSERT INTO jfs_counter (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value RETURNING value"
)
SET_COUNTER = (
    "INSERT INTO jfs_counter (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)

ADD_SUSTAINED = "INSERT OR IGNORE INTO jfs_sustained (sid, inode) VALUES (?, ?)"
REMOVE_SUSTAINED = "DELETE FROM jfs_sustained WHERE sid = ? AND inode = ?"
SUSTAINED = "SELECT sid, inode FROM jfs_sustained ORDER BY sid, id"

UPDATE_DIR_STATS = (
    "INSERT INTO jfs_dir_stats (inode, data_length, used_space, used_inodes) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (inode) DO UPDATE SET data_length = data_length + excluded.data_length, "
    "used_space = used_space + excluded.used_space, "
    "used_inodes = used_inodes + excluded.used_inodes"
)
DELETE_DIR_STATS = "DELETE FROM jfs_dir_stats WHERE inode = ?"
# a directory's entries with their inodes' rows (NULLs when one has none: its type is never NULL
# otherwise), in one statement
LIST_ENTRIES_ATTRS = (
    f"SELECT CAST(e.name AS BLOB), e.inode, e.type, {_ATTR_COLUMNS.format(n='n.')} "
    f"FROM jfs_edge e LEFT JOIN jfs_node n ON n.inode = e.inode WHERE e.parent = ? "
)
LIST_ENTRIES_ATTRS_FIRST = LIST_ENTRIES_ATTRS + "ORDER BY e.name LIMIT ?"
LIST_ENTRIES_ATTRS_AFTER = LIST_ENTRIES_ATTRS + "AND e.name > ? ORDER BY e.name LIMIT ?"
ANY_XATTR = "SELECT 1 FROM jfs_xattr LIMIT 1"
# which of a JSON array of inodes have an xattr (one statement whatever their number)
INODES_WITH_XATTRS = (
    "SELECT DISTINCT inode FROM jfs_xattr WHERE inode IN (SELECT value FROM json_each(?))"
)
GET_DIR_STATS = "SELECT data_length, used_space, used_inodes FROM jfs_dir_stats WHERE inode = ?"

# --------------------------------------------------------------------------- conversions

_MODE_BITS = 0o7777


def _attr_from_row(row: Sequence[Any]) -> Attr:
    """The Attr of a row of exactly ``_ATTR_COLUMNS``."""
    return Attr(*row)


def _row_from_attr(inode: int, attr: Attr) -> tuple[int, ...]:
    """The ``SET_ATTR`` parameters of an Attr.

    Times are split into microseconds and a 0..999 ns remainder with floor division, so the
    remainder is never negative and ``us * 1000 + ns`` restores any time, pre-1970 included.
    """
    atime, mtime, ctime = attr.atime_ns, attr.mtime_ns, attr.ctime_ns
    return (
        inode, attr.type, attr.mode & _MODE_BITS, attr.uid, attr.gid,
        atime // 1000, atime % 1000, mtime // 1000, mtime % 1000, ctime // 1000, ctime % 1000,
        attr.nlink, attr.length, attr.rdev, attr.parent, attr.flags,
        attr.access_acl, attr.default_acl, attr.tier,
    )  # fmt: skip


# --------------------------------------------------------------------------- errors

# primary result codes of the SQLite C API that mean the file itself is damaged
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SQLITE_FULL = 13


def translate_error(exc: sqlite3.Error, db_path: object) -> MetaStoreError:
    """The error of this package that stands for a failure of the SQLite database."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # attribute exists from Python 3.11 on
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return VolumeIndexCorrupt(
            f"the metadata database {db_path} is damaged or not a SQLite database ({exc}); "
            f"restore the volume's index again"
        )
    if code == _SQLITE_FULL:
        error = MetaStoreError(
            f"the disk holding the metadata database {db_path} is full ({exc}); the change was "
            f"rolled back; free space and retry"
        )
        error.errno = errno.ENOSPC  # type: ignore[attr-defined]  # the engine answers ENOSPC
        return error
    return MetaStoreError(f"the metadata database {db_path} failed: {exc}")


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _writes(method: _Method) -> _Method:
    """Refuse the wrapped record operation inside a read-only transaction."""

    @functools.wraps(method)
    def guarded(self: SQLiteTxn, *args: Any, **kwargs: Any) -> Any:
        if not self._writable:
            raise VolumeReadOnly(
                f"{method.__name__} needs a write transaction; open it with "
                f"transaction(write=True) on a store opened writable"
            )
        return method(self, *args, **kwargs)

    return guarded  # type: ignore[return-value]


# --------------------------------------------------------------------------- transaction


class SQLiteTxn(MetaTxn):
    """One SQLite transaction; also the context manager that begins and ends it.

    Entering takes the store's lock for the whole transaction (the connection is shared by every
    thread) and issues ``BEGIN`` or ``BEGIN IMMEDIATE``; leaving commits, or rolls back when the
    block raised. Iterators returned by ``iter_*`` and ``slice_refs`` must be consumed before the
    block ends (they are closed then).
    """

    __slots__ = ("_committed", "_conn", "_cur", "_db_path", "_lock", "_scans", "_writable")

    def __init__(
        self,
        conn: sqlite3.Connection,
        lock: threading.RLock,
        db_path: object,
        write: bool,
        committed: Callable[[int], None] | None = None,
    ) -> None:
        """``committed`` is called with the connection's ``total_changes`` after a write
        transaction commits, still under the lock."""
        self._committed = committed
        self._conn = conn
        self._lock = lock
        self._db_path = db_path
        self._cur = conn.cursor()
        self._writable = write
        self._scans: list[sqlite3.Cursor] = []  # cursors behind returned iterators

    def __enter__(self) -> SQLiteTxn:
        self._lock.acquire()
        try:
            if self._conn.in_transaction:  # only this thread can be inside: it holds the lock
                raise MetaStoreError(
                    "transactions of a metadata store do not nest; run the inner work in the "
                    "enclosing transaction"
                )
            self._cur.execute(BEGIN_WRITE if self._writable else BEGIN_READ)
        except sqlite3.Error as exc:
            self._lock.release()
            raise translate_error(exc, self._db_path) from exc
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self._finish(commit=exc is None)
            if isinstance(exc, sqlite3.Error):
                raise translate_error(exc, self._db_path) from exc
        finally:
            # Close every cursor: a leaked reference or iterator must not touch the connection
            # outside the transaction, and an unfinished scan would keep the connection from
            # closing cleanly (checkpointing and removing its WAL).
            self._writable = False
            for cursor in self._scans:
                cursor.close()
            self._cur.close()
            self._lock.release()

    def _finish(self, commit: bool) -> None:
        try:
            if commit:
                self._cur.execute(COMMIT)
                if self._writable and self._committed is not None:
                    self._committed(self._conn.total_changes)
            elif self._conn.in_transaction:  # some errors make SQLite roll back by itself
                self._cur.execute(ROLLBACK)
        except sqlite3.Error as exc:
            if self._conn.in_transaction:  # a failed COMMIT leaves the transaction open
                self._conn.execute(ROLLBACK)
            raise translate_error(exc, self._db_path) from exc

    def _scan(self, sql: str) -> sqlite3.Cursor:
        """A cursor of its own for a returned iterator, closed when the transaction ends."""
        cursor = self._conn.execute(sql)
        self._scans.append(cursor)
        return cursor

    # ---- inodes
    def get_attr(self, inode: int) -> Attr | None:
        row = self._cur.execute(GET_ATTR, (inode,)).fetchone()
        return None if row is None else _attr_from_row(row)

    @_writes
    def set_attr(self, inode: int, attr: Attr) -> None:
        self._cur.execute(SET_ATTR, _row_from_attr(inode, attr))

    @_writes
    def delete_attr(self, inode: int) -> None:
        self._cur.execute(DELETE_ATTR, (inode,))

    def iter_attrs(self) -> Iterator[tuple[int, Attr]]:
        return ((row[0], Attr(*row[1:])) for row in self._scan(ITER_ATTRS))

    # ---- directory entries
    def lookup(self, parent: int, name: bytes) -> tuple[int, int] | None:
        return self._cur.execute(LOOKUP, (parent, name)).fetchone()

    @_writes
    def add_entry(self, parent: int, name: bytes, inode: int, type: int) -> None:
        self._cur.execute(ADD_ENTRY, (parent, name, inode, type))

    @_writes
    def remove_entry(self, parent: int, name: bytes) -> None:
        self._cur.execute(REMOVE_ENTRY, (parent, name))

    def list_entries(
        self, parent: int, after: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, int, int]]:
        sql_limit = -1 if limit is None else limit  # LIMIT -1: no limit
        if after is None:
            return self._cur.execute(LIST_ENTRIES, (parent, sql_limit)).fetchall()
        return self._cur.execute(LIST_ENTRIES_AFTER, (parent, after, sql_limit)).fetchall()

    def list_entries_attrs(
        self, parent: int, after: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, int, int, Attr | None]]:
        sql_limit = -1 if limit is None else limit  # LIMIT -1: no limit
        rows = (
            self._cur.execute(LIST_ENTRIES_ATTRS_FIRST, (parent, sql_limit))
            if after is None
            else self._cur.execute(LIST_ENTRIES_ATTRS_AFTER, (parent, after, sql_limit))
        )
        return [
            (row[0], row[1], row[2], None if row[3] is None else Attr(*row[3:])) for row in rows
        ]

    def any_xattrs(self) -> bool:
        return self._cur.execute(ANY_XATTR).fetchone() is not None

    def inodes_with_xattrs(self, inodes: list[int]) -> set[int]:
        if not inodes:
            return set()
        try:
            rows = self._cur.execute(INODES_WITH_XATTRS, (json.dumps(inodes),)).fetchall()
        except sqlite3.OperationalError:  # an SQLite built without JSON functions
            return super().inodes_with_xattrs(inodes)
        return {row[0] for row in rows}

    def has_entries(self, parent: int) -> bool:
        return self._cur.execute(HAS_ENTRIES, (parent,)).fetchone() is not None

    def entry_parents(self, inode: int) -> list[tuple[int, bytes]]:
        return self._cur.execute(ENTRY_PARENTS, (inode,)).fetchall()

    # ---- symlinks
    def get_symlink(self, inode: int) -> bytes | None:
        row = self._cur.execute(GET_SYMLINK, (inode,)).fetchone()
        return None if row is None else row[0]

    @_writes
    def set_symlink(self, inode: int, target: bytes) -> None:
        self._cur.execute(SET_SYMLINK, (inode, target))

    @_writes
    def delete_symlink(self, inode: int) -> None:
        self._cur.execute(DELETE_SYMLINK, (inode,))

    # ---- extended attributes
    def get_xattr(self, inode: int, name: str) -> bytes | None:
        row = self._cur.execute(GET_XATTR, (inode, name)).fetchone()
        return None if row is None else row[0]

    @_writes
    def set_xattr(self, inode: int, name: str, value: bytes) -> None:
        self._cur.execute(SET_XATTR, (inode, name, value))

    @_writes
    def remove_xattr(self, inode: int, name: str) -> bool:
        return self._cur.execute(REMOVE_XATTR, (inode, name)).rowcount > 0

    def list_xattrs(self, inode: int) -> list[tuple[str, bytes]]:
        return self._cur.execute(LIST_XATTRS, (inode,)).fetchall()

    @_writes
    def delete_xattrs(self, inode: int) -> None:
        self._cur.execute(DELETE_XATTRS, (inode,))

    # ---- chunks and slice references
    def read_chunk(self, inode: int, indx: int) -> bytes:
        row = self._cur.execute(READ_CHUNK, (inode, indx)).fetchone()
        return b"" if row is None else row[0]

    @_writes
    def append_chunk(self, inode: int, indx: int, records: bytes) -> int:
        return self._cur.execute(APPEND_CHUNK, (inode, indx, records)).fetchone()[0]

    @_writes
    def write_chunk(self, inode: int, indx: int, records: bytes) -> None:
        if records:
            self._cur.execute(WRITE_CHUNK, (inode, indx, records))
        else:
            self._cur.execute(DELETE_CHUNK, (inode, indx))

    def chunk_indexes(self, inode: int) -> list[int]:
        return [row[0] for row in self._cur.execute(CHUNK_INDEXES, (inode,))]

    def iter_chunks(self) -> Iterator[tuple[int, int, bytes]]:
        return self._scan(ITER_CHUNKS)

    @_writes
    def add_slice_ref(self, slice_id: int, size: int, delta: int) -> int:
        return self._cur.execute(ADD_SLICE_REF, (slice_id, size, delta)).fetchone()[0]

    def slice_refs(self) -> Iterator[tuple[int, int, int]]:
        return self._scan(SLICE_REFS)

    # ---- counters (the SQL convention is this table's own)
    def get_counter(self, name: str) -> int:
        row = self._cur.execute(GET_COUNTER, (name,)).fetchone()
        return 0 if row is None else row[0]

    @_writes
    def add_counter(self, name: str, delta: int) -> int:
        return self._cur.execute(ADD_COUNTER, (name, delta)).fetchone()[0]

    @_writes
    def set_counter(self, name: str, value: int) -> None:
        self._cur.execute(SET_COUNTER, (name, value))

    # ---- sustained inodes
    @_writes
    def add_sustained(self, session: int, inode: int) -> None:
        self._cur.execute(ADD_SUSTAINED, (session, inode))

    @_writes
    def remove_sustained(self, session: int, inode: int) -> None:
        self._cur.execute(REMOVE_SUSTAINED, (session, inode))

    def sustained(self) -> list[tuple[int, int]]:
        return list(self._cur.execute(SUSTAINED))

    # ---- per-directory statistics
    @_writes
    def update_dir_stats(self, inode: int, length: int, space: int, inodes: int) -> None:
        self._cur.execute(UPDATE_DIR_STATS, (inode, length, space, inodes))

    @_writes
    def delete_dir_stats(self, inode: int) -> None:
        self._cur.execute(DELETE_DIR_STATS, (inode,))

    def get_dir_stats(self, inode: int) -> tuple[int, int, int] | None:
        return self._cur.execute(GET_DIR_STATS, (inode,)).fetchone()
