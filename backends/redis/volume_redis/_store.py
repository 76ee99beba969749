"""``RedisMetaStore``: one volume's namespace in the JuiceFS Redis layout, on a private server.

Why a process lock and one MULTI/EXEC per transaction are enough for atomic, isolated
transactions: the server is private to the store. It listens only on a unix socket (mode 0600)
inside the meta dir, which the lifecycle holds exclusively, and nothing but this store object
talks to it. Every transaction holds the store's lock from its first read to its commit, so no
other transaction of this process can interleave; and nothing outside the process can. Writes
are buffered in the transaction (:mod:`._txn`) and sent together in one MULTI/EXEC block, which
Redis applies all at once or not at all, so a failed or interrupted transaction leaves nothing
behind and a reader never sees half of one. For the same reason the store may cache what the
server holds (every change passes through it): reads of cached keys cost no round trip.

The live data lives in the server's memory; ``<meta_dir>/meta.rdb`` is written by ``SAVE`` when
the store snapshots and when a writable store closes. A snapshot is the RDB file itself, which
``redis-server`` (and the JuiceFS client through it) loads as is.
"""

from __future__ import annotations

import functools
import os
import shutil
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
    ROOT_INODE,
    SLICE_RECORD_SIZE,
    TRASH_INODE,
    TYPE_DIRECTORY,
    Attr,
    Format,
)
from volume.stores import MetaStore, MetaStoreCapabilities

from . import _codec as codec
from ._errors import RedisServerGone, RedisServerStartError
from ._server import SERVER_FILES, RedisServer, check_rdb, stop_stale
from ._txn import RedisTxn, check_not_nested

INDEX_FILENAME = "meta.rdb"
_RDB_MAGIC = b"REDIS"
_SOCKET_TIMEOUT_S = 60.0
_CACHE_LIMIT = 1_000_000  # cached keys and fields before the cache starts over
_SCAN_COUNT = 1000
_BATCH = 1000

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
        self._reset_cache()

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
            server = RedisServer(meta_dir, INDEX_FILENAME)
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
    def restore(cls, index_path: str | Path, meta_dir: str | Path) -> None:
        """Install the RDB snapshot ``index_path`` as ``<meta_dir>/meta.rdb``, atomically.

        The file is checked first with ``redis-check-rdb`` (structure and CRC64 of the whole
        file); a bad file raises :class:`~volume.errors.VolumeIndexCorrupt` and leaves
        ``meta_dir`` as it was. A server left running for ``meta_dir`` by a dead process is
        stopped first.
        """
        index_path, meta_dir = Path(index_path), Path(meta_dir).resolve()
        _check_rdb_file(index_path)
        meta_dir.mkdir(parents=True, exist_ok=True)
        stop_stale(meta_dir)
        staging = meta_dir / f".{INDEX_FILENAME}.restoring"
        try:
            shutil.copyfile(index_path, staging)
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

    # ------------------------------------------------------------------ format

    @_io
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
        if text is None:
            raise VolumeIndexCorrupt(
                f"the redis metadata database in {self._meta_dir} is not a formatted volume "
                f"index: it has no 'setting' key"
            )
        try:
            return Format.from_json(text)
        except (ValueError, TypeError) as exc:
            raise VolumeIndexCorrupt(
                f"the 'setting' key in {self._meta_dir} is not a valid Format JSON object: {exc}"
            ) from exc

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
        if not txn.changed():
            return
        pipe = self._client.pipeline(transaction=True)
        sets = {k: v for k, v in txn._str.items() if v is not None}
        dels = [k for k, v in txn._str.items() if v is None]
        dels.extend(txn._cleared)
        if dels:
            pipe.delete(*dels)
        if sets:
            pipe.mset(sets)
        for key, delta in txn._hash.items():
            _hash_changes(pipe, key, delta)
        by_key: dict[bytes, dict[bytes, bytes | None]] = {}
        for (key, field), value in txn._field.items():
            by_key.setdefault(key, {})[field] = value
        for key, delta in by_key.items():
            _hash_changes(pipe, key, delta)
        for (key, field), delta in txn._incr.items():
            pipe.hincrby(key, field, delta)
        for key, (before, now) in txn._list.items():
            if now == before:
                continue
            if before and now.startswith(before):
                pipe.rpush(key, *_records(now[len(before) :]))
                continue
            pipe.delete(key)
            if now:
                pipe.rpush(key, *_records(now))
        if txn._sustained is not None:
            self._sustained_changes(pipe, txn._sustained)
        pipe.execute()
        self._absorb(txn)

    # ------------------------------------------------------------------ cache

    def _reset_cache(self) -> None:
        self._c_str: dict[bytes, bytes | None] = {}
        self._c_hash: dict[bytes, dict[bytes, bytes]] = {}
        self._c_names: dict[bytes, list[bytes]] = {}
        self._c_field: dict[tuple[bytes, bytes], bytes | None] = {}
        self._c_list: dict[bytes, bytes] = {}
        self._c_size = 0

    def _grow(self, n: int = 1) -> None:
        self._c_size += n
        if self._c_size > _CACHE_LIMIT:
            self._reset_cache()

    def _absorb(self, txn: RedisTxn) -> None:
        """Fold a committed transaction into the cache."""
        self._c_str.update(txn._str)
        self._grow(len(txn._str))
        for key in txn._cleared:
            self._c_hash[key] = {}
            self._c_names.pop(key, None)
        for key, delta in txn._hash.items():
            cached = self._c_hash.get(key)
            names = self._c_names.get(key)
            for field, value in delta.items():
                if value is None:
                    if cached is not None and cached.pop(field, None) is not None and names:
                        i = _bisect_index(names, field)
                        if i is not None:
                            del names[i]
                elif cached is not None:
                    if field not in cached and names is not None:
                        _insort(names, field)
                    cached[field] = value
        self._c_field.update(txn._field)
        self._grow(len(txn._field))
        for kf in txn._incr:
            self._c_field.pop(kf, None)
        for key, (_before, now) in txn._list.items():
            self._c_list[key] = now
        self._grow(len(txn._list))

    @_io
    def _cached_str(self, key: bytes) -> bytes | None:
        try:
            return self._c_str[key]
        except KeyError:
            value = self._client.get(key)
            self._c_str[key] = value
            self._grow()
            return value

    @_io
    def _prefetch_strs(self, keys: list[bytes]) -> None:
        missing = [k for k in keys if k not in self._c_str]
        for i in range(0, len(missing), _BATCH):
            batch = missing[i : i + _BATCH]
            self._c_str.update(zip(batch, self._client.mget(batch)))
            self._grow(len(batch))

    @_io
    def _cached_hash(self, key: bytes) -> dict[bytes, bytes]:
        try:
            return self._c_hash[key]
        except KeyError:
            value = self._client.hgetall(key)
            self._c_hash[key] = value
            self._grow(1 + len(value))
            return value

    def _sorted_names(self, key: bytes) -> list[bytes]:
        names = self._c_names.get(key)
        if names is None:
            names = self._c_names[key] = sorted(self._cached_hash(key))
        return names

    def _field_is_cached(self, key: bytes, field: bytes) -> bool:
        return (key, field) in self._c_field

    @_io
    def _cached_field(self, key: bytes, field: bytes) -> bytes | None:
        try:
            return self._c_field[(key, field)]
        except KeyError:
            value = self._client.hget(key, field)
            self._c_field[(key, field)] = value
            self._grow()
            return value

    @_io
    def _hash_fields(self, key: bytes) -> list[bytes]:
        return self._client.hkeys(key)

    @_io
    def _cached_list(self, key: bytes) -> bytes:
        try:
            return self._c_list[key]
        except KeyError:
            value = b"".join(self._client.lrange(key, 0, -1))
            self._c_list[key] = value
            self._grow()
            return value

    @_io
    def _prefetch_lists(self, keys: list[bytes]) -> None:
        missing = [k for k in keys if k not in self._c_list]
        for i in range(0, len(missing), _BATCH):
            batch = missing[i : i + _BATCH]
            pipe = self._client.pipeline(transaction=False)
            for key in batch:
                pipe.lrange(key, 0, -1)
            for key, items in zip(batch, pipe.execute()):
                self._c_list[key] = b"".join(items)
            self._grow(len(batch))

    @_io
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
        return [int(codec.CHUNK_KEY.fullmatch(k).group(2)) for k in keys]  # type: ignore[union-attr]

    @_io
    def _dbsize(self) -> int:
        return int(self._client.dbsize())

    # ---- sustained inodes: session{sid} sets, and their order in a sorted set of our own
    @_io
    def _sustained(self) -> list[tuple[int, int]]:
        members = self._client.zrange(codec.SUSTAINED_ORDER, 0, -1)
        pairs = [tuple(int(x) for x in m.split(b":")) for m in members]
        return sorted(pairs, key=lambda p: p[0])  # type: ignore[misc]

    def _sustained_changes(self, pipe: Any, wanted: list[tuple[int, int]]) -> None:
        current = self._sustained()
        for sid, ino in current:
            if (sid, ino) not in wanted:
                pipe.srem(codec.session_key(sid), ino)
                pipe.zrem(codec.SUSTAINED_ORDER, b"%d:%d" % (sid, ino))
        scores = self._client.zrange(codec.SUSTAINED_ORDER, -1, -1, withscores=True)
        next_score = int(scores[0][1]) + 1 if scores else 1
        for sid, ino in wanted:
            if (sid, ino) not in current:
                pipe.sadd(codec.session_key(sid), ino)
                pipe.zadd(codec.SUSTAINED_ORDER, {b"%d:%d" % (sid, ino): next_score})
                next_score += 1

    # ------------------------------------------------------------------ snapshots

    @_io
    def snapshot(self, dest: str | Path) -> int:
        """``SAVE`` (under the store's lock: no transaction is running) and copy the RDB to
        ``dest``, fsynced and renamed into place. A read-only store copies the RDB it loaded."""
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        with self._lock:
            check_not_nested(self)
            self._check_usable()
            if not self._read_only:
                self._client.save()
            try:
                shutil.copyfile(self._meta_dir / INDEX_FILENAME, part)
                _fsync(part)
                os.replace(part, dest)
            finally:
                part.unlink(missing_ok=True)
        return dest.stat().st_size

    def close(self) -> None:
        """Save (a writable store, so a reopen finds its data), then stop the server."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not self._read_only and self._broken is None and self._server.alive():
                    try:
                        self._client.save()
                    except redis.RedisError:
                        pass  # the server is going away; its data was not committed anyway
            finally:
                self._client.close()
                self._server.stop()
                self._reset_cache()

    def __repr__(self) -> str:
        mode = "read-only" if self._read_only else "writable"
        return f"{type(self).__name__}({str(self._meta_dir)!r}, {mode})"


# --------------------------------------------------------------------------- helpers


def _hash_changes(pipe: Any, key: bytes, delta: dict[bytes, bytes | None]) -> None:
    sets = {f: v for f, v in delta.items() if v is not None}
    dels = [f for f, v in delta.items() if v is None]
    if dels:
        pipe.hdel(key, *dels)
    if sets:
        pipe.hset(key, mapping=sets)


def _records(blob: bytes) -> list[bytes]:
    return [blob[i : i + SLICE_RECORD_SIZE] for i in range(0, len(blob), SLICE_RECORD_SIZE)]


def _bisect_index(names: list[bytes], name: bytes) -> int | None:
    import bisect

    i = bisect.bisect_left(names, name)
    return i if i < len(names) and names[i] == name else None


def _insort(names: list[bytes], name: bytes) -> None:
    import bisect

    bisect.insort(names, name)


def _check_rdb_file(path: Path) -> None:
    """Raise VolumeIndexCorrupt unless ``path`` is a complete, intact RDB file."""
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
    problem = check_rdb(path)
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
