"""Blocks: background put-if-absent uploads, a bounded cache, readahead, and drain.

A block that has been handed to :meth:`BlockStore.upload` stays readable from memory until its
upload succeeded, so the metadata may reference it at once (writeback); :meth:`BlockStore.drain`
is what a commit waits on: it returns only when every block handed over exists in the store.

A store that stages objects (``capabilities.staging``: the local store) is written in place
instead: a writer's bytes go straight into the staged block (:meth:`BlockStore.new_block`), one
copy outside the interpreter lock, and a full block is sealed under its key as it is handed over
(:meth:`BlockStore.seal`), with nothing left to upload. When the store refuses a seal, the block's
bytes take the upload path (retried in the background) instead.

Memory rule: a writer holds at most ``max_pending_bytes`` (the mount's ``buffer_size_mb``) of
blocks not yet stored, plus ``WRITTEN_CACHE_BYTES`` of blocks it just stored (kept for
read-after-write; a ``cache_dir`` keeps every one of them on disk). Only blocks fetched from the
store fill the in-memory read cache (``cache_bytes``), so writing never grows memory past
``buffer_size_mb`` plus that small share.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

from ..errors import ObjectExists, ObjectNotFound, VolumeCommitError
from ..juicefs import block_key
from ..stores import ObjectStore, StagedObject
from .diskcache import DiskCache

log = logging.getLogger("volume.engine.blocks")

UPLOAD_ATTEMPTS = 3
MAX_UNSYNCED = 65536  # stored keys remembered for the next sync; past it the whole store is synced
DRAIN_ROUNDS = 3  # rounds of retries of failed uploads in one drain
RETRY_INTERVAL = 0.25  # seconds between retries of failed uploads while writers wait
LOCAL_UPLOAD_WORKERS = 4
WRITTEN_CACHE_BYTES = 16 << 20  # just-stored blocks kept in memory (at most cache_bytes)
HINTED_KEYS = 64  # blocks remembered as already read ahead (local stores), oldest forgotten


@dataclass
class BlockStats:
    """Counters of block traffic, for benchmarks and tests."""

    uploads: int = 0
    upload_bytes: int = 0
    fetches: int = 0
    fetch_bytes: int = 0
    cache_hits: int = 0
    disk_hits: int = 0


class _LRU:
    """A byte-bounded LRU of immutable blocks."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= len(old)
            self._items[key] = data
            self.size += len(data)
            while self.size > self.capacity:
                _, evicted = self._items.popitem(last=False)
                self.size -= len(evicted)


class BlockStore:
    """The blocks of one chunk key space (``<Name>/chunks/...``) in an object store."""

    def __init__(
        self,
        objects: ObjectStore,
        name: str,
        block_bytes: int,
        *,
        hash_prefix: bool = False,
        cache_bytes: int = 256 << 20,
        upload_workers: int = 8,
        max_pending_bytes: int = 300 << 20,
        read_workers: int = 8,
        disk_cache: DiskCache | None = None,
        wait_timeout: float | None = None,
    ):
        self.objects = objects
        self.name = name
        self.block_bytes = block_bytes
        self.hash_prefix = hash_prefix
        self.stats = BlockStats()
        self._cache = _LRU(cache_bytes)  # blocks fetched from the store
        self._written = _LRU(min(cache_bytes, WRITTEN_CACHE_BYTES))  # blocks just stored
        self._disk = disk_cache
        self._max_pending = max(max_pending_bytes, block_bytes)
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0
        self._buffered_bytes = 0  # in write buffers, not handed over yet
        self._inflight_uploads = 0
        self._failed: dict[str, BaseException] = {}
        self._last_retry = 0.0
        self._wait_timeout = wait_timeout
        # stored keys not yet made durable (stores with a ``sync`` method: local files)
        self._store_sync = getattr(objects, "sync", None)
        self._unsynced: dict[str, int] = {}  # key -> its inode (0: unknown)
        self._key_inode: dict[str, int] = {}  # pending key -> its inode
        self._inode_pending: dict[int, set[str]] = {}  # inode -> its pending keys
        self._unsynced_overflow = False
        self._cond = threading.Condition()
        if objects.capabilities.local:
            # no network latency to hide: more threads only contend for the GIL with the caller
            upload_workers = min(upload_workers, LOCAL_UPLOAD_WORKERS)
        self._uploader = ThreadPoolExecutor(upload_workers, thread_name_prefix="volume-upload")
        # Stored block buffers of local stores are recycled: a fresh 4 MiB buffer is faulted in
        # page by page, which costs about as much as the copy into it. Enough spares to keep
        # every upload thread and the writer busy; more would only hold memory.
        self._spares: list[bytearray] = []
        self._max_spares = 2 * upload_workers
        self._reader = ThreadPoolExecutor(read_workers, thread_name_prefix="volume-read")
        self._fetching: dict[str, Future[bytes]] = {}
        # Local stores are read in place, range by range: the page cache is their block cache
        # (filled ahead of a sequential reader by will_read hints), and large buffers filled by
        # worker threads cost more than the read itself.
        self._direct = objects.capabilities.local
        self._staging = objects.capabilities.staging
        self._verified: set[str] = set()
        self._hinted: dict[str, None] = {}  # blocks a local store was asked to read ahead
        self._fetch_lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ keys

    def key(self, slice_id: int, indx: int, bsize: int) -> str:
        """Object key of one block."""
        return block_key(self.name, slice_id, indx, bsize, self.hash_prefix)

    def block_range(self, size: int, off: int, length: int) -> range:
        """Indexes of the blocks of a slice of ``size`` bytes that hold [off, off+length)."""
        bs = self.block_bytes
        return range(off // bs, (off + length - 1) // bs + 1)

    def _bsize(self, size: int, indx: int) -> int:
        return min(self.block_bytes, size - indx * self.block_bytes)

    # ------------------------------------------------------------------ uploads

    def block_buffer(self) -> bytearray:
        """A buffer of one block's size to fill and hand to :meth:`upload` (a recycled one when
        there is one, so its content is arbitrary).

        Waits, as :meth:`upload` does, until the new buffer fits under the pending bound: the
        writer waits before it takes memory, so handing a full buffer over never waits for
        room and a bound of two blocks keeps two uploads in flight."""
        with self._cond:
            self._wait_for_room_locked(self.block_bytes)
            if self._spares:
                return self._spares.pop()
        return bytearray(self.block_bytes)

    def new_block(self, slice_id: int, indx: int, *, big: bool) -> bytearray | StagedObject:
        """Where a writer puts the bytes of block ``indx`` of a new slice: a staged object of a
        store that stages, else a buffer (counted by :meth:`buffered`): a whole block for a
        ``big`` writer, an empty one that grows for small writes, which are often random and
        must not pay for a whole block each."""
        if self._staging:
            key = self.key(slice_id, indx, self.block_bytes)
            try:
                return self.objects.stage(key)
            except Exception as exc:  # put may still work (or retry): buffer it instead
                log.warning("cannot stage block %s, buffering it: %s", key, exc)
        buf = self.block_buffer() if big else bytearray()
        self.buffered(len(buf))
        return buf

    def seal(
        self, slice_id: int, indx: int, staged: StagedObject, length: int, inode: int = 0
    ) -> None:
        """Publish a staged block of ``length`` bytes under its key. When the store refuses,
        its bytes are handed to :meth:`upload` instead (retried; a commit drains them)."""
        key = self.key(slice_id, indx, length)
        try:
            staged.seal(key, length)
        except Exception as exc:
            log.warning("sealing block %s failed (%s); uploading it instead", key, exc)
            try:
                data = staged.read(length)
            finally:
                staged.discard()
            if len(data) != length:
                raise OSError(errno.EIO, f"staged block {key} lost bytes: {exc}") from exc
            self.upload(slice_id, indx, data, inode)
            return
        with self._cond:
            self._stored_locked(key, inode, length)

    def upload(
        self,
        slice_id: int,
        indx: int,
        data: bytes | bytearray,
        inode: int = 0,
        *,
        counted: bool = False,
    ) -> None:
        """Hand a block over for upload; returns once it is readable (and the upload queued).

        The caller never modifies ``data`` afterwards. ``counted``: ``data`` is a write buffer
        already counted by :meth:`buffered`; its bytes move from buffered to pending as it is
        handed over (counted once, so the block being handed over does not starve uploads: a
        two-block bound keeps two uploads in flight).

        Blocks while the bytes held for upload (queued, in flight or failed) would exceed the
        pending bound (back-pressure); meanwhile failed uploads are retried every
        ``RETRY_INTERVAL`` seconds, so a store that comes back lets the writer go on. After
        ``wait_timeout`` seconds without room: ``OSError(EIO)``, nothing handed over. ``inode``
        (the file the block belongs to) lets :meth:`drain_inode` wait for that file's blocks only.
        """
        key = self.key(slice_id, indx, len(data))
        with self._cond:
            self._wait_for_room_locked(0 if counted else len(data))
            self._pending[key] = data
            self._pending_bytes += len(data)
            if counted:
                self._buffered_bytes -= len(data)
            self._inflight_uploads += 1
            if inode:
                self._key_inode[key] = inode
                self._inode_pending.setdefault(inode, set()).add(key)
        self._uploader.submit(self._upload, key, data)

    def _wait_for_room_locked(self, extra: int) -> None:
        """Wait until ``extra`` more bytes fit under the pending bound (back-pressure; ``_cond``
        held), retrying failed uploads meanwhile; ``OSError(EIO)`` after ``wait_timeout`` s."""
        timeout = self._wait_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while (
            self._pending_bytes
            and self._pending_bytes + self._buffered_bytes + extra > self._max_pending
        ):  # waits at most until every upload handed over so far is done
            self._retry_failed_locked()
            remaining = RETRY_INTERVAL
            if deadline is not None:
                remaining = min(remaining, deadline - time.monotonic())
                if remaining <= 0:
                    first = next(iter(self._failed.values()), None)
                    raise OSError(
                        errno.EIO,
                        f"{self._pending_bytes} bytes of blocks are waiting for the object "
                        f"store ({len(self._failed)} uploads failed"
                        + (f", last error: {first}" if first else "")
                        + f"); no room for more after {timeout} s",
                    )
            self._cond.wait(remaining)

    def _upload(self, key: str, data: bytes) -> None:
        error: BaseException | None = None
        for attempt in range(UPLOAD_ATTEMPTS):
            try:
                self._put_if_absent(key, data)
                error = None
                break
            except ObjectExists as exc:  # never retried: another writer owns this key
                error = exc
                break
            except Exception as exc:  # transient store failures are retried
                error = exc
                time.sleep(0.05 * (2**attempt))
        with self._cond:
            self._inflight_uploads -= 1
            if error is None:
                if self._pending.pop(key, None) is not None:
                    self._pending_bytes -= len(data)
                self._failed.pop(key, None)
                inode = self._key_inode.pop(key, 0)
                if inode:
                    keys = self._inode_pending.get(inode)
                    if keys is not None:
                        keys.discard(key)
                        if not keys:
                            del self._inode_pending[inode]
                self._stored_locked(key, inode, len(data))
            else:
                log.error("upload of block %s failed: %s", key, error)
                self._failed[key] = error
            self._cond.notify_all()
        if error is None:
            if self._direct:
                self._recycle(data)
            else:
                self._written.put(key, data)
                if self._disk is not None:
                    self._disk.put(key, data)

    def _stored_locked(self, key: str, inode: int, size: int) -> None:
        """Account a block now in the store (``_cond`` held): the next sync makes it durable."""
        if self._store_sync is not None:
            if len(self._unsynced) < MAX_UNSYNCED:
                self._unsynced[key] = inode
            else:  # too many to name: the next sync makes the whole store durable
                self._unsynced_overflow = True
        self.stats.uploads += 1
        self.stats.upload_bytes += size

    def _cached(self, key: str) -> bytes | None:
        """A block held in memory after its fetch or its upload."""
        data = self._cache.get(key)
        return data if data is not None else self._written.get(key)

    def _recycle(self, data: bytes | bytearray) -> None:
        """Keep a stored block's buffer for :meth:`block_buffer`. Only called once the block left
        ``_pending`` (under the lock readers copy it under), so no reader can still see it."""
        if isinstance(data, bytearray) and len(data) == self.block_bytes:
            with self._cond:
                if len(self._spares) < self._max_spares:
                    self._spares.append(data)

    def _put_if_absent(self, key: str, data: bytes) -> None:
        try:
            self.objects.put(key, data, if_absent=True)
        except ObjectExists:
            # A retried put whose first attempt landed leaves the same bytes: that is success.
            # Different bytes under our key mean two writers share a slice id: never overwrite.
            if self.objects.get(key) != data:
                raise ObjectExists(
                    f"block {key} already exists with other content: two writers allocated the "
                    f"same slice id; refusing to overwrite it"
                ) from None

    def _retry_failed_locked(self, *, now: bool = False) -> None:
        """Queue the failed uploads again (at most every ``RETRY_INTERVAL`` s unless ``now``);
        ``_cond`` held."""
        if not self._failed or self._closed:
            return
        if not now and time.monotonic() - self._last_retry < RETRY_INTERVAL:
            return
        self._last_retry = time.monotonic()
        for key in list(self._failed):
            data = self._pending.get(key)
            del self._failed[key]
            if data is None:
                continue
            self._inflight_uploads += 1
            self._uploader.submit(self._upload, key, data)

    def sync(self, inode: int | None = None) -> None:
        """Make stored blocks durable (a store's ``sync``: the local store fsyncs the files and
        their directories; a cloud store's successful put already is): every block, or those of
        ``inode`` and of no known inode."""
        if self._store_sync is None:
            return
        with self._cond:
            overflow, self._unsynced_overflow = self._unsynced_overflow, False
            if inode is None or overflow:
                keys, self._unsynced = self._unsynced, {}
            else:
                keys = {k: i for k, i in self._unsynced.items() if i in (0, inode)}
                for k in keys:
                    del self._unsynced[k]
        if not keys and not overflow:
            return
        try:
            self._store_sync(None if overflow else sorted(keys))
        except BaseException:
            with self._cond:
                self._unsynced.update(keys)
                self._unsynced_overflow |= overflow
            raise

    def drain_inode(self, inode: int, timeout: float | None = None) -> None:
        """Wait until every block handed over for ``inode`` is stored (what fsync(2) waits
        for); failed ones are retried for up to ``DRAIN_ROUNDS`` rounds. Raises
        :class:`VolumeCommitError` as :meth:`drain` does."""
        deadline = None if timeout is None else time.monotonic() + timeout
        rounds = 1
        with self._cond:
            self._retry_failed_locked(now=True)
            while self._inode_pending.get(inode):
                keys = self._inode_pending[inode]
                if all(k in self._failed for k in keys):
                    if rounds >= DRAIN_ROUNDS:
                        key = next(iter(keys))
                        raise VolumeCommitError(
                            f"{len(keys)} block uploads of inode {inode} failed (first: {key}: "
                            f"{self._failed[key]}); the data is still held in memory"
                        )
                    rounds += 1
                    self._retry_failed_locked(now=True)
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise VolumeCommitError(
                        f"{len(keys)} block uploads of inode {inode} did not finish within "
                        f"{timeout} s"
                    )
                self._cond.wait(remaining)

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every block handed over exists in the store.

        Failed uploads are retried here, in up to ``DRAIN_ROUNDS`` rounds (attempts that were
        already failing when the store came back do not fail the drain). Raises
        :class:`VolumeCommitError` when a block cannot be uploaded or the wait exceeds
        ``timeout``; the blocks stay pending (and readable), so a later drain can still succeed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            for _ in range(DRAIN_ROUNDS):
                self._retry_failed_locked(now=True)
                while self._inflight_uploads:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise VolumeCommitError(
                            f"{self._inflight_uploads} block uploads did not finish within "
                            f"{timeout} s; nothing was published; retry the commit"
                        )
                    self._cond.wait(remaining)
                if not self._failed:
                    return
            if self._failed:
                key, exc = next(iter(self._failed.items()))
                raise VolumeCommitError(
                    f"{len(self._failed)} block uploads failed (first: {key}: {exc}); nothing "
                    f"was published and the data is still held in memory; fix the object store "
                    f"and commit again"
                )

    def buffered(self, delta: int) -> None:
        """Account ``delta`` bytes more (or fewer) held in write buffers not yet handed over:
        they count against the bound a writer waits on in :meth:`upload`."""
        with self._cond:
            self._buffered_bytes += delta

    @property
    def buffered_bytes(self) -> int:
        """Bytes in write buffers not yet handed over."""
        return self._buffered_bytes

    @property
    def pending_bytes(self) -> int:
        """Bytes handed over and not yet confirmed uploaded."""
        return self._pending_bytes

    # ------------------------------------------------------------------ reads

    def read_into(
        self, slice_id: int, size: int, off: int, into: memoryview, *, inode: int = 0
    ) -> None:
        """Bytes [off, off+len(into)) of slice ``slice_id`` into ``into`` (as :meth:`read`,
        without building a ``bytes``: a local store reads straight into it)."""
        pos = 0
        for indx, _, start, n in self._block_parts(size, off, len(into)):
            self._block_part(slice_id, size, indx, start, n, inode, into[pos : pos + n])
            pos += n

    def _block_parts(
        self, size: int, off: int, length: int
    ) -> Iterator[tuple[int, int, int, int]]:
        """``(indx, block size, start, n)``: the part [start, start+n) of each block of a slice
        of ``size`` bytes that holds its bytes [off, off+length), in order."""
        bs = self.block_bytes
        pos = 0
        for indx in range(off // bs, (off + length - 1) // bs + 1):
            bsize = self._bsize(size, indx)
            start = max(off - indx * bs, 0)
            n = min(bsize - start, length - pos)
            yield indx, bsize, start, n
            pos += n

    def file_spans(
        self, slice_id: int, size: int, off: int, length: int, *, inode: int = 0
    ) -> list[tuple[int, int, int]] | None:
        """Where bytes [off, off+length) of slice ``slice_id`` lie in the store's files:
        ``(fd, position, n)`` per block, each ``fd`` open for the caller to read and close.
        None when a block is not in a file: still in memory, or the store keeps no files.
        Raises ``OSError(EIO)`` for a missing or short block, as :meth:`read`."""
        if not self._direct:
            return None
        spans: list[tuple[int, int, int]] = []
        try:
            for indx, bsize, start, n in self._block_parts(size, off, length):
                key = self.key(slice_id, indx, bsize)
                if key in self._pending:
                    break
                try:
                    opened = self.objects.open_file(key)
                    if opened is None:
                        break
                    spans.append((opened[0], start, n))
                    _check_size(key, opened[1], bsize)
                except ObjectNotFound as exc:
                    raise _read_failed(inode, key, _missing(key)) from exc
                except OSError as exc:
                    raise _read_failed(inode, key, exc) from exc
            else:
                self.stats.fetches += len(spans)
                self.stats.fetch_bytes += length
                return spans
        except BaseException:
            close_spans(spans)
            raise
        close_spans(spans)  # a block not in a file
        return None

    def read(self, slice_id: int, size: int, off: int, length: int, *, inode: int = 0) -> bytes:
        """Bytes [off, off+length) of slice ``slice_id`` (whose object size is ``size``).

        Raises ``OSError(EIO)`` (and logs the inode and key) when a block is missing or short.
        """
        bs = self.block_bytes
        first = off // bs
        last = (off + length - 1) // bs
        if first == last:
            return self._block_part(slice_id, size, first, off - first * bs, length, inode)
        out = bytearray(length)
        self.read_into(slice_id, size, off, memoryview(out), inode=inode)
        return bytes(out)

    def prefetch(self, slice_id: int, size: int, off: int, length: int) -> None:
        """Start fetching the blocks holding [off, off+length) in the background (for a local
        store: ask it to read their files ahead, once per block)."""
        for indx in self.block_range(size, off, length):
            key = self.key(slice_id, indx, self._bsize(size, indx))
            if key in self._pending:
                continue
            if self._direct:
                if key in self._hinted:
                    continue
                with self._fetch_lock:
                    self._hinted[key] = None
                    if len(self._hinted) > HINTED_KEYS:
                        del self._hinted[next(iter(self._hinted))]
                self.objects.will_read(key)
            elif self._cached(key) is None:
                self._fetch_future(key, self._bsize(size, indx))

    def _block_part(
        self,
        slice_id: int,
        size: int,
        indx: int,
        start: int,
        n: int,
        inode: int,
        into: memoryview | None = None,
    ) -> bytes:
        """Bytes [start, start+n) of one block: returned, or copied into ``into`` (``n`` bytes
        long; then the return value is empty)."""
        bsize = self._bsize(size, indx)
        key = self.key(slice_id, indx, bsize)
        if key in self._pending:
            with self._cond:  # copied under the lock: a stored buffer may be recycled right after
                data = self._pending.get(key)
                if data is not None:
                    self.stats.cache_hits += 1
                    return _part(memoryview(data), start, n, into, copy=True)
        try:
            if self._direct:
                return self._read_direct(key, bsize, start, n, into)
            data = self._cached(key)
            if data is not None:
                self.stats.cache_hits += 1
            else:
                data = self._fetch_future(key, bsize).result()
        except OSError as exc:
            raise _read_failed(inode, key, exc) from exc
        return _part(data, start, n, into)

    def _read_direct(
        self, key: str, bsize: int, start: int, n: int, into: memoryview | None
    ) -> bytes:
        """A ranged read in the calling thread (into ``into`` when given); each block's size is
        checked once."""
        try:
            if key not in self._verified:
                _check_size(key, self.objects.head(key).size, bsize)
                self._verified.add(key)
            if into is None:
                data = self.objects.get(key, start, start + n)
                got = len(data)
            else:
                data, got = b"", self.objects.get_into(key, start, into)
        except ObjectNotFound as exc:
            raise _missing(key) from exc
        if got != n:
            raise OSError(errno.EIO, f"block {key} is shorter than {start + n} bytes")
        self.stats.fetches += 1
        self.stats.fetch_bytes += n
        return data

    def _fetch_future(self, key: str, bsize: int) -> Future[bytes]:
        with self._fetch_lock:
            fut = self._fetching.get(key)
            if fut is None:
                fut = self._reader.submit(self._fetch, key, bsize)
                self._fetching[key] = fut
            return fut

    def _fetch(self, key: str, bsize: int) -> bytes:
        try:
            data = self._disk.get(key) if self._disk is not None else None
            if data is not None and len(data) == bsize:
                self.stats.disk_hits += 1
                self._cache.put(key, data)
                return data
            try:
                data = self.objects.get(key)
            except ObjectNotFound as exc:
                raise _missing(key) from exc
            _check_size(key, len(data), bsize)
            self.stats.fetches += 1
            self.stats.fetch_bytes += len(data)
            self._cache.put(key, data)
            if self._disk is not None:
                self._disk.put(key, data)
            return data
        finally:
            with self._fetch_lock:
                self._fetching.pop(key, None)

    # ------------------------------------------------------------------ shutdown

    def close(self, *, wait: bool = True) -> None:
        """Stop the worker pools (after the queued uploads when ``wait``)."""
        if self._closed:
            return
        self._closed = True
        self._uploader.shutdown(wait=wait, cancel_futures=not wait)
        self._reader.shutdown(wait=wait, cancel_futures=not wait)
        self._spares.clear()


def close_spans(spans: list[tuple[int, int, int]]) -> None:
    """Close the files of spans (:meth:`BlockStore.file_spans`)."""
    for fd, _, _ in spans:
        os.close(fd)


def _missing(key: str) -> OSError:
    return OSError(errno.EIO, f"block {key} is missing")


def _check_size(key: str, actual: int, expected: int) -> None:
    if actual != expected:
        raise OSError(errno.EIO, f"block {key} has {actual} bytes, expected {expected}")


def _read_failed(inode: int, key: str, exc: OSError) -> OSError:
    """The EIO a read of a file fails with when block ``key`` cannot be read (logged)."""
    log.error("inode %d: cannot read block %s: %s", inode, key, exc)
    return OSError(errno.EIO, f"block {key} of inode {inode}: {exc}")


def _part(
    data: bytes | memoryview, start: int, n: int, into: memoryview | None, *, copy: bool = False
) -> bytes:
    """Bytes [start, start+n) of a block held in memory: copied into ``into`` (returning b""),
    else returned (a copy when ``copy``: the buffer may be reused once the caller lets go)."""
    if into is not None:
        into[:] = memoryview(data)[start : start + n]
        return b""
    if copy:
        return bytes(memoryview(data)[start : start + n])
    return data[start : start + n] if (start, n) != (0, len(data)) else bytes(data)
