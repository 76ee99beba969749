"""Path-level operations over an engine, shaped like the ``os`` module.

Paths are ``/``-separated and relative to the volume root (a leading ``/`` is the root). Errors are
the ``OSError``s Linux gives for the same calls, so code and tests can treat a volume like a
directory.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat as stat_mod
from dataclasses import dataclass

from ..juicefs import ROOT_INODE, TYPE_DIRECTORY, TYPE_SYMLINK, Attr
from .engine import NOW, RENAME_EXCHANGE, RENAME_NOREPLACE, Engine, StatFS
from .posix import (
    ROOT,
    Caller,
    check_symlink_target,
    check_xattr_name_length,
    fs_error,
    st_mode,
)

MAX_SYMLINK_HOPS = 40


@dataclass(frozen=True)
class StatResult:
    """What ``stat`` returns: the usual ``st_*`` fields, times in ns and float seconds."""

    st_mode: int
    st_ino: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_rdev: int

    @property
    def st_atime(self) -> float:
        return self.st_atime_ns / 1e9

    @property
    def st_mtime(self) -> float:
        return self.st_mtime_ns / 1e9

    @property
    def st_ctime(self) -> float:
        return self.st_ctime_ns / 1e9

    @classmethod
    def of(cls, ino: int, attr: Attr) -> "StatResult":
        """The stat result of an inode."""
        return cls(
            st_mode(attr), ino, attr.nlink, attr.uid, attr.gid, attr.length,
            attr.atime_ns, attr.mtime_ns, attr.ctime_ns, attr.rdev,
        )  # fmt: skip


def _encode(path: str | bytes) -> bytes:
    return path if isinstance(path, bytes) else os.fsencode(path)


class _OpenFile:
    __slots__ = ("fh", "ino", "pos", "flags", "is_dir")

    def __init__(self, fh: int, ino: int, flags: int, is_dir: bool):
        self.fh, self.ino, self.pos, self.flags, self.is_dir = fh, ino, 0, flags, is_dir


class PathFS:
    """``os``-style calls on an engine, as one caller with one umask."""

    def __init__(self, engine: Engine, caller: Caller = ROOT, umask: int = 0o022):
        self.engine = engine
        self.caller = caller
        self.umask = umask
        self._files: dict[int, _OpenFile] = {}
        self._next_fd = 3

    # ------------------------------------------------------------------ resolution

    def _walk(self, path: bytes, follow: bool, hops: int = 0) -> tuple[int, Attr]:
        # the root is a directory: its attributes are fetched only when the path names it
        ino, attr = ROOT_INODE, None
        follow = follow or path.endswith(b"/")  # a trailing slash names a directory: follow
        parts = [p for p in path.split(b"/") if p]
        for i, part in enumerate(parts):
            if attr is not None and attr.type != TYPE_DIRECTORY:
                raise fs_error(errno.ENOTDIR, path)
            parent = ino
            ino, attr = self.engine.lookup(parent, part, self.caller)
            last = i == len(parts) - 1
            if attr.type == TYPE_SYMLINK and (follow or not last):
                if hops >= MAX_SYMLINK_HOPS:
                    raise fs_error(errno.ELOOP, path)
                target = self.engine.readlink(ino)
                base = b"/" if target.startswith(b"/") else self._path_of_dir(parts[:i])
                rest = b"/".join(parts[i + 1 :])
                joined = posixpath.join(base, target, rest) if rest else posixpath.join(base, target)
                if path.endswith(b"/") and not joined.endswith(b"/"):
                    joined += b"/"  # what the link leads to must still be a directory
                return self._walk(joined, follow, hops + 1)
        if attr is None:
            attr = self.engine.getattr(ROOT_INODE)
        if path.endswith(b"/") and attr.type != TYPE_DIRECTORY:
            raise fs_error(errno.ENOTDIR, path)
        return ino, attr

    @staticmethod
    def _path_of_dir(parts: list[bytes]) -> bytes:
        return b"/" + b"/".join(parts)

    def _parent(self, path: str | bytes) -> tuple[int, bytes]:
        """The directory inode holding the last component, and that component."""
        raw = _encode(path).rstrip(b"/")
        head, _, name = raw.rpartition(b"/")
        if not name:
            raise fs_error(errno.EBUSY if not raw else errno.EINVAL, raw)  # the root itself
        ino, attr = self._walk(head, follow=True)
        if attr.type != TYPE_DIRECTORY:
            raise fs_error(errno.ENOTDIR, raw)
        return ino, name

    def _new_entry_parent(self, path: str | bytes) -> tuple[int, bytes]:
        """:meth:`_parent` for calls creating a non-directory: with a trailing slash the path
        names a directory, so it exists (EEXIST) or cannot be made (ENOENT), as on Linux."""
        parent, name = self._parent(path)
        if _encode(path).endswith(b"/") and name not in (b".", b".."):
            self.engine.lookup(parent, name, self.caller)  # ENOENT when missing
            raise fs_error(errno.EEXIST, path)
        return parent, name

    def resolve(self, path: str | bytes, follow_symlinks: bool = True) -> int:
        """Inode number a path names."""
        return self._walk(_encode(path), follow_symlinks)[0]

    # ------------------------------------------------------------------ metadata

    def stat(self, path: str | bytes, *, follow_symlinks: bool = True) -> StatResult:
        """``os.stat``."""
        return StatResult.of(*self._walk(_encode(path), follow_symlinks))

    def lstat(self, path: str | bytes) -> StatResult:
        """``os.lstat``."""
        return self.stat(path, follow_symlinks=False)

    def exists(self, path: str | bytes) -> bool:
        """Whether the path names something (following symlinks)."""
        try:
            self.stat(path)
        except OSError:
            return False
        return True

    def listdir(self, path: str | bytes = "/") -> list[str]:
        """``os.listdir``: names in directory order (sorted by bytes)."""
        ino = self.resolve(path)
        return [os.fsdecode(n) for n, *_ in self.engine.readdir(ino, self.caller)]

    def scandir(self, path: str | bytes = "/") -> list[tuple[str, int, StatResult]]:
        """``(name, inode, lstat)`` of every entry, in one metadata pass."""
        ino = self.resolve(path)
        return [
            (os.fsdecode(n), i, StatResult.of(i, a))
            for n, i, _t, a in self.engine.readdir(ino, self.caller, plus=True)
            if a is not None
        ]

    def mkdir(self, path: str | bytes, mode: int = 0o777) -> None:
        """``os.mkdir``."""
        parent, name = self._parent(path)
        self.engine.mkdir(parent, name, mode & ~self.umask, self.caller)

    def makedirs(self, path: str | bytes, mode: int = 0o777, exist_ok: bool = False) -> None:
        """``os.makedirs``."""
        raw = _encode(path).strip(b"/")
        current = b""
        for part in raw.split(b"/"):
            current += b"/" + part
            try:
                self.mkdir(current, mode)
            except FileExistsError:
                if current == b"/" + raw and not exist_ok:
                    raise
                if not stat_mod.S_ISDIR(self.stat(current).st_mode):
                    raise

    def rmdir(self, path: str | bytes) -> None:
        """``os.rmdir``."""
        raw = _encode(path).rstrip(b"/")
        if not raw:
            raise fs_error(errno.EBUSY)
        parent, name = self._parent(raw)
        self.engine.rmdir(parent, name, self.caller)

    def unlink(self, path: str | bytes) -> None:
        """``os.unlink``."""
        raw = _encode(path)
        parent, name = self._parent(raw)
        if raw.endswith(b"/"):
            ino, attr = self.engine.lookup(parent, name, self.caller)
            raise fs_error(errno.EISDIR if attr.type == TYPE_DIRECTORY else errno.ENOTDIR, raw)
        self.engine.unlink(parent, name, self.caller)

    remove = unlink

    def rename(self, src: str | bytes, dst: str | bytes, flags: int = 0) -> None:
        """``os.rename`` (and renameat2 ``flags``)."""
        sp, sn = self._parent(src)
        dp, dn = self._parent(dst)
        src_slash, dst_slash = _encode(src).endswith(b"/"), _encode(dst).endswith(b"/")
        if (src_slash or dst_slash) and b"." not in (sn, dn) and b".." not in (sn, dn):
            self._check_rename_slashes(sp, sn, src_slash, dp, dn, dst_slash, flags)
        self.engine.rename(sp, sn, dp, dn, flags, self.caller)

    def _check_rename_slashes(
        self, sp: int, sn: bytes, src_slash: bool, dp: int, dn: bytes, dst_slash: bool, flags: int
    ) -> None:
        """Trailing slashes make a rename of a non-directory fail with ENOTDIR, after the
        lookups' own errors (Linux's ``do_renameat2`` order)."""
        src_attr = self.engine.lookup(sp, sn, self.caller)[1]
        try:
            dst_attr: Attr | None = self.engine.lookup(dp, dn, self.caller)[1]
        except FileNotFoundError:
            dst_attr = None
        exchange = flags & RENAME_EXCHANGE
        if exchange and dst_attr is None:
            raise fs_error(errno.ENOENT, dn)
        if flags & RENAME_NOREPLACE and dst_attr is not None:
            raise fs_error(errno.EEXIST, dn)
        if exchange and dst_slash and dst_attr.type != TYPE_DIRECTORY:
            raise fs_error(errno.ENOTDIR, dn)
        if src_attr.type != TYPE_DIRECTORY and (src_slash or (dst_slash and not exchange)):
            raise fs_error(errno.ENOTDIR, sn)

    def link(self, src: str | bytes, dst: str | bytes) -> None:
        """``os.link`` (the source is not followed, as on Linux)."""
        ino = self.resolve(src, follow_symlinks=False)
        parent, name = self._new_entry_parent(dst)
        self.engine.link(ino, parent, name, self.caller)

    def symlink(self, target: str | bytes, path: str | bytes) -> None:
        """``os.symlink``."""
        check_symlink_target(_encode(target))  # Linux checks the target before the path
        parent, name = self._new_entry_parent(path)
        self.engine.symlink(parent, name, _encode(target), self.caller)

    def mknod(self, path: str | bytes, mode: int = 0o600, device: int = 0) -> None:
        """``os.mknod``: the type comes from ``mode`` (plain permission bits: a regular file)."""
        parent, name = self._new_entry_parent(path)
        mode = stat_mod.S_IFMT(mode) | (stat_mod.S_IMODE(mode) & ~self.umask)
        self.engine.mknod(parent, name, mode, device, self.caller)

    def mkfifo(self, path: str | bytes, mode: int = 0o666) -> None:
        """``os.mkfifo``."""
        self.mknod(path, stat_mod.S_IFIFO | stat_mod.S_IMODE(mode))

    def readlink(self, path: str | bytes) -> str:
        """``os.readlink``."""
        return os.fsdecode(self.engine.readlink(self.resolve(path, follow_symlinks=False)))

    def chmod(self, path: str | bytes, mode: int) -> None:
        """``os.chmod``."""
        self.engine.setattr(self.resolve(path), self.caller, mode=mode)

    def chown(self, path: str | bytes, uid: int, gid: int) -> None:
        """``os.chown``."""
        self.engine.setattr(self.resolve(path), self.caller, uid=uid, gid=gid)

    def utime(self, path: str | bytes, ns: tuple[int, int] | None = None) -> None:
        """``os.utime`` (``ns=None`` means now)."""
        atime, mtime = ns if ns is not None else (NOW, NOW)
        self.engine.setattr(self.resolve(path), self.caller, atime_ns=atime, mtime_ns=mtime)

    def truncate(self, path: str | bytes, length: int) -> None:
        """``os.truncate``."""
        self.engine.setattr(self.resolve(path), self.caller, size=length)

    def statvfs(self) -> StatFS:
        """``os.statvfs``."""
        return self.engine.statfs()

    # ------------------------------------------------------------------ xattrs

    def getxattr(self, path: str | bytes, name: str) -> bytes:
        """``os.getxattr``."""
        check_xattr_name_length(name)
        return self.engine.getxattr(self.resolve(path), name)

    def setxattr(self, path: str | bytes, name: str, value: bytes, flags: int = 0) -> None:
        """``os.setxattr``."""
        check_xattr_name_length(name)
        self.engine.setxattr(self.resolve(path), name, value, flags, self.caller)

    def listxattr(self, path: str | bytes) -> list[str]:
        """``os.listxattr``."""
        return self.engine.listxattr(self.resolve(path))

    def removexattr(self, path: str | bytes, name: str) -> None:
        """``os.removexattr``."""
        check_xattr_name_length(name)
        self.engine.removexattr(self.resolve(path), name, self.caller)

    # ------------------------------------------------------------------ file I/O

    def open(self, path: str | bytes, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
        """``os.open``; returns a descriptor for :meth:`read`, :meth:`write`, :meth:`close`."""
        raw = _encode(path)
        follow = not flags & os.O_NOFOLLOW
        if flags & os.O_CREAT and flags & os.O_DIRECTORY:
            raise fs_error(errno.EINVAL, raw)  # Linux >= 6.4 refuses the combination
        if flags & os.O_CREAT:
            parent, name = self._parent(raw)
            if raw.endswith(b"/"):
                raise fs_error(errno.EISDIR, raw)  # Linux creates no file through a slash
            if name in (b".", b".."):  # always an existing directory
                raise fs_error(errno.EEXIST if flags & os.O_EXCL else errno.EISDIR, raw)
            try:  # the common case first: one transaction creates the file
                fh, ino, _ = self.engine.create(
                    parent, name, mode & ~self.umask, flags | os.O_EXCL, self.caller
                )
                return self._register(fh, ino, flags, is_dir=False)
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
            ino, attr = self.engine.lookup(parent, name, self.caller)
            if attr.type == TYPE_SYMLINK and follow:
                try:
                    ino = self.resolve(raw)
                except FileNotFoundError:  # a dangling link: create what it points to
                    target = self.engine.readlink(ino)
                    base = raw.rpartition(b"/")[0] or b"/"
                    return self.open(posixpath.join(base, target), flags, mode)
        else:
            ino = self._walk(raw, follow)[0]
        attr = self.engine.getattr(ino)
        is_dir = attr.type == TYPE_DIRECTORY
        if flags & os.O_DIRECTORY and not is_dir:
            raise fs_error(errno.ENOTDIR, raw)  # before ELOOP for an unfollowed symlink
        if attr.type == TYPE_SYMLINK:
            raise fs_error(errno.ELOOP, raw)
        if flags & os.O_CREAT and is_dir:
            raise fs_error(errno.EISDIR, raw)
        return self._register(self.engine.open(ino, flags, self.caller), ino, flags, is_dir)

    def _register(self, fh: int, ino: int, flags: int, is_dir: bool) -> int:
        fd = self._next_fd
        self._next_fd += 1
        self._files[fd] = _OpenFile(fh, ino, flags, is_dir)
        return fd

    def _file(self, fd: int) -> _OpenFile:
        try:
            return self._files[fd]
        except KeyError:
            raise fs_error(errno.EBADF) from None

    def read(self, fd: int, size: int, offset: int | None = None) -> bytes:
        """``os.read`` (``offset``: ``os.pread``)."""
        f = self._file(fd)
        if f.is_dir:
            raise fs_error(errno.EISDIR)
        data = self.engine.read(f.fh, f.pos if offset is None else offset, size)
        if offset is None:
            f.pos += len(data)
        return data

    def write(self, fd: int, data: bytes, offset: int | None = None) -> int:
        """``os.write`` (``offset``: ``os.pwrite``)."""
        f = self._file(fd)
        # with O_APPEND the engine writes at the end whatever the offset (as Linux's pwrite)
        n = self.engine.write(f.fh, f.pos if offset is None else offset, data)
        if offset is None and n:  # pwrite never moves the position, nor does writing nothing
            f.pos = self.engine.getattr(f.ino).length if f.flags & os.O_APPEND else f.pos + n
        return n

    def lseek(self, fd: int, pos: int, how: int = os.SEEK_SET) -> int:
        """``os.lseek``."""
        f = self._file(fd)
        base = {os.SEEK_SET: 0, os.SEEK_CUR: f.pos}.get(how)
        if base is None:
            base = self.engine.getattr(f.ino).length
        if base + pos < 0:
            raise fs_error(errno.EINVAL)
        f.pos = base + pos
        return f.pos

    def ftruncate(self, fd: int, length: int) -> None:
        """``os.ftruncate``."""
        f = self._file(fd)
        if f.flags & os.O_ACCMODE == os.O_RDONLY:
            raise fs_error(errno.EINVAL)  # as Linux: only a descriptor open for writing
        self.engine.setattr(f.ino, self.caller, size=length, handle=f.fh)

    def fsync(self, fd: int) -> None:
        """``os.fsync``: buffered writes recorded and their blocks stored."""
        self.engine.fsync(self._file(fd).ino)

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) (``mode``: ``FALLOC_FL_*`` bits, 0 to allocate)."""
        self.engine.fallocate(self._file(fd).fh, mode, offset, length)

    def copy_file_range(
        self, src: int, dst: int, count: int, offset_src: int | None = None,
        offset_dst: int | None = None,
    ) -> int:  # fmt: skip
        """``os.copy_file_range``: a metadata-only clone; the bytes copied."""
        fi, fo = self._file(src), self._file(dst)
        n = self.engine.copy_file_range(
            fi.fh, fi.pos if offset_src is None else offset_src,
            fo.fh, fo.pos if offset_dst is None else offset_dst, count,
        )  # fmt: skip
        if offset_src is None:
            fi.pos += n
        if offset_dst is None:
            fo.pos += n
        return n

    def fstat(self, fd: int) -> StatResult:
        """``os.fstat``."""
        ino = self._file(fd).ino
        return StatResult.of(ino, self.engine.getattr(ino))

    def close(self, fd: int) -> None:
        """``os.close``."""
        f = self._files.pop(fd, None)
        if f is None:
            raise fs_error(errno.EBADF)
        self.engine.release(f.fh)

    # ------------------------------------------------------------------ conveniences

    def read_bytes(self, path: str | bytes) -> bytes:
        """The whole content of a file."""
        fd = self.open(path)
        try:
            chunks = []
            while chunk := self.read(fd, 4 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            self.close(fd)

    def write_bytes(self, path: str | bytes, data: bytes, mode: int = 0o666) -> None:
        """Create or replace a file with ``data``."""
        fd = self.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            for off in range(0, len(view), 4 << 20):
                self.write(fd, view[off : off + (4 << 20)])
        finally:
            self.close(fd)
