"""The per-file data path: open handles, buffered writes, reads, truncation, fsync.

Lock order
==========

Every thread takes the engine's locks in this order, never the other way round, and releases
them before it waits on anything but a lock below the one it holds:

1. ``OpenInode.lock`` -- one inode's data: its write buffer, its cached chunk maps and its
   length. A data operation (write, read, flush, truncate, fallocate, compaction's cache update)
   holds the lock of the inode it works on. A thread holds at most one inode lock, except
   ``copy_file_range``, which takes its two in ascending inode order.
2. ``Engine._table_lock`` -- the open-inode and handle tables. Held briefly; inside it a thread
   may run a metadata transaction (open reads a length, unlink and rename decide "still open?"
   atomically with their change, ``snapshot`` copies the store), but never takes an inode lock,
   never touches the object store and never waits for an upload.
3. ``Engine._ids_lock`` -- the inode and slice id batches; a refill is one metadata transaction.
4. The metadata store's own lock, held for one transaction.
5. ``BlockStore``'s condition (uploads in flight, back-pressure) and the compaction queue's
   lock: leaves, taken last; a writer waiting for upload room holds only its inode lock.

Consequences: object-store I/O (uploads, reads, compaction copies) happens with at most an inode
lock held, never with the table lock; an inode whose last handle is being closed is flushed under
its own lock first, and only then is it removed from the table under the table lock.

An inode's :class:`OpenInode` exists while something *pins* it: an open handle, or a truncate
through a path (fallocate and copy_file_range work on handles). Its
``length`` is read from the metadata when the first pin creates it and changed afterwards only
under its lock, so every data operation sees the length the last one left.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import VolumeSystemError
from ..juicefs import CHUNK_SIZE, TYPE_DIRECTORY, TYPE_FILE, Attr, SliceRecord, unpack_slices
from ..stores import ByteStream
from .blocks import close_spans
from .compaction import DEFAULT_COMPACTION, plan_compaction
from .posix import ROOT, W_OK, Caller, check_access, fs_error, open_access_mask
from .reclaim import hides_earlier
from .slices import ChunkMap, Piece
from .writer import FileWriter, SliceWriter

log = logging.getLogger("volume.engine")

_ZEROS = memoryview(bytes(1 << 20))  # what a hole reads as, a piece at a time


@dataclass
class OpenInode:
    """State shared by every open handle (and pin) of one inode."""

    ino: int
    length: int
    refs: int = 0
    unlinked: bool = False
    writer: FileWriter | None = None
    chunk_maps: dict[int, ChunkMap] = field(default_factory=dict)
    seq_end: int = -1  # end of the last read, to detect sequential reads
    lock: threading.RLock = field(default_factory=threading.RLock)


@dataclass
class Handle:
    """One open file."""

    inode: OpenInode
    flags: int
    caller: Caller | None = None  # who opened it (None: root, whose writes keep suid bits)

    @property
    def writable(self) -> bool:
        """Whether the handle was opened for writing."""
        return self.flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)


class FileOps:
    """The data half of :class:`~volume.engine.Engine` (a mixin; the engine supplies the
    tables, locks, transaction helpers and the block store)."""

    # ------------------------------------------------------------------ pins and handles

    def _pin(self, ino: int, length: int | None = None) -> tuple[OpenInode, Attr | None]:
        """The inode's shared state, created when absent (with ``length``, or the length read
        from the metadata: a file just created passes its 0); and the attributes read to create
        it (None when none were read)."""
        with self._table_lock:
            oi, attr = self._open.get(ino), None
            if oi is None:
                if length is None:
                    attr = self._load_attr(ino)
                    length = attr.length
                oi = self._open[ino] = OpenInode(ino, length)
            oi.refs += 1
            return oi, attr

    def _pin_attr(self, ino: int) -> tuple[OpenInode, Attr]:
        """Pin the inode and read its attributes (as getattr answers them). An inode nobody
        has pinned is read once, for both: opening a file costs one metadata read, not two."""
        oi, attr = self._pin(ino)
        if attr is not None:
            return oi, attr  # a new pin has no buffered writes to overlay
        try:
            return oi, self.getattr(ino)
        except BaseException:
            self._unpin(oi)
            raise

    def _unpin(self, oi: OpenInode) -> None:
        """Drop one pin; the last one removes the inode from the table, and deletes it when it
        was unlinked meanwhile. ``oi`` must have no buffered writes left (flush first)."""
        with self._table_lock:
            oi.refs -= 1
            if oi.refs > 0:
                return
            if self._open.get(oi.ino) is oi:
                del self._open[oi.ino]
            if oi.writer is not None:  # its flush failed, and the close reported it
                oi.writer.abandon()
                oi.writer = None
            drop = oi.unlinked and not self.read_only and not self._frozen
        if drop:
            with self._recording() as tx:
                attr = tx.get_attr(oi.ino)
                if attr is not None and attr.nlink <= 0:
                    self._drop_inode(tx, oi.ino, attr)
                tx.remove_sustained(self._session, oi.ino)

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise fs_error(errno.EBADF) from None

    def _new_handle(self, oi: OpenInode, flags: int, caller: Caller = ROOT) -> int:
        with self._table_lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = Handle(oi, flags, None if caller.uid == 0 else caller)
            return fh

    def open(self, ino: int, flags: int, caller: Caller = ROOT) -> int:
        """Open an inode; returns a handle number. ``O_TRUNC`` truncates."""
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if writing and (self.read_only or self._frozen):
            raise fs_error(errno.EROFS)
        oi, attr = self._pin_attr(ino)
        try:
            check_access(attr, open_access_mask(flags), caller)
            if attr.type == TYPE_DIRECTORY and writing:
                raise fs_error(errno.EISDIR)
            if flags & os.O_TRUNC and attr.type == TYPE_FILE:
                with oi.lock:
                    self._truncate_locked(oi, 0, caller, check=False, kill_suid=True)
            return self._new_handle(oi, flags, caller)
        except BaseException:
            self._unpin(oi)
            raise

    def create(
        self, parent: int, name: bytes, mode: int, flags: int, caller: Caller = ROOT
    ) -> tuple[int, int, Attr]:
        """Create and open a regular file: ``(handle, inode, attr)``.

        An existing file is opened (EEXIST with ``O_EXCL``).
        """
        try:
            ino, attr = self._create_node(parent, name, TYPE_FILE, mode, caller)
        except OSError as exc:
            if exc.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            ino, attr = self.lookup(parent, name, caller)
            if attr.type == TYPE_DIRECTORY:
                raise fs_error(errno.EISDIR, name) from None
            return self.open(ino, flags & ~os.O_CREAT, caller), ino, self.getattr(ino)
        return self._new_handle(self._pin(ino, 0)[0], flags, caller), ino, attr

    def release(self, fh: int) -> None:
        """Close a handle; the last close of an unlinked inode deletes it."""
        with self._table_lock:
            h = self._handles.pop(fh, None)
        if h is None:
            raise fs_error(errno.EBADF)
        try:
            with h.inode.lock:
                self._flush_locked(h.inode)
        finally:
            self._unpin(h.inode)

    def inode_of(self, fh: int) -> int:
        """The inode an open handle refers to."""
        return self._handle(fh).inode.ino

    # ------------------------------------------------------------------ writes

    def write(self, fh: int, offset: int, data: bytes | memoryview | ByteStream) -> int:
        """Write at ``offset`` (at the end with ``O_APPEND``); returns the bytes written.

        ``data`` may be a :class:`~volume.stores.ByteStream` (a FUSE request's bytes in a pipe),
        which goes into staged blocks without passing through the interpreter.

        A non-owner's write clears the file's set-user-ID and set-group-ID bits (as Linux's
        ``file_remove_privs``), recorded with the data.
        """
        h = self._handle(fh)
        if not h.writable:
            raise fs_error(errno.EBADF)
        if offset < 0:
            raise fs_error(errno.EINVAL)
        if not data:
            return 0
        oi = h.inode
        view = data if isinstance(data, ByteStream) else memoryview(data).cast("B")
        with oi.lock:
            if self._frozen:
                raise fs_error(errno.EROFS)
            w = oi.writer
            if w is None:
                w = oi.writer = FileWriter(length=oi.length)
            if h.flags & os.O_APPEND:
                offset = w.length
            total, done = len(view), 0
            while done < total:
                indx, pos = divmod(offset + done, CHUNK_SIZE)
                n = min(total - done, CHUNK_SIZE - pos)
                sw = w.slices.get(indx)
                if sw is None or not sw.accepts(pos):
                    if sw is not None:
                        self._record_slices(oi, {indx: sw.finish()})
                    sw = w.slices[indx] = SliceWriter(
                        self.blocks, self._alloc("slice"), pos, oi.ino
                    )
                sw.write(pos, view if n == total else view[done : done + n])
                if sw.end == CHUNK_SIZE:  # a full chunk: nothing more can join this slice
                    del w.slices[indx]
                    self._record_slices(oi, {indx: sw.finish()})
                done += n
            w.length = max(w.length, offset + total)
            w.mtime_ns = time.time_ns()
            w.dirty = True
            if h.caller is not None:
                w.kill_suid_for = h.caller
        return total

    def _record_slices(self, oi: OpenInode, records: dict[int, SliceRecord]) -> None:
        """Append finished slices' records (and the length they imply) to the metadata.

        Called with ``oi.lock`` held.
        """
        w = oi.writer
        fragmented = []
        with self._recording() as tx:
            attr = self._attr(tx, oi.ino)
            for indx, rec in records.items():
                count = tx.append_chunk(oi.ino, indx, rec.pack())
                tx.add_slice_ref(rec.id, rec.size, 1)
                if self._compactions is not None and (
                    self.compaction.wants(count)
                    or count > 1  # an in-place rewrite: compacting frees what it hides
                    and self.slice_freed is not None
                    and hides_earlier(rec, indx, attr.length, self.compaction.large_piece)
                ):
                    fragmented.append(indx)
            end = max((i * CHUNK_SIZE + r.pos + r.len for i, r in records.items()), default=0)
            if w is not None and not w.slices:
                end = max(end, w.length)  # everything is recorded: the full length too
            if end > attr.length:
                self._account_length(tx, oi.ino, attr, end)
            if w is not None and w.mtime_ns:
                attr.mtime_ns = attr.ctime_ns = w.mtime_ns
            if w is not None and w.kill_suid_for is not None:
                self._kill_suid(attr, w.kill_suid_for)
            tx.set_attr(oi.ino, attr)
            oi.length = attr.length
        for indx, rec in records.items():  # committed: cached maps take the record as it is
            cm = oi.chunk_maps.get(indx)
            if cm is not None:
                cm.apply(rec)
        for indx in fragmented:
            self._compactions.request(oi.ino, indx)

    def _flush_locked(self, oi: OpenInode) -> None:
        """Record the inode's buffered writes (``oi.lock`` held)."""
        w = oi.writer
        if w is None or not w.dirty:
            return
        records = {indx: sw.finish() for indx, sw in w.slices.items()}
        w.slices.clear()
        # an unlinked inode too: its open handles still read it (it goes at the last release)
        self._record_slices(oi, records)
        oi.writer = None

    def _flush_inode(self, ino: int) -> None:
        oi = self._open.get(ino)
        if oi is not None:
            with oi.lock:
                self._flush_locked(oi)

    def flush(self, fh: int | None = None) -> None:
        """Record buffered writes in the metadata store, as a close does, without closing:
        the handle's inode's, or (``fh`` None) every open file's."""
        if fh is not None:
            oi = self._handle(fh).inode
            with oi.lock:
                self._flush_locked(oi)
            return
        with self._table_lock:
            open_inodes = list(self._open.values())
        for oi in open_inodes:
            with oi.lock:
                self._flush_locked(oi)

    def flush_all(self) -> None:
        """Record the buffered writes of every open file (``flush()``; kept for callers)."""
        self.flush()

    def fsync(self, ino: int) -> None:
        """fsync(2)/fdatasync(2) of an inode: returns once its writes are recorded, every block
        is stored durably and the metadata is durable in the metadata store.

        ``OSError(EIO)`` when a block cannot be stored (the data stays buffered).
        """
        self._flush_inode(ino)
        self.sync(ino)

    def sync(self, ino: int | None = None) -> None:
        """syncfs(2): every recorded write's blocks stored durably, the metadata durable (with
        ``ino``: that file's blocks, as fsync(2))."""
        try:
            if ino is None:
                self.blocks.drain(self.io_timeout)
            else:
                self.blocks.drain_inode(ino, self.io_timeout)
            self.blocks.sync(ino)
        except VolumeSystemError as exc:
            log.error("fsync failed: %s", exc)
            raise OSError(errno.EIO, f"fsync: {exc}") from exc
        self.meta_sync()

    # ------------------------------------------------------------------ reads

    def read(self, fh: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end of the file)."""
        ino, parts = self._read_pieces(fh, offset, size)
        if len(parts) == 1:
            length, piece = parts[0]
            if piece is not None and piece.id:
                return self.blocks.read(piece.id, piece.size, piece.off, length, inode=ino)
            return bytes(length)
        out = bytearray(sum(length for length, _ in parts))
        self._read_parts(ino, parts, memoryview(out))
        return bytes(out)

    def read_into(self, fh: int, offset: int, into: memoryview) -> int:
        """As :meth:`read` of ``len(into)`` bytes, copied into ``into``; returns how many (the
        FUSE layer reads straight into libfuse's reply buffer this way)."""
        ino, parts = self._read_pieces(fh, offset, len(into))
        n = sum(length for length, _ in parts)
        self._read_parts(ino, parts, into[:n])
        return n

    def read_spans(self, fh: int, offset: int, size: int) -> list[tuple[int, int, int]] | None:
        """As :meth:`read`, but where the bytes lie instead of the bytes: ``(fd, position,
        length)`` per part, in order, each ``fd`` open on a block's file for the caller to read
        (e.g. ``splice(2)``) and close; ``[]`` past the end of the file. None when a part is not
        in a file (a hole, a block in memory, a store without files): :meth:`read_into` then."""
        ino, parts = self._read_pieces(fh, offset, size)
        spans: list[tuple[int, int, int]] = []
        try:
            for length, piece in parts:
                found = None
                if piece is not None and piece.id:
                    found = self.blocks.file_spans(
                        piece.id, piece.size, piece.off, length, inode=ino
                    )
                if found is None:
                    break
                spans += found
            else:
                return spans
        except BaseException:
            close_spans(spans)
            raise
        close_spans(spans)  # a part not in a file
        return None

    def _read_parts(self, ino: int, parts: list[tuple[int, Piece | None]], out: memoryview) -> None:
        pos = 0
        for length, piece in parts:
            if piece is not None and piece.id:
                self.blocks.read_into(piece.id, piece.size, piece.off, out[pos : pos + length],
                                      inode=ino)  # fmt: skip
            else:  # a hole
                for at in range(pos, pos + length, len(_ZEROS)):
                    step = min(len(_ZEROS), pos + length - at)
                    out[at : at + step] = _ZEROS[:step]
            pos += length

    def _read_pieces(
        self, fh: int, offset: int, size: int
    ) -> tuple[int, list[tuple[int, Piece | None]]]:
        """The inode of an open handle and the pieces ``(length, piece-or-None)`` of up to
        ``size`` bytes at ``offset``; starts readahead when the reads are sequential."""
        h = self._handle(fh)
        if h.flags & os.O_ACCMODE == os.O_WRONLY:
            raise fs_error(errno.EBADF)
        if offset < 0:
            raise fs_error(errno.EINVAL)
        oi = h.inode
        with oi.lock:
            if oi.writer is not None and oi.writer.dirty:
                self._flush_locked(oi)
            end = min(offset + size, oi.length)
            if offset >= end:
                return oi.ino, []
            parts = list(self._pieces(oi, offset, end))
            sequential = offset == oi.seq_end
            oi.seq_end = end
            if sequential and self.readahead_bytes:
                ahead = list(self._pieces(oi, end, min(end + self.readahead_bytes, oi.length)))
            else:
                ahead = []
        # blocks are immutable: the pieces stay readable after the lock is gone
        for _, piece in ahead:
            if piece is not None and piece.id:
                self.blocks.prefetch(piece.id, piece.size, piece.off, piece.length)
        return oi.ino, parts

    def _pieces(self, oi: OpenInode, start: int, end: int) -> Iterator[tuple[int, Piece | None]]:
        """``(length, piece-or-None)`` covering file bytes [start, end); None reads zeros."""
        pos = start
        while pos < end:
            indx = pos // CHUNK_SIZE
            base = indx * CHUNK_SIZE
            stop = min(end, base + CHUNK_SIZE)
            cursor = pos
            for piece in self._chunk_map(oi, indx).in_range(pos - base, stop - base):
                if piece.start + base > cursor:
                    yield piece.start + base - cursor, None
                yield piece.length, piece
                cursor = piece.start + base + piece.length
            if cursor < stop:
                yield stop - cursor, None
            pos = stop

    def _chunk_map(self, oi: OpenInode, indx: int) -> ChunkMap:
        cm = oi.chunk_maps.get(indx)
        if cm is None:
            blob = self._read(lambda tx: tx.read_chunk(oi.ino, indx))
            try:
                cm = ChunkMap(unpack_slices(blob))
            except ValueError as exc:
                log.error("inode %d chunk %d: corrupt slice records: %s", oi.ino, indx, exc)
                raise fs_error(errno.EIO) from exc
            oi.chunk_maps[indx] = cm
        return cm

    # ------------------------------------------------------------------ truncate

    def _truncate(self, ino: int, size: int, caller: Caller, handle: int | None) -> None:
        """Set a file's length (truncate(2) / ftruncate(2))."""
        oi, _ = self._pin(ino)
        try:
            with oi.lock:
                self._truncate_locked(oi, size, caller, check=handle is None, kill_suid=True)
        finally:
            self._unpin(oi)

    def _truncate_locked(
        self, oi: OpenInode, size: int, caller: Caller, *, check: bool, kill_suid: bool
    ) -> None:
        """Truncate with ``oi.lock`` held, hiding the cut (or grown) range behind id-0 records."""
        self._flush_locked(oi)
        ino = oi.ino
        with self._change() as tx:
            attr = self._attr(tx, ino)
            if attr.type == TYPE_DIRECTORY:
                raise fs_error(errno.EISDIR)
            if attr.type != TYPE_FILE:
                raise fs_error(errno.EINVAL)
            if check:
                check_access(attr, W_OK, caller)
            old = attr.length
            lo, hi = min(old, size), max(old, size)
            for indx in tx.chunk_indexes(ino):
                base = indx * CHUNK_SIZE
                if size < old and base >= size:
                    self._release_chunk(tx, ino, indx)  # wholly past the new end
                elif base < hi and base + CHUNK_SIZE > lo:
                    a, b = max(lo, base) - base, min(hi, base + CHUNK_SIZE) - base
                    tx.append_chunk(ino, indx, SliceRecord(a, 0, 0, 0, b - a).pack())
            self._account_length(tx, ino, attr, size)
            attr.mtime_ns = attr.ctime_ns = time.time_ns()
            if kill_suid:
                self._kill_suid(attr, caller)
            tx.set_attr(ino, attr)
        oi.length = size
        oi.chunk_maps.clear()

    # ------------------------------------------------------------------ compaction

    def compact_chunk(self, ino: int, indx: int) -> bool:
        """Rewrite chunk ``indx`` of file ``ino`` with fewer records (see
        :mod:`volume.engine.compaction`); whether it changed.

        The file reads the same bytes before, during and after. Concurrent writers are safe: the
        replacement is committed only if the records it was planned from are still the chunk's
        first records (records appended meanwhile are kept after it); otherwise nothing changes
        and the copied blocks stay unreferenced. No lock is held while blocks are copied.
        """
        if self.read_only:
            raise fs_error(errno.EROFS)
        blob = self._read(lambda tx: tx.read_chunk(ino, indx))
        try:
            records = unpack_slices(blob)
        except ValueError:
            return False  # a reader reports the damage; nothing to rewrite from
        plan = plan_compaction(records, (self.compaction or DEFAULT_COMPACTION).large_piece)
        if plan is None:
            return False
        new_id = 0
        if plan.copies:
            new_id = self._alloc("slice")
            writer = SliceWriter(self.blocks, new_id, 0, ino)
            try:
                for piece in plan.copies:
                    data = (
                        self.blocks.read(piece.id, piece.size, piece.off, piece.length, inode=ino)
                        if piece.id
                        else bytes(piece.length)
                    )
                    writer.write(writer.end, data)
                writer.finish()
            except BaseException:
                writer.abandon()
                raise
        replacement = plan.records(new_id)
        with self._recording() as tx:
            current = tx.read_chunk(ino, indx)
            if not current.startswith(blob):  # truncated, deleted or rewritten meanwhile
                if new_id and self.slice_freed is not None:  # the copy is nobody's
                    self.slice_freed(new_id, writer.length, ino)
                return False
            tx.write_chunk(
                ino, indx, b"".join(r.pack() for r in replacement) + current[len(blob) :]
            )
            refs: dict[tuple[int, int], int] = {}
            for sign, recs in ((-1, records), (1, replacement)):
                for r in recs:
                    if r.id:
                        refs[r.id, r.size] = refs.get((r.id, r.size), 0) + sign
            for (slice_id, size), delta in refs.items():
                if delta and tx.add_slice_ref(slice_id, size, delta) <= 0 < -delta:
                    if self.slice_freed is not None:  # compacted away: the reclaimer decides
                        self.slice_freed(slice_id, size, ino)
        oi = self._open.get(ino)
        if oi is not None:
            with oi.lock:
                oi.chunk_maps.pop(indx, None)
        log.debug("inode %d chunk %d: %d records -> %d", ino, indx, len(records), len(replacement))
        return True

