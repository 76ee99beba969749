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
    return ChunkMap(records).pieces


class ChunkMap:
    """The consolidated pieces of one chunk, ready for range lookups (cached per open file).

    ``pieces`` cover [0, end of the last record) without gaps (gaps are id-0 pieces), sorted.
    """

    __slots__ = ("_starts", "pieces")

    def __init__(self, records: Iterable[SliceRecord] = ()):
        self.pieces: list[Piece] = []
        self._starts: list[int] = []
        for rec in records:
            self.apply(rec)

    def apply(self, rec: SliceRecord) -> None:
        """Lay one more record on top (it wins where it overlaps)."""
        if rec.len == 0:
            return
        lo, hi = rec.pos, rec.pos + rec.len
        if hi > CHUNK_SIZE:
            raise ValueError(f"slice record {rec} runs past the end of its chunk")
        pieces, starts = self.pieces, self._starts
        end = pieces[-1].end if pieces else 0
        if lo > end:
            pieces.append(Piece(end, lo - end, 0, 0, 0))
            starts.append(end)
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
