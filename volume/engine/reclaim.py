"""A writable session deletes the blocks of its own garbage (as the JuiceFS client does).

Rule. A slice's blocks are deleted when the slice's reference count in the working copy drops
to zero (its file was overwritten and compacted, truncated, deleted; the last copy_file_range
clone went) **and** no copy of the metadata that left the process can name it:

* its id lies in this session's slice domain (``id >> 42 == domain``). Every writable mount
  claims a fresh domain (a resumed working copy too, ``volume.allocator``), so the domain's
  slices were written by this session and by nobody else: forks, other sessions and stock
  JuiceFS clients (the foreign lane) allocate elsewhere;
* its id is at or above the *published watermark*: the slice id the engine would hand out next,
  read right after the last snapshot of the metadata store (a commit, a finalize, a fork of the
  live handle; any ``snapshot`` of the store raises it). Ids are handed out in increasing order
  inside the domain, so every slice a snapshot can name lies below the watermark taken after it.
  A new session starts with the watermark at the store's ``nextChunk`` (nothing it finds is
  ever touched), so a crash loses nothing but some garbage, which ``volume gc`` collects.

Mechanics. The engine calls :meth:`Reclaimer.freed` inside the transaction that drops a slice's
last reference (a cheap append to a queue). A background thread decides and deletes off every
engine lock: under the reclaimer's lock (which every snapshot also holds while it copies the
store and raises the watermark, after deciding on what was freed before it) it re-reads the
count in a write transaction, which waits for the transaction that freed the slice to commit (a
rolled-back one leaves the count above zero: nothing is deleted), makes the store durable, then
waits for the slice's uploads still in flight, drops the open inode's cached chunk maps (under
its lock, so a read in progress ends first) and deletes its blocks. A slice whose count is zero
has no record left to read or clone, so it can never come back; a still-open file's buffered
writes are unrecorded slices of their own, and an unlinked-but-open inode keeps its records
until its last close.

Lock order: the engine's table lock, then this reclaimer's lock, then the engine's id lock, then
the metadata store's lock; :meth:`freed` takes only the queue's condition, a leaf.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..allocator import DOMAIN_BITS
from ..juicefs import CHUNK_SIZE, COUNTER_NEXT_CHUNK, SliceRecord, slice_blocks

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("volume.engine.reclaim")

BATCH = 256


@dataclass
class ReclaimStats:
    """What a session reclaimed so far."""

    slices: int = 0
    blocks: int = 0
    bytes: int = 0


def hides_earlier(rec: SliceRecord, indx: int, length: int, large_piece: int) -> bool:
    """Whether a large record appended to chunk ``indx`` of a file ``length`` bytes long hides
    every earlier record of the chunk (an in-place rewrite): compacting the chunk then copies
    nothing and frees the hidden slices."""
    extent = min(CHUNK_SIZE, max(length - indx * CHUNK_SIZE, 0))
    return rec.pos == 0 and rec.len >= max(extent, large_piece)


class Reclaimer:
    """Deletes the blocks of ``engine``'s own unreachable slices of ``domain`` in the background.

    Installs itself on the engine (``engine.slice_freed``) and around the metadata store's
    ``snapshot``; :meth:`stop` ends it.
    """

    def __init__(self, engine: "Engine", domain: int, *, io_timeout: float | None = 60.0):
        self.engine, self.meta, self.blocks = engine, engine.meta, engine.blocks
        self.domain = domain
        self.io_timeout = io_timeout
        self.stats = ReclaimStats()
        self._lock = threading.Lock()  # decisions against snapshots + watermark raises
        self._cond = threading.Condition()  # the queue (a leaf lock)
        self._queue: deque[tuple[int, int, int]] = deque()  # freed, not decided yet
        self._dead: deque[tuple[int, int, int]] = deque()  # decided: their blocks go
        self._busy = False
        self._stopping = False
        self._abandon = False
        with self.meta.transaction() as tx:
            self.watermark = tx.get_counter(COUNTER_NEXT_CHUNK)
        self._store_snapshot = self.meta.snapshot
        self.meta.snapshot = self._snapshot  # type: ignore[method-assign]
        engine.slice_freed = self.freed
        self._thread = threading.Thread(target=self._run, name="volume-reclaim", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ rule

    def reclaimable(self, slice_id: int) -> bool:
        """Whether a slice whose count is zero may lose its blocks (see the module doc)."""
        return slice_id >> DOMAIN_BITS == self.domain and slice_id >= self.watermark

    def _snapshot(self, dest: Any) -> int:
        """The store's snapshot, then the watermark raised past every id it can name."""
        with self._lock:
            with self._cond:  # decide on what was freed before the copy, by the old watermark
                batch = list(self._queue)
                self._queue.clear()
            self._decide(batch)
            size = self._store_snapshot(dest)
            with self.engine._ids_lock:
                nxt, limit = self.engine._slice_ids
            if not limit:  # no batch taken yet: the next one starts at the counter
                with self.meta.transaction() as tx:
                    nxt = tx.get_counter(COUNTER_NEXT_CHUNK)
            self.watermark = max(self.watermark, nxt)
            return size

    # ------------------------------------------------------------------ queue

    def freed(self, slice_id: int, size: int, inode: int) -> None:
        """The engine dropped the last reference to ``(slice_id, size)`` (inside its
        transaction, which may still roll back)."""
        if not self.reclaimable(slice_id):
            return
        with self._cond:
            self._queue.append((slice_id, size, inode))
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued slice was decided on (and its blocks deleted)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._queue and not self._dead and not self._busy, timeout
            )

    def stop(self, *, drain: bool = True) -> None:
        """End the worker: after the queued slices (``drain``) or at once."""
        with self._cond:
            self._stopping, self._abandon = True, not drain
            self._cond.notify_all()
        self._thread.join()
        if self.engine.slice_freed == self.freed:
            self.engine.slice_freed = None

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._dead or self._stopping)
                if self._abandon or not (self._queue or self._dead):
                    self._queue.clear()
                    self._cond.notify_all()
                    return
                self._busy = True
            batch: list[tuple[int, int, int]] = []
            try:
                with self._lock:  # popped and decided with no snapshot in between
                    with self._cond:
                        n = min(BATCH, len(self._queue))
                        batch = [self._queue.popleft() for _ in range(n)]
                    self._decide(batch)
                self._delete()
            except Exception:  # a failure only leaves garbage behind, for volume gc
                log.warning("could not reclaim %d slices", len(batch), exc_info=True)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _decide(self, batch: list[tuple[int, int, int]]) -> None:
        """Move the slices of ``batch`` that are reclaimable now to the deletion list (called
        with ``self._lock`` held). Their counts are read in a write transaction, which waits for
        the transaction that freed them to commit; the store is made durable before any block
        goes."""
        if not batch:
            return
        with self.meta.transaction(write=True) as tx:
            dead = [
                (sid, size, ino)
                for sid, size, ino in batch
                if self.reclaimable(sid) and tx.add_slice_ref(sid, size, 0) <= 0
            ]
        if dead:
            self.engine.meta_sync()  # never delete before the record deletions are durable
            with self._cond:
                self._dead.extend(dead)
                self._cond.notify_all()

    def _delete(self) -> None:
        """Delete the blocks of the decided slices (no lock held)."""
        with self._cond:
            dead = list(self._dead)
            self._dead.clear()
        for ino in {ino for _, _, ino in dead}:
            oi = self.engine._open.get(ino)
            if oi is not None:  # a compaction drops its inode's cached maps after its commit:
                with oi.lock:  # no read goes on with a map that still names a freed slice
                    oi.chunk_maps.clear()
            with contextlib.suppress(Exception):  # an upload that lands late is gc's garbage
                self.blocks.drain_inode(ino, self.io_timeout)
        bs = self.blocks.block_bytes
        for sid, size, _ in dead:
            for indx, bsize in slice_blocks(size, bs):
                self.blocks.objects.delete(self.blocks.key(sid, indx, bsize))
                self.stats.blocks += 1
                self.stats.bytes += bsize
            self.stats.slices += 1
