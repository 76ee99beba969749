"""Write buffers: one open slice per chunk of a file being written.

Full blocks are handed to the block store as soon as the write head passes them (they upload in
the background); the partial tail is uploaded when the slice is finished, because a block's key
carries its final length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..juicefs import SliceRecord
from ..stores import ByteStream, StagedObject
from .blocks import BlockStore
from .posix import Caller


PREALLOCATE_FROM = 256 << 10


class SliceWriter:
    """One slice being written: contiguous bytes starting at chunk position ``pos``.

    Bytes go into the block being filled (:meth:`BlockStore.new_block`): a block staged in the
    store, written in place, or a buffer holding one block. A full block is handed over as is
    (sealed, or uploaded without a copy) and the next one started, so a sequential writer copies
    each byte once.
    """

    __slots__ = ("blocks", "id", "pos", "length", "frozen", "buf", "fill", "inode")

    def __init__(self, blocks: BlockStore, slice_id: int, pos: int, inode: int = 0):
        self.blocks = blocks
        self.inode = inode  # the file the blocks belong to (fsync waits for them)
        self.id = slice_id
        self.pos = pos
        self.length = 0  # slice bytes written so far
        self.frozen = 0  # slice bytes [0, frozen) already handed over (whole blocks)
        #: slice bytes [frozen, frozen + block size), staged in the store or in memory
        self.buf: bytearray | StagedObject | None = None
        self.fill = 0  # valid bytes in buf

    @property
    def end(self) -> int:
        """Chunk position one past the last byte written."""
        return self.pos + self.length

    def accepts(self, pos: int) -> bool:
        """Whether a write at chunk position ``pos`` can go into this slice (it touches only
        bytes not yet handed over and leaves no gap)."""
        return self.pos + self.frozen <= pos <= self.end

    def write(self, pos: int, data: bytes | memoryview | ByteStream) -> None:
        """Write ``data`` at chunk position ``pos`` (``accepts(pos)`` must hold)."""
        bs = self.blocks.block_bytes
        streamed = isinstance(data, ByteStream)  # (its parts are streams too)
        view = data if streamed else memoryview(data)
        rel = pos - self.pos - self.frozen
        total, done = len(view), 0
        while done < total:
            if self.buf is None:
                big = total - done >= PREALLOCATE_FROM
                self.buf = self.blocks.new_block(self.id, self.frozen // bs, big=big)
            n = min(total - done, bs - rel)
            buf, piece = self.buf, view if n == total else view[done : done + n]
            if isinstance(buf, bytearray):
                held = len(buf)
                buf[rel : rel + n] = piece.read() if streamed else piece
                if len(buf) != held:
                    self.blocks.buffered(len(buf) - held)
            elif streamed:
                buf.write_stream(rel, piece)
            else:
                buf.write(rel, piece)
            rel += n
            done += n
            self.fill = max(self.fill, rel)
            self.length = max(self.length, self.frozen + self.fill)
            if self.fill == bs:
                self._hand_over()
                rel = 0

    def _hand_over(self) -> None:
        """Hand the filled part of the current block to the block store; the next starts empty."""
        buf, indx = self.buf, self.frozen // self.blocks.block_bytes
        if isinstance(buf, bytearray):
            held = len(buf)
            del buf[self.fill :]
            self.blocks.buffered(self.fill - held)
            self.blocks.upload(self.id, indx, buf, self.inode, counted=True)
        elif buf is not None:
            self.blocks.seal(self.id, indx, buf, self.fill, self.inode)
        self.frozen += self.fill
        self.buf, self.fill = None, 0

    def finish(self) -> SliceRecord:
        """Hand over the tail and return the slice's record, to be appended to its chunk."""
        if self.fill:
            self._hand_over()
        else:
            self.abandon()
        return SliceRecord(self.pos, self.id, self.length, 0, self.length)

    def abandon(self) -> None:
        """Drop the unhanded block (its bytes are lost) and its accounting."""
        buf = self.buf
        if isinstance(buf, bytearray):
            self.blocks.buffered(-len(buf))
        elif buf is not None:
            buf.discard()
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
