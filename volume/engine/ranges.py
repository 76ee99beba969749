"""fallocate(2) and copy_file_range(2): range operations that change only slice records.

As the JuiceFS client records them: ``fallocate`` changes the length and, for ``PUNCH_HOLE`` and
``ZERO_RANGE``, appends id-0 records over the part of the range inside the file (no block is
written); ``copy_file_range`` appends, to the destination's chunks, records naming the source's
visible slices (holes as id-0 records) and raises each named slice's reference count: a
metadata-only clone, no block copied. Both follow the lock order of :mod:`volume.engine.files`
(the inode locks, two in ascending inode order, then one metadata transaction).
"""

from __future__ import annotations

import errno
import os
import time

from ..juicefs import CHUNK_SIZE, TYPE_DIRECTORY, TYPE_FILE, SliceRecord, unpack_slices
from ..stores import MetaTxn
from .files import Handle, OpenInode
from .posix import fs_error
from .slices import ChunkMap, Piece

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20
MAX_FILE_SIZE = 1 << 63  # what Linux's s_maxbytes allows at most


def _check_fallocate_mode(mode: int) -> None:
    """Linux's order of refusals (``vfs_fallocate``), for the modes JuiceFS serves."""
    main = mode & ~FALLOC_FL_KEEP_SIZE
    if main in (FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE) and mode & FALLOC_FL_KEEP_SIZE:
        raise fs_error(errno.EOPNOTSUPP)
    if main not in (0, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE):
        raise fs_error(errno.EOPNOTSUPP)  # collapse, insert, unshare, combinations
    if main == FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE:
        raise fs_error(errno.EOPNOTSUPP)


def _hole_records(start: int, end: int) -> list[tuple[int, SliceRecord]]:
    """``(chunk index, id-0 record)`` pairs covering file bytes [start, end)."""
    out = []
    while start < end:
        indx, pos = divmod(start, CHUNK_SIZE)
        n = min(end - start, CHUNK_SIZE - pos)
        out.append((indx, SliceRecord(pos, 0, 0, 0, n)))
        start += n
    return out


class RangeOps:
    """fallocate and copy_file_range of :class:`~volume.engine.Engine` (a mixin)."""

    def _writable_file(self, fh: int) -> Handle:
        h = self._handle(fh)
        if not h.writable:
            raise fs_error(errno.EBADF)
        return h

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) on an open file: allocate (a length change only), ``KEEP_SIZE``,
        ``PUNCH_HOLE | KEEP_SIZE`` and ``ZERO_RANGE`` (optionally ``| KEEP_SIZE``)."""
        if offset < 0 or length <= 0:
            raise fs_error(errno.EINVAL)
        _check_fallocate_mode(mode)
        h = self._writable_file(fh)
        if offset + length > MAX_FILE_SIZE:
            raise fs_error(errno.EFBIG)
        oi = h.inode
        with oi.lock:
            if self._frozen:
                raise fs_error(errno.EROFS)
            self._flush_locked(oi)
            with self._change() as tx:
                attr = self._attr(tx, oi.ino)
                if attr.type == TYPE_DIRECTORY:
                    raise fs_error(errno.EISDIR)
                if attr.type != TYPE_FILE:
                    raise fs_error(errno.ENODEV)
                old = attr.length
                end = offset + length
                if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) and offset < old:
                    for indx, rec in _hole_records(offset, min(end, old)):
                        tx.append_chunk(oi.ino, indx, rec.pack())
                if end > old and not mode & FALLOC_FL_KEEP_SIZE:
                    self._account_length(tx, oi.ino, attr, end)
                attr.mtime_ns = attr.ctime_ns = time.time_ns()
                if h.caller is not None:
                    self._kill_suid(attr, h.caller)
                tx.set_attr(oi.ino, attr)
            oi.length = attr.length
            oi.chunk_maps.clear()

    def copy_file_range(
        self, fh_in: int, off_in: int, fh_out: int, off_out: int, length: int, flags: int = 0
    ) -> int:
        """copy_file_range(2) between open files, as a clone of slice records (no block is
        read or written); returns the bytes copied (fewer at the source's end)."""
        if flags:
            raise fs_error(errno.EINVAL)
        if off_in < 0 or off_out < 0 or length < 0:
            raise fs_error(errno.EINVAL)
        hi, ho = self._handle(fh_in), self._handle(fh_out)
        src, dst = hi.inode, ho.inode
        kinds = self._read(lambda tx: (self._attr(tx, src.ino).type, self._attr(tx, dst.ino).type))
        if TYPE_DIRECTORY in kinds:
            raise fs_error(errno.EISDIR)
        if kinds != (TYPE_FILE, TYPE_FILE):
            raise fs_error(errno.EINVAL)
        if (
            hi.flags & os.O_ACCMODE == os.O_WRONLY
            or not ho.writable
            or ho.flags & os.O_APPEND
        ):
            raise fs_error(errno.EBADF)
        if off_in + length > MAX_FILE_SIZE or off_out + length > MAX_FILE_SIZE:
            raise fs_error(errno.EOVERFLOW)
        if src is dst:
            with src.lock:
                return self._copy_locked(src, off_in, dst, off_out, length, ho)
        low, high = (src, dst) if src.ino < dst.ino else (dst, src)  # the lock order
        with low.lock, high.lock:
            return self._copy_locked(src, off_in, dst, off_out, length, ho)

    def _copy_locked(
        self, src: OpenInode, off_in: int, dst: OpenInode, off_out: int, length: int, ho: Handle
    ) -> int:
        self._flush_locked(src)
        self._flush_locked(dst)
        size = max(min(length, src.length - off_in), 0)
        if src is dst and off_out + size > off_in and off_out < off_in + size:
            raise fs_error(errno.EINVAL)  # overlapping ranges of one file
        if size == 0:
            return 0
        if self._frozen:
            raise fs_error(errno.EROFS)
        with self._change() as tx:
            attr = self._attr(tx, dst.ino)
            pos = off_in
            while pos < off_in + size:
                indx = pos // CHUNK_SIZE
                base = indx * CHUNK_SIZE
                stop = min(off_in + size, base + CHUNK_SIZE)
                # a hole under the whole chunk first, so gaps become id-0 records too
                cm = ChunkMap([SliceRecord(0, 0, 0, 0, CHUNK_SIZE)])
                for rec in self._chunk_records(tx, src.ino, indx):
                    cm.apply(rec)
                for piece in cm.in_range(pos - base, stop - base):
                    self._clone_piece(tx, dst.ino, base + piece.start - off_in + off_out, piece)
                pos = stop
            if off_out + size > attr.length:
                self._account_length(tx, dst.ino, attr, off_out + size)
            attr.mtime_ns = attr.ctime_ns = time.time_ns()
            if ho.caller is not None:
                self._kill_suid(attr, ho.caller)
            tx.set_attr(dst.ino, attr)
        dst.length = attr.length
        dst.chunk_maps.clear()
        return size

    @staticmethod
    def _chunk_records(tx: MetaTxn, ino: int, indx: int) -> list[SliceRecord]:
        try:
            return unpack_slices(tx.read_chunk(ino, indx))
        except ValueError as exc:
            raise fs_error(errno.EIO) from exc

    @staticmethod
    def _clone_piece(tx: MetaTxn, ino: int, dest: int, piece: Piece) -> None:
        """Records at file offset ``dest`` naming ``piece`` (split at a chunk boundary), each
        raising the slice's reference count, as JuiceFS does per record."""
        done = 0
        while done < piece.length:
            indx, pos = divmod(dest + done, CHUNK_SIZE)
            n = min(piece.length - done, CHUNK_SIZE - pos)
            if piece.id:
                rec = SliceRecord(pos, piece.id, piece.size, piece.off + done, n)
                tx.add_slice_ref(piece.id, piece.size, 1)
            else:
                rec = SliceRecord(pos, 0, 0, 0, n)
            tx.append_chunk(ino, indx, rec.pack())
            done += n
