"""Compaction: rewriting a chunk's records as fewer records once writes have fragmented it.

Every recorded write appends a record to its chunk, so random or tiny writes leave chunks with
thousands of records: each later append rewrites the growing record blob and each read first
consolidates all of them. The JuiceFS client compacts such chunks; so do we, in the same format,
with a rule suited to versioned buckets, where replaced blocks are never deleted (older versions
may still read them) and every rewritten byte stays in the bucket:

- the chunk's visible pieces are computed (later records win);
- a run of consecutive *small* pieces (shorter than ``large_piece``, holes inside included) is
  copied into one new slice; large pieces stay where they are and are referenced as they are;
- the chunk's records are replaced by one record per kept piece and per run.

So a large base slice with a few small overwrites keeps its blocks, and a log grown by tiny
appends is copied once per ``at_records`` appends, not the whole chunk on each compaction.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from ..juicefs import SliceRecord
from .slices import Piece, consolidate

log = logging.getLogger("volume.engine.compaction")


@dataclass(frozen=True)
class CompactionPolicy:
    """When the engine compacts a chunk, and what it copies.

    ``at_records``: a write that brings a chunk to this many records (and every half of it more)
    asks for a compaction. ``large_piece``: visible pieces at least this long are never copied.
    ``background``: compact in a worker thread (writes never wait for it); otherwise in the
    writing thread, right after the write that asked for it (deterministic, for tests).
    """

    at_records: int = 1000
    large_piece: int = 1 << 20
    background: bool = True

    def __post_init__(self) -> None:
        if self.at_records < 2 or self.large_piece < 1:
            raise ValueError(
                f"compaction needs at_records >= 2 and large_piece >= 1, got {self.at_records} "
                f"and {self.large_piece}"
            )

    def wants(self, records: int) -> bool:
        """Whether a chunk that now holds ``records`` records should be compacted."""
        step = max(self.at_records // 2, 1)
        return records >= self.at_records and (records - self.at_records) % step == 0


DEFAULT_COMPACTION = CompactionPolicy()


@dataclass(frozen=True)
class CompactionPlan:
    """The records that replace a chunk's, and the pieces the new slice is made of."""

    kept: list[SliceRecord | tuple[int, int, int]]  # a record, or (pos, new-slice off, len)
    copies: list[Piece]  # the new slice's bytes, in order (id 0: zeros)

    @property
    def new_size(self) -> int:
        """Bytes of the new slice (0 when nothing is copied)."""
        return sum(p.length for p in self.copies)

    def records(self, new_id: int) -> list[SliceRecord]:
        """The replacement records, naming the new slice ``new_id``."""
        size = self.new_size
        return [
            r if isinstance(r, SliceRecord) else SliceRecord(r[0], new_id, size, r[1], r[2])
            for r in self.kept
        ]


def plan_compaction(records: list[SliceRecord], large_piece: int) -> CompactionPlan | None:
    """How to rewrite ``records`` with fewer of them; None when that would not shorten them.

    The replacement describes the same visible bytes on its own (it replaces every record, so
    holes need no record: nothing older is left for them to hide).
    """
    pieces = consolidate(records)
    kept: list[SliceRecord | tuple[int, int, int]] = []
    copies: list[Piece] = []
    copied = 0
    i = 0
    while i < len(pieces):
        p = pieces[i]
        if p.id == 0 or p.length >= large_piece:
            if p.id:
                kept.append(SliceRecord(p.start, p.id, p.size, p.off, p.length))
            i += 1
            continue
        j = i + 1
        while j < len(pieces) and pieces[j].length < large_piece:
            j += 1
        while pieces[j - 1].id == 0:  # a run ends with data (pieces[i] has data)
            j -= 1
        run = pieces[i:j]
        if sum(1 for q in run if q.id) >= 2:
            length = run[-1].end - p.start
            kept.append((p.start, copied, length))
            copies.extend(run)
            copied += length
        else:
            kept.append(SliceRecord(p.start, p.id, p.size, p.off, p.length))
        i = j
    if len(kept) >= len(records):
        return None
    return CompactionPlan(kept, copies)


class CompactionQueue:
    """Chunks waiting for compaction, each queued once, worked off by one thread."""

    def __init__(self, compact: Callable[[int, int], object], policy: CompactionPolicy):
        self._compact = compact
        self._queued: set[tuple[int, int]] = set()
        self._futures: set[Future[None]] = set()
        self._lock = threading.Lock()
        self._worker = (
            ThreadPoolExecutor(1, thread_name_prefix="volume-compact")
            if policy.background
            else None
        )
        self._closed = False

    def request(self, ino: int, indx: int) -> None:
        """Compact chunk ``indx`` of ``ino`` soon (at once without a background worker)."""
        key = (ino, indx)
        with self._lock:
            if self._closed or key in self._queued:
                return
            self._queued.add(key)
            if self._worker is not None:
                fut = self._worker.submit(self._run, key)
                self._futures.add(fut)
                fut.add_done_callback(self._forget)
                return
        self._run(key)

    def _forget(self, fut: Future[None]) -> None:
        with self._lock:
            self._futures.discard(fut)

    def _run(self, key: tuple[int, int]) -> None:
        with self._lock:
            self._queued.discard(key)
            if self._closed:
                return
        try:
            self._compact(*key)
        except Exception:  # a failed compaction changes nothing; the records stay as they were
            log.exception("compaction of inode %d chunk %d failed", *key)

    def wait(self) -> None:
        """Return once every compaction requested so far has run."""
        while True:
            with self._lock:
                pending = list(self._futures)
            if not pending:
                return
            futures.wait(pending)

    def close(self, *, wait: bool = True) -> None:
        """Stop taking requests; run the queued ones first when ``wait``, else drop them (the
        one running finishes either way)."""
        if wait:
            self.wait()
        with self._lock:
            self._closed = True
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=not wait)
