"""``RedisTxn``: one transaction over the private server, as a write overlay applied in MULTI/EXEC.

Reads go to the overlay first, then to the store's cache of what the server holds, then to the
server. Writes only change the overlay; a successful commit sends every change of the overlay in
one MULTI/EXEC block (all of it is applied or none) and then folds it into the cache. A rollback
drops the overlay: the server never saw any of it. The store's lock is held from enter to exit,
so the overlay is always computed against the state it is applied to (see ``_store``).
"""

from __future__ import annotations

import bisect
import functools
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from volume.errors import MetaStoreError, VolumeReadOnly
from volume.juicefs import (
    CHUNK_SIZE,
    SLICE_RECORD_SIZE,
    TYPE_DIRECTORY,
    TYPE_FILE,
    Attr,
    unpack_slices,
)
from volume.stores import MetaTxn

from . import _codec as codec

if TYPE_CHECKING:
    from ._store import RedisMetaStore

#: candidate chunk indexes probed from a file's length before scanning the key space instead
_MAX_PROBED_CHUNKS = 4096

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _writes(method: _Method) -> _Method:
    """Refuse the wrapped record operation inside a read-only transaction."""

    @functools.wraps(method)
    def guarded(self: RedisTxn, *args: Any, **kwargs: Any) -> Any:
        if not self._writable:
            raise VolumeReadOnly(
                f"{method.__name__} needs a write transaction; open it with "
                f"transaction(write=True) on a store opened writable"
            )
        return method(self, *args, **kwargs)

    return guarded  # type: ignore[return-value]


class RedisTxn(MetaTxn):
    """One transaction; also the context manager that begins and ends it."""

    def __init__(self, store: RedisMetaStore, write: bool) -> None:
        self._s = store
        self._writable = write
        self._str: dict[bytes, bytes | None] = {}  # strings written (None: deleted)
        self._hash: dict[bytes, dict[bytes, bytes | None]] = {}  # d/x hashes: field changes
        self._cleared: set[bytes] = set()  # d/x hashes deleted before their field changes
        self._field: dict[tuple[bytes, bytes], bytes | None] = {}  # sliceRef, p, dir stats
        self._incr: dict[tuple[bytes, bytes], int] = {}  # increments of fields never read
        # sliceRef fields a listing found absent for a slice chunk records name: 1 reference
        self._implied: set[bytes] = set()
        self._list: dict[bytes, tuple[bytes, bytes]] = {}  # chunk key -> (before, now)
        self._sustained: list[tuple[int, int]] | None = None  # the whole list once changed
        self._links: dict[int, dict[int, int]] = {}  # non-directory inode -> parent -> delta

    # ------------------------------------------------------------------ begin / end

    def __enter__(self) -> RedisTxn:
        self._s._begin()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is None and self._writable:
                self._s._commit(self)
        finally:
            self._writable = False
            self._s._end()

    def changed(self) -> bool:
        return bool(
            self._str or self._hash or self._cleared or self._field or self._incr or self._list
            or self._sustained is not None or self._links
        )  # fmt: skip

    # ------------------------------------------------------------------ overlay reads

    def _get_str(self, key: bytes) -> bytes | None:
        if key in self._str:
            return self._str[key]
        return self._s._cached_str(key)

    def _get_hash(self, key: bytes) -> dict[bytes, bytes]:
        """The whole hash as this transaction sees it (a copy when it was changed)."""
        base = {} if key in self._cleared else self._s._cached_hash(key)
        delta = self._hash.get(key)
        if not delta:
            return base
        merged = dict(base)
        for field, value in delta.items():
            if value is None:
                merged.pop(field, None)
            else:
                merged[field] = value
        return merged

    def _get_hash_field(self, key: bytes, field: bytes) -> bytes | None:
        delta = self._hash.get(key)
        if delta is not None and field in delta:
            return delta[field]
        if key in self._cleared:
            return None
        return self._s._cached_hash(key).get(field)

    def _set_hash_field(self, key: bytes, field: bytes, value: bytes | None) -> None:
        self._hash.setdefault(key, {})[field] = value

    def _get_field(self, key: bytes, field: bytes) -> bytes | None:
        kf = (key, field)
        if kf in self._field:
            return self._field[kf]
        base = self._s._cached_field(key, field)
        pending = self._incr.pop(kf, None)
        if pending is None:
            return base
        value = str(int(base or 0) + pending).encode()
        self._field[kf] = value
        return value

    def _incr_field(self, key: bytes, field: bytes, delta: int) -> None:
        kf = (key, field)
        if kf in self._field:
            self._field[kf] = str(int(self._field[kf] or 0) + delta).encode()
        elif self._s._field_is_known(key, field):
            self._field[kf] = str(int(self._s._cached_field(key, field) or 0) + delta).encode()
        else:
            self._incr[kf] = self._incr.get(kf, 0) + delta

    def _get_list(self, key: bytes) -> bytes:
        if key in self._list:
            return self._list[key][1]
        return self._s._cached_list(key)

    def _set_list(self, key: bytes, value: bytes) -> None:
        before = self._list[key][0] if key in self._list else self._s._cached_list(key)
        self._list[key] = (before, value)

    # ---- inodes
    def get_attr(self, inode: int) -> Attr | None:
        raw = self._get_str(codec.inode_key(inode))
        return None if raw is None else codec.unpack_attr(raw)

    @_writes
    def set_attr(self, inode: int, attr: Attr) -> None:
        self._str[codec.inode_key(inode)] = codec.pack_attr(attr)

    @_writes
    def delete_attr(self, inode: int) -> None:
        self._str[codec.inode_key(inode)] = None

    def iter_attrs(self) -> Iterator[tuple[int, Attr]]:
        inodes = set(self._s._scan_ints(b"i*", codec.INODE_KEY))
        inodes.update(
            int(m.group(1)) for key in self._str if (m := codec.INODE_KEY.fullmatch(key))
        )
        ordered = sorted(inodes)
        keys = [codec.inode_key(i) for i in ordered]
        self._s._prefetch_strs([key for key in keys if key not in self._str])
        for inode in ordered:
            attr = self.get_attr(inode)
            if attr is not None:
                yield inode, attr

    # ---- directory entries
    def lookup(self, parent: int, name: bytes) -> tuple[int, int] | None:
        raw = self._get_hash_field(codec.entry_key(parent), name)
        return None if raw is None else codec.unpack_entry(raw)

    @_writes
    def add_entry(self, parent: int, name: bytes, inode: int, type: int) -> None:
        self._set_hash_field(codec.entry_key(parent), name, codec.pack_entry(type, inode))
        if type != TYPE_DIRECTORY:  # p{inode} is settled at commit (see _store._settle_links)
            links = self._links.setdefault(inode, {})
            links[parent] = links.get(parent, 0) + 1

    @_writes
    def remove_entry(self, parent: int, name: bytes) -> None:
        key = codec.entry_key(parent)
        raw = self._get_hash_field(key, name)
        if raw is None:
            return
        self._set_hash_field(key, name, None)
        inode, type_ = codec.unpack_entry(raw)
        if type_ != TYPE_DIRECTORY:
            links = self._links.setdefault(inode, {})
            links[parent] = links.get(parent, 0) - 1

    def list_entries(
        self, parent: int, after: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, int, int]]:
        key = codec.entry_key(parent)
        if key in self._hash or key in self._cleared:
            listing = sorted(
                (name, *codec.unpack_entry(raw)) for name, raw in self._get_hash(key).items()
            )
        else:
            listing = self._s._cached_listing(key)
        start = 0 if after is None else bisect.bisect_right(listing, after, key=_name)
        stop = len(listing) if limit is None else min(len(listing), start + max(limit, 0))
        return listing[start:stop]

    def has_entries(self, parent: int) -> bool:
        return bool(self._get_hash(codec.entry_key(parent)))

    def entry_parents(self, inode: int) -> list[tuple[int, bytes]]:
        """Entries naming ``inode``, found in the directories that may hold one: its attr's
        parent, the parents in ``p{inode}`` (hard links) and those of unsettled links; every
        directory when none is known (entries of an inode that has no attr)."""
        attr = self.get_attr(inode)
        pkey = codec.parent_key(inode)
        candidates = set(self._links.get(inode, ())) | set(self._s._orphan_links.get(inode, ()))
        if attr is not None and attr.parent:
            candidates.add(attr.parent)
        fields = set(self._s._hash_fields(pkey)) | {f for k, f in self._field if k == pkey}
        candidates.update(int(f) for f in fields if int(self._get_field(pkey, f) or 0) > 0)
        if attr is None and not candidates:
            candidates = set(self._s._scan_ints(b"d*", codec.ENTRY_KEY))
            candidates.update(
                int(m.group(1)) for key in self._hash if (m := codec.ENTRY_KEY.fullmatch(key))
            )
        out = []
        for parent in sorted(candidates):
            for name, raw in self._get_hash(codec.entry_key(parent)).items():
                if codec.unpack_entry(raw)[0] == inode:
                    out.append((parent, name))
        return out

    # ---- symlinks
    def get_symlink(self, inode: int) -> bytes | None:
        return self._get_str(codec.symlink_key(inode))

    @_writes
    def set_symlink(self, inode: int, target: bytes) -> None:
        self._str[codec.symlink_key(inode)] = bytes(target)

    @_writes
    def delete_symlink(self, inode: int) -> None:
        self._str[codec.symlink_key(inode)] = None

    # ---- extended attributes
    def get_xattr(self, inode: int, name: str) -> bytes | None:
        return self._get_hash_field(codec.xattr_key(inode), name.encode())

    @_writes
    def set_xattr(self, inode: int, name: str, value: bytes) -> None:
        self._set_hash_field(codec.xattr_key(inode), name.encode(), bytes(value))

    @_writes
    def remove_xattr(self, inode: int, name: str) -> bool:
        key, field = codec.xattr_key(inode), name.encode()
        existed = self._get_hash_field(key, field) is not None
        self._set_hash_field(key, field, None)
        return existed

    def list_xattrs(self, inode: int) -> list[tuple[str, bytes]]:
        items = self._get_hash(codec.xattr_key(inode))
        return sorted((name.decode(), value) for name, value in items.items())

    @_writes
    def delete_xattrs(self, inode: int) -> None:
        key = codec.xattr_key(inode)
        self._cleared.add(key)
        self._hash.pop(key, None)

    # ---- chunks and slice references
    def read_chunk(self, inode: int, indx: int) -> bytes:
        return self._get_list(codec.chunk_key(inode, indx))

    @_writes
    def append_chunk(self, inode: int, indx: int, records: bytes) -> int:
        key = codec.chunk_key(inode, indx)
        value = self._get_list(key) + bytes(records)
        self._set_list(key, value)
        return len(value) // SLICE_RECORD_SIZE

    @_writes
    def write_chunk(self, inode: int, indx: int, records: bytes) -> None:
        self._set_list(codec.chunk_key(inode, indx), bytes(records))

    def chunk_indexes(self, inode: int) -> list[int]:
        attr = self.get_attr(inode)
        prefix = b"c%d_" % inode
        touched = {
            int(key[len(prefix) :]) for key in self._list if key.startswith(prefix)
        }
        if attr is not None and attr.type == TYPE_FILE:
            count = (attr.length - 1) // CHUNK_SIZE + 1 if attr.length > 0 else 1
        else:
            count = _MAX_PROBED_CHUNKS + 1
        if count > _MAX_PROBED_CHUNKS:
            candidates = set(self._s._scan_chunk_indexes(inode)) | touched
        else:
            candidates = set(range(count)) | touched
            keys = [codec.chunk_key(inode, i) for i in candidates]
            self._s._prefetch_lists([key for key in keys if key not in self._list])
        return sorted(i for i in candidates if self._get_list(codec.chunk_key(inode, i)))

    def iter_chunks(self) -> Iterator[tuple[int, int, bytes]]:
        keys = set(self._s._scan_keys(b"c*", codec.CHUNK_KEY))
        keys.update(key for key in self._list if codec.CHUNK_KEY.fullmatch(key))
        decoded = sorted(
            (int(m.group(1)), int(m.group(2)), key)
            for key in keys
            if (m := codec.CHUNK_KEY.fullmatch(key))
        )
        self._s._prefetch_lists([key for _, _, key in decoded if key not in self._list])
        for inode, indx, key in decoded:
            records = self._get_list(key)
            if records:
                yield inode, indx, records

    @_writes
    def add_slice_ref(self, slice_id: int, size: int, delta: int) -> int:
        # JuiceFS keeps refs - 1 in sliceRef and leaves the field out for a slice written once
        # (absent = 1 reference, what its HINCRBY counts from); ours writes it from the first
        # reference. So an absent field is 1 reference for a slice chunk records named without
        # one (a client wrote it) and none for a slice no record named yet (a new slice, whose
        # record this transaction adds)
        field = codec.slice_field(slice_id, size)
        raw = self._get_field(codec.SLICE_REFS, field)
        named = raw is None and (field in self._implied or self._s._named_without_ref(field))
        base = 1 if named else 0
        refs = (base if raw is None else int(raw) + 1) + delta
        self._field[(codec.SLICE_REFS, field)] = str(refs - 1).encode()
        return refs

    def slice_refs(self) -> Iterator[tuple[int, int, int]]:
        """Every slice with its reference count: the sliceRef fields (one HGETALL), and, as
        JuiceFS reads them, the slices chunk records name without a field (1 reference)."""
        key = codec.SLICE_REFS
        values: dict[bytes, bytes | None] = dict(self._s._server_hgetall(key))
        self._s._seed_fields(key, values)  # the pins that follow a listing read each field
        mine = {f for k, f in self._field if k == key} | {f for k, f in self._incr if k == key}
        for field in mine:
            values[field] = self._get_field(key, field)
        out = []
        for field, raw in values.items():
            m = codec.SLICE_FIELD.fullmatch(field)
            if raw is not None and m:
                out.append((int(m.group(1)), int(m.group(2)), int(raw) + 1))
        for _, _, blob in self.iter_chunks():
            for rec in unpack_slices(blob):
                field = codec.slice_field(rec.id, rec.size)
                if rec.id and values.get(field) is None and field not in self._implied:
                    self._implied.add(field)
                    out.append((rec.id, rec.size, 1))
        self._s._seed_fields(key, {f: None for f in self._implied if f not in values})
        return iter(sorted(out))

    # ---- counters (SQL convention outside, JuiceFS Redis convention inside)
    def _counter_raw(self, key: bytes) -> int:
        raw = self._get_str(key)
        if raw is None:
            return 1 if key == b"nextinode" else 0  # inodes 0 and 1 are never handed out
        return int(raw)

    def get_counter(self, name: str) -> int:
        key, offset = codec.counter_key(name)
        if self._get_str(key) is None:
            return 2 if key == b"nextinode" else 0
        return self._counter_raw(key) + offset

    @_writes
    def add_counter(self, name: str, delta: int) -> int:
        key, offset = codec.counter_key(name)
        value = self._counter_raw(key) + delta
        self._str[key] = str(value).encode()
        return value + offset

    @_writes
    def set_counter(self, name: str, value: int) -> None:
        key, offset = codec.counter_key(name)
        self._str[key] = str(value - offset).encode()

    # ---- sustained inodes (session{sid} sets; their order in a key of our own)
    def sustained(self) -> list[tuple[int, int]]:
        if self._sustained is not None:
            return sorted(self._sustained, key=lambda s: s[0])
        return self._s._sustained()

    def _sustained_list(self) -> list[tuple[int, int]]:
        if self._sustained is None:
            self._sustained = self._s._sustained()
        return self._sustained

    @_writes
    def add_sustained(self, session: int, inode: int) -> None:
        current = self._sustained_list()
        if (session, inode) not in current:
            current.append((session, inode))

    @_writes
    def remove_sustained(self, session: int, inode: int) -> None:
        current = self._sustained_list()
        if (session, inode) in current:
            current.remove((session, inode))

    # ---- per-directory statistics (dirDataLength / dirUsedSpace / dirUsedInodes hashes)
    @_writes
    def update_dir_stats(self, inode: int, length: int, space: int, inodes: int) -> None:
        field = b"%d" % inode
        for key, delta in zip(codec.DIR_STATS, (length, space, inodes)):
            self._incr_field(key, field, delta)

    @_writes
    def delete_dir_stats(self, inode: int) -> None:
        field = b"%d" % inode
        for key in codec.DIR_STATS:
            self._incr.pop((key, field), None)
            self._field[(key, field)] = None

    def get_dir_stats(self, inode: int) -> tuple[int, int, int] | None:
        field = b"%d" % inode
        values = [self._get_field(key, field) for key in codec.DIR_STATS]
        if all(v is None for v in values):
            return None
        return tuple(int(v or 0) for v in values)  # type: ignore[return-value]


def _name(entry: tuple[bytes, int, int]) -> bytes:
    return entry[0]


def check_not_nested(store: RedisMetaStore) -> None:
    if store._in_txn:
        raise MetaStoreError(
            "transactions of a metadata store do not nest; run the inner work in the enclosing "
            "transaction"
        )
