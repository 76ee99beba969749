"""The libfuse session of a FUSE mount: mfusepy's ``FUSE`` with the calls it drops passed on.

:class:`LibfuseSession` runs libfuse's multithreaded loop (in its constructor) and hands each
call to an :class:`~volume.mount.operations.EngineOperations`; for the commonest calls it fills
libfuse's C structs itself (one ``struct.pack_into`` per ``struct stat``).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import operator
import os
import struct
import threading
from typing import Any

from ..engine import NOW
from ..engine.blocks import close_spans
from ..engine.posix import TYPE_TO_IFMT as _IFMT
from ..errors import VolumeSystemError
from ..juicefs import Attr
from ..stores import ByteStream
from ._libfuse import BufVec, libfuse, mfusepy, python_api
from .operations import EngineOperations

log = logging.getLogger("volume.mount.fuse")

__all__ = ["LibfuseSession"]

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
FUSE_READDIR_PLUS = 1  # readdir flag: the kernel wants attributes with the names
FUSE_FILL_DIR_PLUS = 2  # filler flag: this entry carries full attributes


class LibfuseSession(mfusepy.FUSE if mfusepy is not None else object):  # type: ignore[misc]
    """mfusepy's ``FUSE`` (which runs the loop in its constructor) with what it drops passed on.

    mfusepy's libfuse 3 callbacks drop rename's flags, the open file of truncate / chmod / chown /
    utimens, UTIME_NOW / UTIME_OMIT, and readdirplus attributes; it inspects ``create``'s
    signature on every call, copies every write, accepts only ``bytes`` from ``read``, and answers
    EINVAL for failures that are not ``OSError``. These overrides pass the arguments through, hand
    writes over as views, copy any bytes-like read result, and answer EIO for failures of the
    system (the stores, bugs), logging them.

    Each libfuse worker thread keeps one Python thread state for all its calls (ctypes would
    create and destroy one per call, a good part of a call's cost); they are deleted once the
    loop, which joins its workers, has ended.
    """

    def __init__(self, operations: Any, mountpoint: str, **kwargs: Any) -> None:
        self._loop_thread = threading.get_ident()
        self._kept_states: dict[int, int] = {}  # worker thread -> its PyThreadState
        self._held: dict[int, list[tuple[int, int, int]]] = {}  # worker -> its last read's spans
        try:
            super().__init__(operations, mountpoint, **kwargs)
        finally:
            for spans in self._held.values():
                close_spans(spans)
            self._held.clear()
            for state in self._kept_states.values():
                python_api().PyThreadState_Clear(state)
                python_api().PyThreadState_Delete(state)
            self._kept_states.clear()

    def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> int:
        ident = threading.get_ident()
        if ident not in self._kept_states and ident != self._loop_thread:
            api = python_api()
            api.PyGILState_Ensure()  # a second hold: ctypes' release leaves the state alive
            self._kept_states[ident] = api.PyThreadState_Get()
        if self._held:  # the replies of this thread's last read have been sent
            held = self._held.pop(ident, None)
            if held:
                close_spans(held)
        try:
            return func(*args, **kwargs) or 0
        except OSError as exc:
            if exc.errno and exc.errno > 0 and not isinstance(exc, VolumeSystemError):
                return -exc.errno
            log.error("FUSE %s failed: %s", func.__name__, exc)
        except BaseException:
            log.exception("FUSE %s failed", func.__name__)
        return -errno.EIO

    def _str(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    @staticmethod
    def _fh(fip: Any) -> int | None:
        return fip.contents.fh if fip else None

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return self.operations.rename(self._str(old), self._str(new), flags)

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        return self.operations.truncate(self._str(path), length, self._fh(fip))

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
        return self.operations.chmod(self._str(path), mode, self._fh(fip))

    def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
        # (uid_t) -1 and (gid_t) -1 mean "unchanged"
        uid = -1 if uid == 0xFFFFFFFF else uid
        gid = -1 if gid == 0xFFFFFFFF else gid
        return self.operations.chown(self._str(path), uid, gid, self._fh(fip))

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        if buf:
            atime, mtime = (_utime(ts) for ts in (buf.contents.actime, buf.contents.modtime))
        else:
            atime = mtime = NOW
        return self.operations.utimens(self._str(path), atime, mtime, self._fh(fip))

    def create(self, path: bytes, mode: int, fip: Any) -> int:
        fi = fip.contents
        fi.fh = self.operations.create(self._str(path), mode, fi.flags)
        return 0

    def copy_file_range(
        self, path_in: bytes | None, fip_in: Any, off_in: int,
        path_out: bytes | None, fip_out: Any, off_out: int, size: int, flags: int,
    ) -> int:  # fmt: skip
        # mfusepy declares the callback but has no wrapper for it
        return self.operations.copy_file_range(
            self._str(path_in), fip_in.contents.fh, off_in,
            self._str(path_out), fip_out.contents.fh, off_out, size, flags,
        )  # fmt: skip

    def fgetattr(self, path: bytes | None, buf: Any, fip: Any) -> int:
        # mfusepy's, with the stat packed in one go (getattr is the commonest call)
        ops = self.operations
        if type(ops).getattr is EngineOperations.getattr:
            _pack_stat(buf.contents, *ops.attributes(self._str(path), self._fh(fip)))
        else:  # the benchmark's do-nothing server answers with a dict
            ctypes.memset(buf, 0, ctypes.sizeof(mfusepy.c_stat))
            _fill_stat(buf.contents, ops.getattr(self._str(path), self._fh(fip)))
        return 0

    def getxattr(self, path: bytes, name: bytes, value: Any, size: int, *args: Any) -> int:
        # the usual answer returned, not raised: an exception through mfusepy's wrapper costs
        # as much as the rest of the call
        ops = self.operations
        if type(ops).getxattr is EngineOperations.getxattr:
            miss = ops.known_xattr_miss(self._str(path), name.decode(self.encoding, self.errors))
            if miss:
                return -miss
        return super().getxattr(path, name, value, size, *args)

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        ops = self.operations
        if type(ops).read is EngineOperations.read:  # into libfuse's buffer, no copy between
            target = ctypes.cast(buf, ctypes.POINTER(ctypes.c_char * size)).contents
            return ops.read_into(self._str(path), memoryview(target).cast("B"), offset,
                                 fip.contents.fh)  # fmt: skip
        # the benchmark's do-nothing server answers with any bytes-like object
        data = ops.read(self._str(path), size, offset, fip.contents.fh)
        n = len(data)
        if n:
            target = ctypes.cast(buf, ctypes.POINTER(ctypes.c_char * n)).contents
            memoryview(target).cast("B")[:] = data
        return n

    def read_buf(self, path: bytes | None, bufpp: Any, size: int, offset: int, fip: Any) -> int:
        """A read answered with where its bytes lie (:meth:`EngineOperations.read_spans`):
        libfuse splices them from the block files into /dev/fuse, the kernel moving their pages
        without a copy in this process; else with the bytes read into memory libfuse frees.

        libfuse uses the descriptors after this returns, and frees only its vector: this
        thread closes them when it serves its next request (or when the loop has ended)."""
        ops, fh, name = self.operations, fip.contents.fh, self._str(path)
        spans = ops.read_spans(name, size, offset, fh)
        if spans:
            self._held[threading.get_ident()] = spans
            vector = _new_bufvec(len(spans))
            at = vector + _BUFVEC_HEAD.size
            for fd, pos, n in spans:
                _FD_BUF.pack_into(_memory(at, _FD_BUF.size), 0, n, _FD_AT_OFFSET, 0, fd, pos)
                at += _FD_BUF.size
        elif spans is None and size:
            data = _malloc(size)
            if not data:
                raise MemoryError(f"no memory for a read of {size} bytes")
            try:
                n = ops.read_into(name, _memory(data, size), offset, fh)
                vector = _new_bufvec(1)
            except BaseException:
                _free(data)
                raise
            _MEM_BUF.pack_into(_memory(vector + _BUFVEC_HEAD.size, _MEM_BUF.size), 0, n, 0, data)
        else:  # past the end of the file: no bytes
            vector = _new_bufvec(1)
        ctypes.c_void_p.from_address(ctypes.addressof(bufpp.contents)).value = vector
        return 0

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        # a view of libfuse's request buffer, not a copy: the engine copies what it keeps
        data = ctypes.cast(buf, ctypes.POINTER(ctypes.c_char * size)).contents
        return self.operations.write(self._str(path), memoryview(data), offset, fip.contents.fh)

    def write_buf(self, path: bytes | None, bufv_p: Any, offset: int, fip: Any) -> int:
        # Registered, this has libfuse splice big write requests out of /dev/fuse into a pipe
        # (the kernel hands over its pages, no copy) instead of reading them into its buffer;
        # the engine then splices them from the pipe into the block being written.
        bufv = BufVec.from_address(ctypes.addressof(bufv_p.contents))  # (cast costs 4x more)
        first = bufv.buf[0]
        if bufv.count == 1 and not first.flags & FUSE_BUF_IS_FD:  # a small request, in memory
            size = first.size - bufv.off
            data: Any = (
                memoryview((ctypes.c_char * size).from_address(first.mem + bufv.off))
                if size
                else b""
            )
        else:
            size = first.size if bufv.count == 1 else libfuse().fuse_buf_size(bufv)
            data = RequestStream(bufv, size)
        return self.operations.write(self._str(path), data, offset, fip.contents.fh)

    def readdir_fuse_3(
        self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int
    ) -> int:
        """Entries go to libfuse with their positions as offsets: libfuse 3 (before 3.17)
        passes the attributes of a listing to the kernel only then (given offset 0, it buffers
        the whole listing and sends its attributes marked unusable, so the kernel looks every
        name up again), and each request reads one page of the directory, not all of it."""
        plus = bool(flags & FUSE_READDIR_PLUS)
        ops = self.operations
        st = mfusepy.c_stat()
        if type(ops).readdir is EngineOperations.readdir:
            entries = ops.entries(self._str(path), fip.contents.fh, offset, plus)
            for name, position, ino, node_type, attr in entries:
                fill_flags = 0
                if attr is not None:
                    _pack_stat(st, ino, attr)
                    fill_flags = FUSE_FILL_DIR_PLUS
                elif ino:
                    _STAT.pack_into(st, 0, *_STAT_ORDER((ino, 0, _IFMT[node_type]) + _ZEROS))
                if filler(buf, name, st if ino else None, position, fill_flags):
                    entries.close()
                    break  # libfuse's buffer is full
            return 0
        for name, attrs in self.operations.readdir(self._str(path), fip.contents.fh, plus):
            if attrs is None:
                fill, fill_flags = None, 0
            else:
                ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
                _fill_stat(st, attrs)
                fill = st
                fill_flags = FUSE_FILL_DIR_PLUS if plus and name not in (b".", b"..") else 0
            if filler(buf, name, fill, 0, fill_flags):
                break  # libfuse's buffer is full
        return 0



_TIMESPECS = {"st_atime": "st_atimespec", "st_mtime": "st_mtimespec", "st_ctime": "st_ctimespec"}
# The fields _pack_stat fills, in this order; the rest of the struct (st_dev, padding) is zeroed.
_STAT_FIELDS = (
    "st_ino", "st_nlink", "st_mode", "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize",
    "st_blocks", "st_atimespec", "st_mtimespec", "st_ctimespec",
)  # fmt: skip
_ZEROS = (0,) * 12  # the values after st_ino, st_nlink, st_mode
_NS = 1_000_000_000


def _stat_struct() -> tuple[struct.Struct, Any]:
    """A ``struct.Struct`` laid out as libfuse's ``struct stat`` (from mfusepy's ctypes
    declaration of this platform), and the function that puts values given in
    :data:`_STAT_FIELDS` order (times as seconds, nanoseconds) into the struct's order."""
    if mfusepy is None:
        return struct.Struct(""), None
    codes = {1: "b", 2: "h", 4: "i", 8: "q"}

    def code(ctype: Any) -> str:
        c = codes[ctypes.sizeof(ctype)]
        return c if ctype._type_.islower() else c.upper()

    fields = {n: (getattr(mfusepy.c_stat, n), t) for n, t, *_ in mfusepy.c_stat._fields_}
    fmt, pos, order = "=", 0, []
    for name in sorted(_STAT_FIELDS, key=lambda n: fields[n][0].offset):
        desc, ctype = fields[name]
        if desc.offset > pos:
            fmt += f"{desc.offset - pos}x"
        if name.endswith("timespec"):
            fmt += "".join(code(t) for _, t in ctype._fields_)
            at = 9 + 2 * (_STAT_FIELDS.index(name) - 9)
            order += [at, at + 1]
        else:
            fmt += code(ctype)
            order.append(_STAT_FIELDS.index(name))
        pos = desc.offset + desc.size
    fmt += f"{ctypes.sizeof(mfusepy.c_stat) - pos}x"
    packer = struct.Struct(fmt)
    assert packer.size == ctypes.sizeof(mfusepy.c_stat)
    if order == sorted(order):
        return packer, lambda values: values
    pick = operator.itemgetter(*order)
    return packer, pick


_STAT, _STAT_ORDER = _stat_struct()


def _pack_stat(st: Any, ino: int, attr: Attr) -> None:
    """Fill a ``struct stat`` with an inode's attributes in one call (what :func:`_stat`
    reports, every other byte zero)."""
    length = attr.length
    a, m, c = attr.atime_ns, attr.mtime_ns, attr.ctime_ns
    _STAT.pack_into(st, 0, *_STAT_ORDER((
        ino, attr.nlink, _IFMT[attr.type] | attr.mode, attr.uid, attr.gid, attr.rdev, length,
        4096, (length + 511) // 512, a // _NS, a % _NS, m // _NS, m % _NS, c // _NS, c % _NS,
    )))  # fmt: skip


if _STAT_ORDER is not None and _STAT_ORDER(tuple(range(15))) == tuple(range(15)):  # usual layout

    def _pack_stat(  # noqa: F811  (the same, without the reordering)
        st: Any, ino: int, attr: Attr, _pack: Any = _STAT.pack_into
    ) -> None:
        length = attr.length
        a, m, c = attr.atime_ns, attr.mtime_ns, attr.ctime_ns
        _pack(
            st, 0, ino, attr.nlink, _IFMT[attr.type] | attr.mode, attr.uid, attr.gid, attr.rdev,
            length, 4096, (length + 511) // 512, a // _NS, a % _NS, m // _NS, m % _NS, c // _NS,
            c % _NS,
        )  # fmt: skip


def _fill_stat(st: Any, attrs: dict[str, int]) -> None:
    """``mfusepy.set_st_attrs(st, attrs, use_ns=True)`` for the keys :func:`_stat` makes (all
    fields of the struct), without its per-key probing of the struct."""
    for key, value in attrs.items():
        spec = _TIMESPECS.get(key)
        if spec is None:
            setattr(st, key, value)
        else:
            ts = getattr(st, spec)
            ts.tv_sec, ts.tv_nsec = divmod(value, 1_000_000_000)


FUSE_BUF_IS_FD = 1 << 1  # struct fuse_buf's flags
FUSE_BUF_FD_SEEK = 1 << 2
FUSE_BUF_FD_RETRY = 1 << 3
_FD_AT_OFFSET = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK | FUSE_BUF_FD_RETRY  # at pos, until done
# struct fuse_bufvec's head (count, idx, off) and a struct fuse_buf (size, flags, mem, fd, pos)
# of a memory or a descriptor, packed straight into memory libfuse frees
_BUFVEC_HEAD = struct.Struct("@NNN")
_MEM_BUF = struct.Struct("@NiP")
_FD_BUF = struct.Struct("@NiPiq")
_libc = ctypes.CDLL(None)
_malloc = _libc.malloc
_malloc.argtypes, _malloc.restype = (ctypes.c_size_t,), ctypes.c_void_p
_free = _libc.free
_free.argtypes, _free.restype = (ctypes.c_void_p,), None


def _memory(address: int, size: int) -> memoryview:
    """A writable view of ``size`` bytes at ``address``."""
    return memoryview((ctypes.c_char * size).from_address(address)).cast("B")


def _new_bufvec(count: int) -> int:
    """A ``struct fuse_bufvec`` of ``count`` buffers in memory from ``malloc`` (libfuse frees
    it), its head filled in; the address."""
    size = _BUFVEC_HEAD.size + count * _FD_BUF.size
    vector = _malloc(size)
    if not vector:
        raise MemoryError("no memory for a read's buffer vector")
    ctypes.memset(vector, 0, size)
    _BUFVEC_HEAD.pack_into(_memory(vector, _BUFVEC_HEAD.size), 0, count, 0, 0)
    return vector


class RequestStream(ByteStream):
    """The data of a write request that libfuse left in a pipe (its ``struct fuse_bufvec``),
    valid during the call only. Written into a file, it moves by ``splice(2)``: the pages the
    writing program filled reach the file with one copy, as with a local file system."""

    def __init__(self, bufv: BufVec, length: int) -> None:
        super().__init__(length)
        self._source = bufv

    def _read_next(self, n: int) -> bytearray:
        out = bytearray(n)
        dst = BufVec(1)
        target = dst.buf[0]
        target.size, target.fd = n, -1
        target.mem = ctypes.addressof((ctypes.c_char * n).from_buffer(out))
        self._copy(dst, n)
        return out

    def _write_next(self, n: int, fd: int, offset: int) -> None:
        dst = BufVec(1)
        target = dst.buf[0]
        target.size, target.flags, target.fd, target.pos = n, _FD_AT_OFFSET, fd, offset
        self._copy(dst, n)

    def _copy(self, dst: BufVec, n: int) -> None:
        """Move the source's next ``n`` bytes to ``dst``'s buffer (the interpreter lock
        released)."""
        copied = libfuse().fuse_buf_copy(dst, self._source, 0)
        if copied < 0:
            raise OSError(-copied, os.strerror(-copied))
        if copied != n:
            raise OSError(errno.EIO, f"write request data cut short: {copied} of {n} bytes")


def _utime(ts: Any) -> int | object | None:
    if ts.tv_nsec == UTIME_NOW:
        return NOW
    if ts.tv_nsec == UTIME_OMIT:
        return None
    return ts.tv_sec * 1_000_000_000 + ts.tv_nsec

