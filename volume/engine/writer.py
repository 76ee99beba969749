"""Write buffers: one open slice per chunk of a file being written.

Full blocks are handed to the block store as soon as the write head passes them (they upload in
the background); the partial tail is uploaded when the slice is finished, because a block's key
carries its final length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..juicefs import SliceRecord
from .blocks import BlockStore
from .posix import Caller


PREALLOCATE_FROM = 256 << 10


class SliceWriter:
    """One slice being written: contiguous bytes starting at chunk position ``pos``.

    Bytes go into a buffer holding one block; a full buffer is handed to the block store as is
    (no copy) and a fresh one is started, so a sequential writer copies each byte once.
    """

    __slots__ = ("blocks", "id", "pos", "length", "frozen", "buf", "fill", "inode")

    def __init__(self, blocks: BlockStore, slice_id: int, pos: int, inode: int = 0):
        self.blocks = blocks
        self.inode = inode  # the file the blocks belong to (fsync waits for them)
        self.id = slice_id
        self.pos = pos
        self.length = 0  # slice bytes written so far
        self.frozen = 0  # slice bytes [0, frozen) already handed over (whole blocks)
        self.buf: bytearray | None = None  # slice bytes [frozen, frozen + block size)
        self.fill = 0  # valid bytes in buf

    @property
    def end(self) -> int:
        """Chunk position one past the last byte written."""
        return self.pos + self.length

    def accepts(self, pos: int) -> bool:
        """Whether a write at chunk position ``pos`` can go into this slice (it touches only
        bytes not yet handed over and leaves no gap)."""
        return self.pos + self.frozen <= pos <= self.end

    def write(self, pos: int, data: bytes | memoryview) -> None:
        """Write ``data`` at chunk position ``pos`` (``accepts(pos)`` must hold)."""
        bs = self.blocks.block_bytes
        view = memoryview(data)
        rel = pos - self.pos - self.frozen
        done = 0
        while done < len(view):
            if self.buf is None:
                # large writes fill a whole-block buffer (no reallocation as it grows); small
                # ones, often random, must not pay for a whole block each
                big = len(view) - done >= PREALLOCATE_FROM
                self.buf = self.blocks.block_buffer() if big else bytearray()
                self.blocks.buffered(len(self.buf))
            n = min(len(view) - done, bs - rel)
            held = len(self.buf)
            self.buf[rel : rel + n] = view[done : done + n]
            if len(self.buf) != held:
                self.blocks.buffered(len(self.buf) - held)
            rel += n
            done += n
            self.fill = max(self.fill, rel)
            self.length = max(self.length, self.frozen + self.fill)
            if self.fill == bs:
                self.blocks.upload(self.id, self.frozen // bs, self.buf, self.inode, counted=True)
                self.buf, self.fill, rel = None, 0, 0
                self.frozen += bs

    def finish(self) -> SliceRecord:
        """Hand over the tail and return the slice's record, to be appended to its chunk."""
        if self.buf is not None and self.fill:
            held = len(self.buf)
            del self.buf[self.fill :]
            self.blocks.buffered(self.fill - held)
            self.blocks.upload(
                self.id, self.frozen // self.blocks.block_bytes, self.buf, self.inode, counted=True
            )
            self.frozen += self.fill
        elif self.buf is not None:
            self.blocks.buffered(-len(self.buf))
        self.buf, self.fill = None, 0
        return SliceRecord(self.pos, self.id, self.length, 0, self.length)

    def abandon(self) -> None:
        """Drop the unhanded buffer (its bytes are lost) and its accounting."""
        if self.buf is not None:
            self.blocks.buffered(-len(self.buf))
        self.buf, self.fill = None, 0


@dataclass
class FileWriter:
    """Buffered writes of one inode: open slices per chunk plus the length/mtime they imply."""

    length: int
    slices: dict[int, SliceWriter] = field(default_factory=dict)
    mtime_ns: int = 0
    dirty: bool = False
    #: the caller whose write must clear set-user-ID/set-group-ID bits when it is recorded
    kill_suid_for: Caller | None = None

    def abandon(self) -> None:
        """Drop every unrecorded slice (after a failure that was reported to the caller)."""
        for sw in self.slices.values():
            sw.abandon()
        self.slices.clear()
