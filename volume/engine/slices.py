"""Chunk maps: the visible pieces of a chunk after applying its slice records in order.

Records are laid on top of each other, later wins; a visible piece keeps the mapping of the record
it comes from (chunk position ``p`` reads slice offset ``off + (p - pos)``). Gaps read as zeros.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable, Iterator

from ..juicefs import CHUNK_SIZE, SliceRecord


@dataclass(frozen=True, slots=True)
class Piece:
    """Chunk bytes [start, start+length) read slice ``id`` (object size ``size``) from ``off``.

    ``id == 0`` is a hole (zeros).
    """

    start: int
    length: int
    id: int
    size: int
    off: int

    @property
    def end(self) -> int:
        """One past the last chunk position covered."""
        return self.start + self.length


def consolidate(records: Iterable[SliceRecord]) -> list[Piece]:
    """The ordered, non-overlapping pieces visible after applying ``records`` (later wins).

    The result covers [0, max end) without gaps; gaps are id-0 pieces.
    """
    starts: list[int] = []
    pieces: list[Piece] = []
    for rec in records:
        if rec.len == 0:
            continue
        lo, hi = rec.pos, rec.pos + rec.len
        if hi > CHUNK_SIZE:
            raise ValueError(f"slice record {rec} runs past the end of its chunk")
        # first piece that may overlap [lo, hi)
        i = bisect.bisect_right(starts, lo) - 1
        if i < 0 or pieces[i].end <= lo:
            i += 1
        j = i
        replacement: list[Piece] = []
        while j < len(pieces) and pieces[j].start < hi:
            p = pieces[j]
            if p.start < lo:  # keep its head
                replacement.append(Piece(p.start, lo - p.start, p.id, p.size, p.off))
            if p.end > hi:  # keep its tail
                cut = hi - p.start
                replacement.append(Piece(hi, p.end - hi, p.id, p.size, p.off + cut))
            j += 1
        new = Piece(lo, rec.len, rec.id, rec.size, rec.off)
        # the head (if any) sorts before the new piece and the tail after it
        if replacement and replacement[0].start < lo:
            replacement.insert(1, new)
        else:
            replacement.insert(0, new)
        pieces[i:j] = replacement
        starts[i:j] = [p.start for p in replacement]
    return _fill_gaps(pieces)


def _fill_gaps(pieces: list[Piece]) -> list[Piece]:
    out: list[Piece] = []
    cursor = 0
    for p in pieces:
        if p.start > cursor:
            out.append(Piece(cursor, p.start - cursor, 0, 0, 0))
        out.append(p)
        cursor = p.end
    return out


class ChunkMap:
    """The consolidated pieces of one chunk, ready for range lookups (cached per open file)."""

    __slots__ = ("pieces", "_starts")

    def __init__(self, records: Iterable[SliceRecord]):
        self.pieces = consolidate(records)
        self._starts = [p.start for p in self.pieces]

    def in_range(self, start: int, end: int) -> Iterator[Piece]:
        """The parts of the pieces that overlap chunk range [start, end), clipped to it.

        Positions past the last piece are not yielded (the caller zero-fills them).
        """
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        for p in self.pieces[i:]:
            if p.start >= end:
                break
            if p.end <= start:
                continue
            lo, hi = max(p.start, start), min(p.end, end)
            yield Piece(lo, hi - lo, p.id, p.size, p.off + (lo - p.start))
