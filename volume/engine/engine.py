"""The file-system engine: inode-level POSIX operations over a MetaStore and an ObjectStore.

This is "the client": namespace rules live here once (:mod:`volume.engine.namespace`), the
storage of records lives in the metadata store, and file data flows through per-inode write
buffers into immutable blocks (:mod:`volume.engine.files`, which also documents the lock order;
fallocate and copy_file_range are in :mod:`volume.engine.ranges`).
This module holds what both halves share and the lifecycle API (freeze, flush, drain, snapshot,
fsync, close). Errors are ``OSError`` with the errno Linux would give, so the FUSE layer only
translates.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from ..errors import MetaStoreError, VolumeCommitError, VolumeMountError
from ..juicefs import (
    COUNTER_NEXT_CHUNK,
    COUNTER_NEXT_INODE,
    COUNTER_TOTAL_INODES,
    COUNTER_USED_SPACE,
    TYPE_DIRECTORY,
    TYPE_FILE,
    TYPE_SYMLINK,
    Attr,
    align4k,
    unpack_slices,
)
from ..stores import MetaStore, MetaTxn, ObjectStore
from .blocks import BlockStore
from .compaction import DEFAULT_COMPACTION, CompactionPolicy, CompactionQueue
from .diskcache import DiskCache
from .files import FileOps, Handle, OpenInode
from .namespace import NOW, RENAME_EXCHANGE, RENAME_NOREPLACE, NamespaceOps, StatFS, space
from .posix import Caller, check_access, fs_error
from .ranges import RangeOps

__all__ = ["NOW", "RENAME_EXCHANGE", "RENAME_NOREPLACE", "Engine", "StatFS"]

log = logging.getLogger("volume.engine")

INODE_BATCH = 1024
SLICE_BATCH = 4096

T = TypeVar("T")


@contextlib.contextmanager
def _enospc() -> Iterator[None]:
    """A metadata store that ran out of disk space (its error carries ``errno`` ENOSPC) fails
    the change with ``OSError(ENOSPC)``, which the writer sees; its transaction was rolled back."""
    try:
        yield
    except MetaStoreError as exc:
        if getattr(exc, "errno", None) == errno.ENOSPC:
            raise OSError(errno.ENOSPC, str(exc)) from exc
        raise


class Engine(NamespaceOps, FileOps, RangeOps):
    """A mounted volume's file system, without any kernel involvement.

    Thread-safe, under the lock order documented in :mod:`volume.engine.files`. ``compaction``
    says when chunks fragmented by many small writes are rewritten with fewer records (None:
    never; see :mod:`volume.engine.compaction`). ``buffer_bytes`` bounds the bytes held in memory
    for blocks not yet stored (buffered and failed uploads alike); a writer past it waits, and
    after ``io_timeout`` seconds (None: forever) fails with ``EIO``. ``cache_bytes`` bounds the
    in-memory cache of blocks read from a remote store; blocks this engine stored keep only a
    small share (``blocks.WRITTEN_CACHE_BYTES``), so writing stays near ``buffer_bytes``.
    """

    def __init__(
        self,
        meta: MetaStore,
        objects: ObjectStore,
        *,
        read_only: bool = False,
        cache_bytes: int = 256 << 20,
        upload_workers: int = 8,
        buffer_bytes: int = 300 << 20,
        readahead_blocks: int = 2,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_dir_bytes: int = 10 << 30,
        compaction: CompactionPolicy | None = DEFAULT_COMPACTION,
        io_timeout: float | None = 60.0,
    ):
        self.meta = meta
        self.fmt = meta.load_format()
        self._check_format_supported()
        self.read_only = read_only
        self.io_timeout = io_timeout
        self.blocks = BlockStore(
            objects,
            self.fmt.Name,
            self.fmt.block_bytes,
            hash_prefix=self.fmt.HashPrefix,
            cache_bytes=cache_bytes,
            upload_workers=upload_workers,
            max_pending_bytes=buffer_bytes,
            disk_cache=self._disk_cache(objects, cache_dir, cache_dir_bytes),
            wait_timeout=io_timeout,
        )
        self.readahead_bytes = readahead_blocks * self.fmt.block_bytes
        self._table_lock = threading.RLock()  # the open-inode and handle tables
        self._ids_lock = threading.Lock()  # the id batches
        self._open: dict[int, OpenInode] = {}
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._inode_ids = (0, 0)  # [next, limit) of the current batch
        self._slice_ids = (0, 0)
        self._closed = False
        self._frozen = False
        #: set by every metadata write; the lifecycle clears it when it commits a snapshot
        self.modified = False
        self._session = 0  # JuiceFS session id, taken when first needed
        if not read_only:
            self._drop_sustained()
        self.compaction = compaction
        self._compactions = (
            None
            if compaction is None or read_only
            else CompactionQueue(self.compact_chunk, compaction)
        )

    def _disk_cache(
        self, objects: ObjectStore, cache_dir: str | os.PathLike[str] | None, capacity: int
    ) -> DiskCache | None:
        """A block cache below ``cache_dir/<UUID>`` for remote stores (local stores are served
        by the page cache)."""
        if cache_dir is None or objects.capabilities.local:
            return None
        return DiskCache(Path(cache_dir) / self.fmt.UUID, capacity)

    def _check_format_supported(self) -> None:
        fmt = self.fmt
        unsupported = []
        if fmt.Compression not in ("", "none"):
            unsupported.append(f"compression {fmt.Compression!r}")
        if fmt.Shards > 1:
            unsupported.append(f"{fmt.Shards} shards")
        if fmt.values.get("EncryptKey"):
            unsupported.append("encryption")
        if unsupported:
            raise VolumeMountError(
                f"volume {fmt.Name!r} uses {', '.join(unsupported)}, which this version cannot "
                f"read or write; mount it with the JuiceFS client instead"
            )

    # ================================================================== transactions

    @contextlib.contextmanager
    def _change(self) -> Iterator[MetaTxn]:
        """A write transaction for a user's change: EROFS on a read-only or frozen engine (the
        frozen flag is checked inside the transaction, so nothing commits after :meth:`freeze`
        returned)."""
        if self.read_only:
            raise fs_error(errno.EROFS)
        with _enospc(), self.meta.transaction(write=True) as tx:
            if self._frozen:
                raise fs_error(errno.EROFS)
            self.modified = True
            yield tx

    @contextlib.contextmanager
    def _recording(self) -> Iterator[MetaTxn]:
        """A write transaction that records work accepted earlier (buffered writes, a
        compaction, the deletion of an inode whose last handle went); allowed while frozen."""
        if self.read_only:
            raise fs_error(errno.EROFS)
        with _enospc(), self.meta.transaction(write=True) as tx:
            self.modified = True
            yield tx

    def _read(self, fn: Callable[[MetaTxn], T]) -> T:
        with self.meta.transaction(write=False) as tx:
            return fn(tx)

    @staticmethod
    def _attr(tx: MetaTxn, ino: int) -> Attr:
        attr = tx.get_attr(ino)
        if attr is None:
            raise fs_error(errno.ENOENT)
        return attr

    def _dir(self, tx: MetaTxn, ino: int, caller: Caller, mask: int) -> Attr:
        attr = self._attr(tx, ino)
        if attr.type != TYPE_DIRECTORY:
            raise fs_error(errno.ENOTDIR)
        check_access(attr, mask, caller)
        return attr

    def _alloc(self, which: str) -> int:
        """Next id from the in-memory batch, refilling it in its own transaction.

        A refill is made durable at once: after a crash, no id of it is handed out again, so no
        block key is ever written twice (blocks may be stored before any fsync).
        """
        with self._ids_lock:
            if which == "inode":
                nxt, limit = self._inode_ids
                counter, batch = COUNTER_NEXT_INODE, INODE_BATCH
            else:
                nxt, limit = self._slice_ids
                counter, batch = COUNTER_NEXT_CHUNK, SLICE_BATCH
            if nxt >= limit:
                with self._recording() as tx:
                    limit = tx.add_counter(counter, batch)
                self.meta_sync()
                nxt = limit - batch
            if which == "inode":
                self._inode_ids = (nxt + 1, limit)
            else:
                self._slice_ids = (nxt + 1, limit)
            return nxt

    def meta_sync(self) -> None:
        """Make every committed metadata transaction durable (when the store can)."""
        sync = getattr(self.meta, "sync", None)
        if sync is not None:
            sync()

    # ================================================================== shared bookkeeping

    def _overlay(self, ino: int, attr: Attr) -> Attr:
        """Attributes with the buffered writes of an open inode applied."""
        oi = self._open.get(ino)
        w = oi.writer if oi is not None else None
        if w is not None and w.dirty:
            attr.length = max(attr.length, w.length)
            attr.mtime_ns = attr.ctime_ns = w.mtime_ns
        return attr

    def _entry_parents(self, tx: MetaTxn, ino: int, attr: Attr) -> list[int]:
        """One parent per entry naming the inode (hard links appear once per link)."""
        if attr.parent:
            return [attr.parent]
        return [p for p, _ in tx.entry_parents(ino)]

    def _account_length(self, tx: MetaTxn, ino: int, attr: Attr, new_length: int) -> None:
        """Move a file to ``new_length``, keeping usedSpace and the parents' dir stats right."""
        d_len = new_length - attr.length
        d_space = align4k(new_length) - align4k(attr.length)
        attr.length = new_length
        if d_space:
            tx.add_counter(COUNTER_USED_SPACE, d_space)
        if d_len or d_space:
            for parent in self._entry_parents(tx, ino, attr):
                tx.update_dir_stats(parent, d_len, d_space, 0)

    def _drop_inode(self, tx: MetaTxn, ino: int, attr: Attr) -> None:
        """Delete an inode that no entry names any more, with its data and accounting."""
        for indx in tx.chunk_indexes(ino):
            self._release_chunk(tx, ino, indx)
        if attr.type == TYPE_SYMLINK:
            tx.delete_symlink(ino)
        if attr.type == TYPE_DIRECTORY:
            tx.delete_dir_stats(ino)
        tx.delete_xattrs(ino)
        tx.delete_attr(ino)
        tx.add_counter(COUNTER_USED_SPACE, -space(attr))
        tx.add_counter(COUNTER_TOTAL_INODES, -1)

    #: called inside the transaction that drops a slice's last reference, with
    #: ``(id, size, inode)``: the session's reclaimer (:mod:`volume.engine.reclaim`), or None
    slice_freed: Callable[[int, int, int], None] | None = None

    def _release_chunk(self, tx: MetaTxn, ino: int, indx: int) -> None:
        """Remove a chunk row, dropping one reference per record.

        Blocks are never deleted here: other versions of the volume may share them (the
        session's reclaimer decides, off every lock); rows whose count reaches zero are kept at
        zero so no JuiceFS client finds them to clean up.
        """
        for rec in unpack_slices(tx.read_chunk(ino, indx)):
            if rec.id and tx.add_slice_ref(rec.id, rec.size, -1) <= 0:
                tx.add_slice_ref(rec.id, rec.size, 0)  # keep the row type-stable for stores
                if self.slice_freed is not None:
                    self.slice_freed(rec.id, rec.size, ino)
        tx.write_chunk(ino, indx, b"")

    @staticmethod
    def _kill_suid(attr: Attr, caller: Caller) -> None:
        """Clear set-user-ID/set-group-ID bits after a write or truncate, as Linux does for a
        caller without CAP_FSETID (root keeps them): set-user-ID always; set-group-ID when the
        group may execute the file or the caller is not in the file's group."""
        if caller.uid == 0 or attr.type != TYPE_FILE:
            return
        mode = attr.mode
        if mode & 0o4000:
            mode &= ~0o4000
        if mode & 0o2000 and (mode & 0o010 or not caller.in_group(attr.gid)):
            mode &= ~0o2000
        attr.mode = mode

    # ================================================================== lifecycle

    def freeze(self) -> None:
        """From now on every modifying operation raises ``OSError(EROFS)``; reads, flushes of
        writes accepted earlier, fsync and :meth:`snapshot` still work. Returns once no change
        is in flight (a change that started before commits before this returns)."""
        if self.read_only:
            return
        with self.meta.transaction(write=True):  # waits for the transaction in flight
            self._frozen = True

    def thaw(self) -> None:
        """Undo :meth:`freeze`."""
        self._frozen = False

    @property
    def frozen(self) -> bool:
        """Whether :meth:`freeze` is in effect."""
        return self._frozen

    def drain(self, timeout: float | None = None) -> None:
        """Record every buffered write, finish the compactions it asked for, and wait until
        every block is stored. Raises :class:`~volume.errors.VolumeCommitError` (a
        ``VolumeSystemError``) when an upload fails or ``timeout`` passes; a later drain can
        still succeed (the blocks stay buffered)."""
        try:
            self.flush()
        except OSError as exc:  # no room to hand a buffered block over: the store is failing
            raise VolumeCommitError(f"cannot record the buffered writes: {exc}") from exc
        if self._compactions is not None:
            self._compactions.wait()
        self.blocks.drain(timeout)

    def snapshot(self, dest: str | os.PathLike[str]) -> int:
        """A consistent copy of the metadata store in the file ``dest`` (no namespace operation
        is half done in it); returns its size. Buffered writes are not in it: :meth:`flush`
        first."""
        with self._table_lock:  # no unlink or rename is deciding about open inodes meanwhile
            return self.meta.snapshot(dest)

    def close(self, *, drain: bool = True) -> None:
        """Release the block store (the metadata store stays open).

        With ``drain`` (the default) buffered writes are recorded and every block is stored
        first; without it buffered work is abandoned.
        """
        if self._closed:
            return
        try:
            if drain and not self.read_only:
                self.drain()
        finally:
            self._closed = True
            if self._compactions is not None:
                self._compactions.close(wait=drain)
            self.blocks.close(wait=drain)
