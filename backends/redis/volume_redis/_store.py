"""``RedisMetaStore``: one volume's namespace in the JuiceFS Redis layout, on a private server.

Why a process lock and one MULTI/EXEC per transaction are enough for atomic, isolated
transactions: the server is private to the store. It listens only on a unix socket (mode 0600)
inside the meta dir, which the lifecycle holds exclusively, and nothing but this store object
talks to it. Every transaction holds the store's lock from its first read to its commit, so no
other transaction of this process can interleave; and nothing outside the process can. Writes
are buffered in the transaction (:mod:`._txn`) and sent together in one MULTI/EXEC block, which
Redis applies all at once or not at all, so a failed or interrupted transaction leaves nothing
behind and a reader never sees half of one. For the same reason the store may cache what the
server holds (every change passes through it): reads of cached keys cost no round trip, and
committed transactions may wait in a queue (group commit) before their MULTI/EXEC is sent, since
every reader consults the cache first and every read of the server sends the queue before it.
A group is still applied whole, and always ends on a transaction boundary.

Inodes numbered at or above ``nextinode`` when the store opened (below the reserved range) and
slices at or above ``nextchunk`` cannot have keys yet (JuiceFS hands ids out from these
counters), so their keys are known to be empty without asking the server.

The live data lives in the server's memory and in its append-only journal
(``<meta_dir>/appendonlydir``), which :meth:`RedisMetaStore.sync` (fsync(2) of a mounted file)
fsyncs after sending the queued writes: a reopen after a kill loads it. ``<meta_dir>/meta.rdb``
is written by ``SAVE`` when the store snapshots and when a writable store closes. A snapshot is the RDB file itself, which
``redis-server`` (and the JuiceFS client through it) loads as is.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from volume.errors import MetaStoreError, VolumeIndexCorrupt, VolumeReadOnly
from volume.juicefs import (
    COUNTER_NEXT_CHUNK,
    COUNTER_NEXT_CLEANUP_SLICES,
    COUNTER_NEXT_INODE,
    COUNTER_NEXT_SESSION,
    COUNTER_TOTAL_INODES,
    COUNTER_USED_SPACE,
    DIR_LENGTH,
    MIN_INTERNAL_INODE,
    ROOT_INODE,
    SLICE_RECORD_SIZE,
    TRASH_INODE,
    TYPE_DIRECTORY,
    Attr,
    Format,
)
from volume.pins import FOREIGN_CHUNK
from volume.stores import MetaStore, MetaStoreCapabilities, parse_stored_format, place_file

from . import _codec as codec
from . import _scripts
from ._errors import RedisServerGone, RedisServerStartError
from ._server import (
    SERVER_FILES,
    RedisServer,
    check_rdb,
    remove_journal,
    stop_stale,
    sync_journal,
)
from ._txn import RedisTxn, check_not_nested

INDEX_FILENAME = "meta.rdb"
_RDB_MAGIC = b"REDIS"
_SOCKET_TIMEOUT_S = 60.0
_CACHE_LIMIT = 1_000_000  # cached keys and fields before the cache starts over
_SCAN_COUNT = 1000
_BATCH = 1000
#: committed transactions whose writes wait (in the cache, visible) before one MULTI/EXEC
_GROUP_COMMIT = 64
_NEVER = 1 << 64

#: counters ``format`` writes, in the SQL convention (as the SQLite store writes them)
_FORMAT_COUNTERS = (
    (COUNTER_NEXT_INODE, 2),
    (COUNTER_NEXT_CHUNK, 1),
    (COUNTER_NEXT_SESSION, 0),
    (COUNTER_USED_SPACE, 0),
    (COUNTER_TOTAL_INODES, 0),
    (COUNTER_NEXT_CLEANUP_SLICES, 0),
)

_F = TypeVar("_F", bound=Callable[..., Any])


def _io(method: _F) -> _F:
    """Turn failures to reach the server into RedisServerGone (EIO) and mark the store broken."""

    @functools.wraps(method)
    def wrapped(self: RedisMetaStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError) as exc:
            raise self._gone(exc) from exc
        except redis.ResponseError as exc:
            raise MetaStoreError(
                f"the redis metadata store in {self._meta_dir} refused a command: {exc}"
            ) from exc

    return wrapped  # type: ignore[return-value]


def _reads(method: _F) -> _F:
    """A method that asks the server: queued writes are sent first (read after write)."""

    @functools.wraps(method)
    def flushed(self: RedisMetaStore, *args: Any, **kwargs: Any) -> Any:
        if self._queued:
            self._flush()
        return method(self, *args, **kwargs)

    return _io(flushed)  # type: ignore[return-value]


class RedisMetaStore(MetaStore):
    """A JuiceFS Redis metadata database served by a private redis-server; see the module doc."""

    name = "redis"
    capabilities = MetaStoreCapabilities(embedded=True, juicefs_compatible=True)
    index_filename = INDEX_FILENAME

    def __init__(self, meta_dir: Path, server: RedisServer, read_only: bool) -> None:
        """Wrap a started server; use :meth:`open` instead."""
        self._meta_dir = meta_dir
        self._server = server
        self._read_only = read_only
        self._client = redis.Redis(
            unix_socket_path=server.socket,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
        )
        self._lock = threading.RLock()
        self._in_txn = False
        self._broken: str | None = None
        self._closed = False
        self._pending = RedisTxn(self, True)  # committed writes not yet sent, merged
        self._extra: list[Any] = []  # sustained-inode changes not yet sent
        self._queued = 0
        self._orphan_links: dict[int, dict[int, int]] = {}
        # sliceRef fields chunk records named without a field when the store opened (JuiceFS:
        # one reference each), found by one server-side scan the first time it is needed
        self._named_unref: set[bytes] | None = None
        self._reset_cache()
        self._init_fresh()
        self._opened_slice = self._fresh_slice  # kept when the cache starts over
        if self._opened_slice in (1, FOREIGN_CHUNK):
            # no slice can be named yet, or a published index that no foreign client wrote to
            # (volume.pins: its nextChunk is the first of the foreign lane, where no slice was
            # allocated yet) names each slice with a field: JuiceFS leaves a field out only for
            # a slice it writes or compacts into, which takes a new id from nextChunk
            self._named_unref = set()

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, meta_dir: str | Path, *, read_only: bool = False) -> RedisMetaStore:
        """Start a server on ``<meta_dir>/meta.rdb`` (an empty database when it is missing,
        unless read-only) and connect to it."""
        meta_dir = Path(meta_dir).resolve()
        rdb = meta_dir / INDEX_FILENAME
        if read_only and not rdb.is_file():
            raise MetaStoreError(
                f"there is no redis metadata database at {rdb}; restore the volume's index into "
                f"{meta_dir} first"
            )
        meta_dir.mkdir(parents=True, exist_ok=True)
        try:
            server = RedisServer(meta_dir, INDEX_FILENAME, journal=not read_only)
        except RedisServerStartError as exc:
            problem = check_rdb(rdb) if rdb.is_file() else None
            if problem is not None:
                raise VolumeIndexCorrupt(
                    f"the redis metadata database {rdb} is damaged ({problem}); restore the "
                    f"volume's index again"
                ) from exc
            raise
        return cls(meta_dir, server, read_only)

    @classmethod
    def restore(
        cls,
        index_path: str | Path,
        meta_dir: str | Path,
        *,
        verified: bool = False,
        move: bool = False,
    ) -> None:
        """Install the RDB snapshot ``index_path`` as ``<meta_dir>/meta.rdb``, atomically.

        The file is checked first: its RDB header, then (unless ``verified``) ``redis-check-rdb``
        (structure and CRC64 of the whole file); a bad file raises
        :class:`~volume.errors.VolumeIndexCorrupt` and leaves ``meta_dir`` as it was. A server
        left running for ``meta_dir`` by a dead process is stopped first. With ``move`` the file
        is renamed into place rather than copied (when it lies on the same file system).
        """
        index_path, meta_dir = Path(index_path), Path(meta_dir).resolve()
        _check_rdb_file(index_path, scan=not verified)
        meta_dir.mkdir(parents=True, exist_ok=True)
        stop_stale(meta_dir)
        remove_journal(meta_dir)  # it would be loaded instead of the restored RDB
        staging = meta_dir / f".{INDEX_FILENAME}.restoring"
        try:
            place_file(index_path, staging, move=move)
            _fsync(staging)
            os.replace(staging, meta_dir / INDEX_FILENAME)
        finally:
            staging.unlink(missing_ok=True)

    @classmethod
    def clear_meta_dir(cls, meta_dir: str | Path) -> None:
        """Stop a server a dead process left running for ``meta_dir`` and remove its files."""
        meta_dir = Path(meta_dir)
        stop_stale(meta_dir)
        for name in (*SERVER_FILES, INDEX_FILENAME):
            (meta_dir / name).unlink(missing_ok=True)
        remove_journal(meta_dir)

    # ------------------------------------------------------------------ format

    @_reads
    def is_formatted(self) -> bool:
        """Whether the ``setting`` key exists."""
        self._check_usable()
        return bool(self._client.exists(codec.SETTING))

    def format(self, fmt: Format, now_ns: int) -> None:
        """Write the setting, the root inode (and the trash inode when ``TrashDays > 0``) and the
        counters of a fresh volume, in one MULTI/EXEC, into an empty database."""
        with self.transaction(write=True) as txn:
            if self._dbsize():
                raise MetaStoreError(
                    f"the redis metadata database in {self._meta_dir} already holds keys; "
                    f"format needs an empty database"
                )
            txn._str[codec.SETTING] = fmt.to_json().encode()
            root = Attr(
                type=TYPE_DIRECTORY, mode=0o777, atime_ns=now_ns, mtime_ns=now_ns,
                ctime_ns=now_ns, nlink=2, length=DIR_LENGTH, parent=ROOT_INODE,
            )  # fmt: skip
            txn.set_attr(ROOT_INODE, root)
            if fmt.TrashDays > 0:
                trash = root.copy()
                trash.mode = 0o555
                txn.set_attr(TRASH_INODE, trash)
            for name, value in _FORMAT_COUNTERS:
                txn.set_counter(name, value)

    def load_format(self) -> Format:
        """The stored Format; VolumeIndexCorrupt when the key is missing or not a Format."""
        with self.transaction() as txn:
            text = txn._get_str(codec.SETTING)
        return parse_stored_format(
            text,
            missing=f"the redis metadata database in {self._meta_dir} is not a formatted volume "
            f"index: it has no 'setting' key",
            holder=f"the 'setting' key in {self._meta_dir}",
        )

    def save_format(self, fmt: Format) -> None:
        """Replace the stored Format."""
        with self.transaction(write=True) as txn:
            txn._str[codec.SETTING] = fmt.to_json().encode()

    # ------------------------------------------------------------------ transactions

    def transaction(self, write: bool = False) -> RedisTxn:
        """A transaction holding the store's lock; its writes are applied in one MULTI/EXEC."""
        if write and self._read_only:
            raise VolumeReadOnly(
                f"the metadata store in {self._meta_dir} was opened read-only; open it writable "
                f"to change it"
            )
        return RedisTxn(self, write)

    def _begin(self) -> None:
        self._lock.acquire()
        try:
            check_not_nested(self)
            self._check_usable()
        except BaseException:
            self._lock.release()
            raise
        self._in_txn = True

    def _end(self) -> None:
        self._in_txn = False
        self._lock.release()

    def _check_usable(self) -> None:
        if self._closed:
            raise MetaStoreError(f"the redis metadata store in {self._meta_dir} is closed")
        if self._broken is not None:
            raise RedisServerGone(self._broken)

    def _gone(self, exc: BaseException) -> RedisServerGone:
        if self._broken is None:
            state = "running" if self._server.alive() else "not running"
            self._broken = (
                f"the private redis-server of {self._meta_dir} stopped answering ({exc}; the "
                f"process is {state}); the mount's changes since its last commit are lost, the "
                f"committed versions are intact; unmount and mount again. Server log:\n"
                f"{self._server.log_tail()}"
            )
            self._reset_cache()
        return RedisServerGone(self._broken)

    @_io
    def _commit(self, txn: RedisTxn) -> None:
        """Fold the transaction into the cache and into the queue of unsent writes.

        The queue is sent as one MULTI/EXEC block (all of it or nothing, in commit order) once
        ``_GROUP_COMMIT`` transactions are in it, and before any read of the server, snapshot or
        close. Committed writes are visible at once through the cache, which every reader
        consults first, so queuing changes when the server learns of a write, never what any
        reader sees.
        """
        if not txn.changed():
            return
        if not self._server.alive():
            raise self._gone(ConnectionError("the redis-server process exited"))
        self._settle_links(txn)
        if txn._sustained is not None:
            current = self._sustained()  # sends the queue first
            self._extra.append((current, txn._sustained, self._next_sustained_score()))
        _merge(self._pending, txn)
        self._absorb(txn)
        self._queued += 1
        if self._queued >= _GROUP_COMMIT or self._extra or len(self._pending._str) > 50_000:
            self._flush()

    def _settle_links(self, txn: RedisTxn) -> None:
        """Turn the transaction's entry changes of non-directories into ``p{inode}`` changes,
        as JuiceFS keeps them: only for inodes with several links (``parent == 0``)."""
        for inode, deltas in txn._links.items():
            final = txn.get_attr(inode)
            before_raw = self._cached_str(codec.inode_key(inode))
            before = None if before_raw is None else codec.unpack_attr(before_raw)
            if before is None:  # entries written before the inode's attr (a load): keep them
                stash = self._orphan_links.setdefault(inode, {})
                for parent, delta in deltas.items():
                    stash[parent] = stash.get(parent, 0) + delta
                if final is None or final.parent != 0:
                    continue
                deltas, base = self._orphan_links.pop(inode), {}
            elif before.parent != 0:
                if final is None or final.parent != 0:
                    continue  # a single link, before and after: no p{inode}
                base = {before.parent: 1}  # the first hard link: p{inode} starts
            else:
                base = None  # p{inode} exists: apply the changes to it
            pkey = codec.parent_key(inode)
            for parent, delta in deltas.items():
                field = b"%d" % parent
                if base is None:
                    count = int(txn._get_field(pkey, field) or 0) + delta
                else:
                    count = base.pop(parent, 0) + delta
                txn._field[(pkey, field)] = str(count).encode() if count > 0 else None
            for parent, count in (base or {}).items():
                txn._field[(pkey, b"%d" % parent)] = str(count).encode()

    @_io
    def _flush(self) -> None:
        """Send the queued writes as one MULTI/EXEC block (all of them or none)."""
        with self._lock:
            pending, extra = self._pending, self._extra
            self._pending, self._extra, self._queued = RedisTxn(self, True), [], 0
            if not pending.changed() and not extra:
                return
            pipe = self._client.pipeline(transaction=True)
            _emit(pipe, pending)
            for current, wanted, next_score in extra:
                _sustained_changes(pipe, current, wanted, next_score)
            pipe.execute()

    # ------------------------------------------------------------------ cache

    def _reset_cache(self) -> None:
        self._c_str: dict[bytes, bytes | None] = {}
        self._c_hash: dict[bytes, dict[bytes, bytes]] = {}
        self._c_listing: dict[bytes, list[tuple[bytes, int, int]]] = {}
        self._c_field: dict[tuple[bytes, bytes], bytes | None] = {}
        self._c_list: dict[bytes, bytes] = {}
        self._c_size = 0
        # Inodes and slices numbered from these on did not exist when the store opened: their
        # keys hold exactly what this store wrote, all of it in the cache. A cache that starts
        # over forgets that (the thresholds move out of reach).
        self._fresh_inode = self._fresh_slice = _NEVER

    @_reads
    def _init_fresh(self) -> None:
        inode, chunk = self._client.mget([b"nextinode", b"nextchunk"])
        self._fresh_inode = int(inode) + 1 if inode is not None else 2
        self._fresh_slice = int(chunk) + 1 if chunk is not None else 1
        if self._client.exists(codec.SETTING) == 0:
            self._fresh_inode, self._fresh_slice = 2, 1  # an empty database: nothing exists

    def _fresh(self, inode: int) -> bool:
        return self._fresh_inode <= inode < MIN_INTERNAL_INODE

    def _fresh_key(self, key: bytes) -> bool:
        """Whether ``key`` belongs to an inode created since the store opened."""
        if key[:1] in (b"i", b"d", b"p", b"s", b"x"):
            digits = key[1:]
            return digits.isdigit() and self._fresh(int(digits))
        if key[:1] == b"c":
            m = codec.CHUNK_KEY.fullmatch(key)
            return m is not None and self._fresh(int(m.group(1)))
        return False

    def _fresh_field(self, key: bytes, field: bytes) -> bool:
        if key == codec.SLICE_REFS:
            m = codec.SLICE_FIELD.fullmatch(field)
            return m is not None and int(m.group(1)) >= self._fresh_slice
        if key in codec.DIR_STATS:
            return field.isdigit() and self._fresh(int(field))
        return self._fresh_key(key)

    def _grow(self, n: int = 1) -> None:
        self._c_size += n
        if self._c_size > _CACHE_LIMIT:
            self._reset_cache()

    def _absorb(self, txn: RedisTxn) -> None:
        """Fold a committed transaction into the cache."""
        self._c_str.update(txn._str)
        for key in txn._cleared:
            self._c_hash[key] = {}
            self._c_listing.pop(key, None)
        for key, delta in txn._hash.items():
            cached = self._c_hash.get(key)
            if cached is None and self._fresh_key(key):
                cached = self._c_hash[key] = {}
            self._c_listing.pop(key, None)
            if cached is None:
                continue
            for field, value in delta.items():
                if value is None:
                    cached.pop(field, None)
                else:
                    cached[field] = value
        self._c_field.update(txn._field)
        for kf in txn._incr:
            self._c_field.pop(kf, None)
        for key, (_before, now) in txn._list.items():
            self._c_list[key] = now
        self._grow(len(txn._str) + len(txn._hash) + len(txn._field) + len(txn._list))

    def _cached_listing(self, key: bytes) -> list[tuple[bytes, int, int]]:
        """``(name, inode, type)`` of a directory's entries, sorted by name."""
        listing = self._c_listing.get(key)
        if listing is None:
            listing = sorted(
                (name, *codec.unpack_entry(raw)) for name, raw in self._cached_hash(key).items()
            )
            self._c_listing[key] = listing
        return listing

    def _field_is_known(self, key: bytes, field: bytes) -> bool:
        return (key, field) in self._c_field or self._fresh_field(key, field)

    def _cached_str(self, key: bytes) -> bytes | None:
        try:
            return self._c_str[key]
        except KeyError:
            value = None if self._fresh_key(key) else self._server_get(key)
            self._c_str[key] = value
            self._grow()
            return value

    @_reads
    def _server_get(self, key: bytes) -> bytes | None:
        return self._client.get(key)

    @_reads
    def _prefetch_strs(self, keys: list[bytes]) -> None:
        missing = [k for k in keys if k not in self._c_str]
        for i in range(0, len(missing), _BATCH):
            batch = missing[i : i + _BATCH]
            self._c_str.update(zip(batch, self._client.mget(batch)))
            self._grow(len(batch))

    def _cached_hash(self, key: bytes) -> dict[bytes, bytes]:
        try:
            return self._c_hash[key]
        except KeyError:
            value = {} if self._fresh_key(key) else self._server_hgetall(key)
            self._c_hash[key] = value
            self._grow(1 + len(value))
            return value

    @_reads
    def _server_hgetall(self, key: bytes) -> dict[bytes, bytes]:
        return self._client.hgetall(key)

    def _cached_field(self, key: bytes, field: bytes) -> bytes | None:
        try:
            return self._c_field[(key, field)]
        except KeyError:
            value = None if self._fresh_field(key, field) else self._server_hget(key, field)
            self._c_field[(key, field)] = value
            self._grow()
            return value

    def _seed_fields(self, key: bytes, values: dict[bytes, bytes | None]) -> None:
        """Remember fields of ``key`` just read from the server (a whole HGETALL, or fields
        known absent), so later reads of them cost no round trip."""
        fresh = {(key, f): v for f, v in values.items() if (key, f) not in self._c_field}
        self._c_field.update(fresh)
        self._grow(len(fresh))

    @_reads
    def _server_hget(self, key: bytes, field: bytes) -> bytes | None:
        return self._client.hget(key, field)

    @_reads
    def _hash_fields(self, key: bytes) -> list[bytes]:
        return self._client.hkeys(key)

    def _cached_list(self, key: bytes) -> bytes:
        try:
            return self._c_list[key]
        except KeyError:
            value = b"" if self._fresh_key(key) else self._server_list(key)
            self._c_list[key] = value
            self._grow()
            return value

    @_reads
    def _server_list(self, key: bytes) -> bytes:
        return b"".join(self._client.lrange(key, 0, -1))

    def _prefetch_lists(self, keys: list[bytes]) -> None:
        missing = [k for k in keys if k not in self._c_list]
        for key in [k for k in missing if self._fresh_key(k)]:
            self._c_list[key] = b""
        missing = [k for k in missing if k not in self._c_list]
        if missing:
            self._prefetch_server_lists(missing)

    @_reads
    def _prefetch_server_lists(self, missing: list[bytes]) -> None:
        for i in range(0, len(missing), _BATCH):
            batch = missing[i : i + _BATCH]
            pipe = self._client.pipeline(transaction=False)
            for key in batch:
                pipe.lrange(key, 0, -1)
            for key, items in zip(batch, pipe.execute()):
                self._c_list[key] = b"".join(items)
            self._grow(len(batch))

    @_reads
    def _scan_keys(self, pattern: bytes, regex: Any) -> list[bytes]:
        return [
            key
            for key in self._client.scan_iter(match=pattern, count=_SCAN_COUNT)
            if regex.fullmatch(key)
        ]

    def _scan_ints(self, pattern: bytes, regex: Any) -> list[int]:
        return [int(regex.fullmatch(key).group(1)) for key in self._scan_keys(pattern, regex)]

    def _scan_chunk_indexes(self, inode: int) -> list[int]:
        keys = self._scan_keys(b"c%d_*" % inode, codec.CHUNK_KEY)
        matches = [codec.CHUNK_KEY.fullmatch(k) for k in keys]
        return [int(m.group(2)) for m in matches if m]

    @_reads
    def _dbsize(self) -> int:
        return int(self._client.dbsize())

    # ---- sustained inodes: session{sid} sets, and their order in a sorted set of our own
    @_reads
    def _sustained(self) -> list[tuple[int, int]]:
        members = self._client.zrange(codec.SUSTAINED_ORDER, 0, -1)
        pairs = [tuple(int(x) for x in m.split(b":")) for m in members]
        return sorted(pairs, key=lambda p: p[0])  # type: ignore[misc]

    @_reads
    def _next_sustained_score(self) -> int:
        scores = self._client.zrange(codec.SUSTAINED_ORDER, -1, -1, withscores=True)
        return int(scores[0][1]) + 1 if scores else 1

    # ---- slices chunk records name without a sliceRef field (JuiceFS: one reference)
    def _named_without_ref(self, field: bytes) -> bool:
        """Whether the absent sliceRef ``field`` belongs to a slice chunk records named when the
        store opened: JuiceFS writes no field for a slice referenced once, and its HINCRBY
        counts such a slice as 1. A slice first named since (ours: its field is written in the
        same transaction) or never named has no reference yet.

        Slices numbered from ``nextchunk`` at opening cannot have been named; for the others
        one scan inside the server lists every such field (a database we wrote has none)."""
        m = codec.SLICE_FIELD.fullmatch(field)
        if m is None or int(m.group(1)) >= self._opened_slice:
            return False
        return field in self._named_without_refs()

    def _named_without_refs(self) -> set[bytes]:
        """The fields of :meth:`_named_without_ref`, found once. The set stays a superset of
        the absent ones: this store never deletes a sliceRef field, and writes the field of
        every slice it names."""
        if self._named_unref is None:
            self._named_unref = set(self._server_named_unref())
        return self._named_unref

    @_reads
    def _server_named_unref(self) -> list[bytes]:
        return self._client.eval(_scripts.NAMED_WITHOUT_REF, 1, codec.SLICE_REFS)

    @_reads
    def pin_slice_refs(self, pin: int) -> int:
        """Add ``pin`` to every slice-reference count below it, a slice chunk records name
        without a field counting 1 (:mod:`volume.pins`), in one pass inside the server; returns
        how many counts were pinned. Not a transaction (it cannot be rolled back): meant for a
        scratch copy (:meth:`edit_snapshot`)."""
        if self._read_only:
            raise VolumeReadOnly(f"the metadata store in {self._meta_dir} was opened read-only")
        with self._lock:
            check_not_nested(self)
            self._check_usable()
            named = ["scan"] if self._named_unref is None else ["list", *self._named_unref]
            pinned = self._client.eval(_scripts.PIN, 1, codec.SLICE_REFS, pin, *named)
            self._reset_cache()  # sliceRef changed behind the cache
            self._named_unref = set()  # every named slice has its field now
        return int(pinned)

    @contextlib.contextmanager
    def edit_snapshot(self, snapshot: str | Path) -> Iterator[RedisMetaStore]:
        """A writable store over ``snapshot``, an RDB file this store's :meth:`snapshot` wrote;
        on a clean exit the file is replaced by what that store then holds. This store is
        not changed.

        What :mod:`volume.pins` changes in a snapshot before it is published: a scratch server
        in a directory next to the file, without a journal (a failure leaves the file as it
        was), saved once and stopped without saving again. It is told which slices chunk
        records name without a sliceRef field (this store knows them), so nothing has to walk
        every chunk again.
        """
        snapshot = Path(snapshot)
        with self._lock:
            self._check_usable()
            named = None if self._read_only else set(self._named_without_refs())  # see snapshot
        with tempfile.TemporaryDirectory(prefix="volume-edit-", dir=snapshot.parent) as scratch:
            meta_dir = Path(scratch).resolve()
            try:  # the server saves into a new file and renames it: the link stays as it was
                os.link(snapshot, meta_dir / INDEX_FILENAME)
            except OSError:
                shutil.copyfile(snapshot, meta_dir / INDEX_FILENAME)
            server = RedisServer(meta_dir, INDEX_FILENAME, journal=False)
            try:
                store = type(self)(meta_dir, server, read_only=False)
            except BaseException:
                server.stop()
                raise
            try:
                store._named_unref = named
                yield store
                store._save_as(snapshot)
            finally:
                store._shut(save=False)

    # ------------------------------------------------------------------ snapshots

    @_reads
    def _save_as(self, dest: Path) -> None:
        """``SAVE`` and move the RDB to ``dest`` (a scratch store's last act: no fsync, the
        file is staged for an upload)."""
        with self._lock:
            self._flush()
            self._client.save()
            os.replace(self._meta_dir / INDEX_FILENAME, dest)

    @_reads
    def snapshot(self, dest: str | Path) -> int:
        """``SAVE`` (under the store's lock: no transaction is running) and copy the RDB to
        ``dest``, fsynced and renamed into place. A read-only store copies the RDB it loaded.

        A writable store first finds the slices chunk records name without a sliceRef field,
        unless it knows them: :meth:`edit_snapshot` needs them as of the snapshot or earlier
        (fields only get written later, so an older list holds every one the snapshot lacks)."""
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        with self._lock:
            check_not_nested(self)
            self._check_usable()
            if not self._read_only:
                self._named_without_refs()
                self._flush()
                self._client.save()
            try:
                shutil.copyfile(self._meta_dir / INDEX_FILENAME, part)
                _fsync(part)
                os.replace(part, dest)
            finally:
                part.unlink(missing_ok=True)
        return dest.stat().st_size

    @_io
    def sync(self) -> None:
        """Make every committed transaction durable (what fsync(2) in a mounted volume waits
        for): the queued writes are sent (the server writes them to its append-only journal
        before it replies) and the journal is fsynced. After a kill of this process, of the
        server or of both, reopening the meta dir loads the journal with all of them."""
        if self._read_only:
            return
        with self._lock:
            self._check_usable()
            self._flush()
            try:
                sync_journal(self._meta_dir)
            except OSError as exc:
                raise MetaStoreError(
                    f"cannot fsync the redis journal in {self._meta_dir}: {exc}"
                ) from exc

    def close(self) -> None:
        """Save (a writable store, so a reopen finds its data), stop the server, then drop the
        journal the saved RDB makes redundant."""
        self._shut(save=not self._read_only)

    def _shut(self, save: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            saved = False
            try:
                if save and self._broken is None and self._server.alive():
                    try:
                        self._flush()
                        self._client.save()
                        saved = True
                    except (redis.RedisError, MetaStoreError):
                        pass  # the server is going away; its journal keeps what it had
            finally:
                self._client.close()
                self._server.stop()
                self._reset_cache()
            if saved:  # the RDB holds everything: the journal is redundant
                remove_journal(self._meta_dir)

    def __repr__(self) -> str:
        mode = "read-only" if self._read_only else "writable"
        return f"{type(self).__name__}({str(self._meta_dir)!r}, {mode})"


# --------------------------------------------------------------------------- helpers


def _merge(pending: RedisTxn, txn: RedisTxn) -> None:
    """Fold a committed transaction into the writes not yet sent (later writes win)."""
    pending._str.update(txn._str)
    for key in txn._cleared:
        pending._cleared.add(key)
        pending._hash.pop(key, None)
    for key, delta in txn._hash.items():
        pending._hash.setdefault(key, {}).update(delta)
    for kf, value in txn._field.items():
        pending._field[kf] = value
        pending._incr.pop(kf, None)
    for kf, delta in txn._incr.items():
        if kf in pending._field:
            pending._field[kf] = str(int(pending._field[kf] or 0) + delta).encode()
        else:
            pending._incr[kf] = pending._incr.get(kf, 0) + delta
    for key, (before, now) in txn._list.items():
        first = pending._list[key][0] if key in pending._list else before
        pending._list[key] = (first, now)


def _emit(pipe: Any, writes: RedisTxn) -> None:
    """The commands that apply ``writes`` (deletions first, so later sets survive them)."""
    dels = [k for k, v in writes._str.items() if v is None]
    dels.extend(writes._cleared)
    if dels:
        pipe.delete(*dels)
    sets = {k: v for k, v in writes._str.items() if v is not None}
    if sets:
        pipe.mset(sets)
    for key, delta in writes._hash.items():
        _hash_changes(pipe, key, delta)
    by_key: dict[bytes, dict[bytes, bytes | None]] = {}
    for (key, field), value in writes._field.items():
        by_key.setdefault(key, {})[field] = value
    for key, delta in by_key.items():
        _hash_changes(pipe, key, delta)
    for (key, field), delta in writes._incr.items():
        pipe.hincrby(key, field, delta)
    for key, (before, now) in writes._list.items():
        if now == before:
            continue
        if before and now.startswith(before):
            pipe.rpush(key, *_records(now[len(before) :]))
            continue
        pipe.delete(key)
        if now:
            pipe.rpush(key, *_records(now))


def _sustained_changes(
    pipe: Any, current: list[tuple[int, int]], wanted: list[tuple[int, int]], next_score: int
) -> None:
    for sid, ino in current:
        if (sid, ino) not in wanted:
            pipe.srem(codec.session_key(sid), ino)
            pipe.zrem(codec.SUSTAINED_ORDER, b"%d:%d" % (sid, ino))
    for sid, ino in wanted:
        if (sid, ino) not in current:
            pipe.sadd(codec.session_key(sid), ino)
            pipe.zadd(codec.SUSTAINED_ORDER, {b"%d:%d" % (sid, ino): next_score})
            next_score += 1


def _hash_changes(pipe: Any, key: bytes, delta: dict[bytes, bytes | None]) -> None:
    sets = {f: v for f, v in delta.items() if v is not None}
    dels = [f for f, v in delta.items() if v is None]
    if dels:
        pipe.hdel(key, *dels)
    if sets:
        pipe.hset(key, mapping=sets)


def _records(blob: bytes) -> list[bytes]:
    return [blob[i : i + SLICE_RECORD_SIZE] for i in range(0, len(blob), SLICE_RECORD_SIZE)]


def _check_rdb_file(path: Path, scan: bool = True) -> None:
    """Raise VolumeIndexCorrupt unless ``path`` is an RDB file, complete and intact (``scan``:
    by redis-check-rdb, which reads it all)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except FileNotFoundError as exc:
        raise VolumeIndexCorrupt(f"the index file {path} does not exist") from exc
    if len(head) < 9 or not head.startswith(_RDB_MAGIC) or not head[5:].isdigit():
        raise VolumeIndexCorrupt(
            f"{path} is not a Redis RDB file ({path.stat().st_size} bytes without the REDIS "
            f"header); it is empty, truncated or another kind of file"
        )
    problem = check_rdb(path) if scan else None
    if problem is not None:
        raise VolumeIndexCorrupt(
            f"{path} is a damaged or truncated Redis RDB file ({problem}); it cannot be used as "
            f"a volume index"
        )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
