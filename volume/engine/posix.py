"""POSIX rules shared by every metadata engine: callers, permission checks, name checks."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from ..juicefs import (
    TYPE_BLOCKDEV,
    TYPE_CHARDEV,
    TYPE_DIRECTORY,
    TYPE_FIFO,
    TYPE_FILE,
    TYPE_SOCKET,
    TYPE_SYMLINK,
    Attr,
)

MAX_NAME = 255
MAX_SYMLINK = 4096
MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 65536
XATTR_CREATE = 1
XATTR_REPLACE = 2
XATTR_NAMESPACES = ("user.", "trusted.", "security.")

R_OK, W_OK, X_OK = os.R_OK, os.W_OK, os.X_OK

_IFMT_TO_TYPE = {
    stat.S_IFREG: TYPE_FILE,
    stat.S_IFDIR: TYPE_DIRECTORY,
    stat.S_IFLNK: TYPE_SYMLINK,
    stat.S_IFIFO: TYPE_FIFO,
    stat.S_IFBLK: TYPE_BLOCKDEV,
    stat.S_IFCHR: TYPE_CHARDEV,
    stat.S_IFSOCK: TYPE_SOCKET,
}
#: The ``S_IFMT`` bits of each JuiceFS node type (the file-type part of ``st_mode``).
TYPE_TO_IFMT = {v: k for k, v in _IFMT_TO_TYPE.items()}


def fs_error(code: int, what: str | bytes = "") -> OSError:
    """An ``OSError`` carrying ``code``, as the ``os`` module raises them."""
    if isinstance(what, bytes):
        what = what.decode("utf-8", "surrogateescape")
    return OSError(code, os.strerror(code), what) if what else OSError(code, os.strerror(code))


@dataclass(frozen=True)
class Caller:
    """Who performs an operation (FUSE passes it per request)."""

    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = field(default=())

    def in_group(self, gid: int) -> bool:
        """Whether ``gid`` is the caller's primary or a supplementary group."""
        return gid == self.gid or gid in self.groups


ROOT = Caller()


def type_from_mode(mode: int) -> int:
    """JuiceFS node type of an ``st_mode`` (plain permission bits mean a regular file)."""
    fmt = stat.S_IFMT(mode)
    if fmt == 0:
        return TYPE_FILE
    try:
        return _IFMT_TO_TYPE[fmt]
    except KeyError:
        raise fs_error(errno.EINVAL) from None


def st_mode(attr: Attr) -> int:
    """The ``st_mode`` of a node: type bits plus its 12 permission bits."""
    return TYPE_TO_IFMT[attr.type] | attr.mode


def check_name(name: bytes) -> None:
    """Refuse names the kernel would never send and those too long for the format."""
    if not name or b"/" in name or b"\0" in name:
        raise fs_error(errno.EINVAL, name)
    if len(name) > MAX_NAME:
        raise fs_error(errno.ENAMETOOLONG, name)


def check_symlink_target(target: bytes) -> None:
    """ENOENT for an empty target, ENAMETOOLONG for one of ``MAX_SYMLINK`` bytes or more."""
    if not target:
        raise fs_error(errno.ENOENT)
    if len(target) >= MAX_SYMLINK:
        raise fs_error(errno.ENAMETOOLONG)


def check_access(attr: Attr, mask: int, caller: Caller) -> None:
    """Raise EACCES unless ``caller`` has every permission in ``mask`` (R_OK|W_OK|X_OK)."""
    if mask == 0:
        return
    if caller.uid == 0:
        # root passes every check except executing a file no one may execute
        if mask & X_OK and attr.type != TYPE_DIRECTORY and not attr.mode & 0o111:
            raise fs_error(errno.EACCES)
        return
    if caller.uid == attr.uid:
        bits = (attr.mode >> 6) & 7
    elif caller.in_group(attr.gid):
        bits = (attr.mode >> 3) & 7
    else:
        bits = attr.mode & 7
    if mask & ~bits:
        raise fs_error(errno.EACCES)


def check_sticky(dir_attr: Attr, child: Attr, caller: Caller) -> None:
    """In a sticky directory only the owner of the entry or of the directory may remove it."""
    if dir_attr.mode & stat.S_ISVTX and caller.uid not in (0, dir_attr.uid, child.uid):
        raise fs_error(errno.EPERM)


def check_xattr_name_length(name: str) -> None:
    """ERANGE for an empty name or one over 255 bytes (Linux checks this before path lookup)."""
    if not name or len(name.encode("utf-8", "surrogateescape")) > MAX_XATTR_NAME:
        raise fs_error(errno.ERANGE)


def check_xattr_name(name: str) -> None:
    """Only the namespaces a plain file system supports, each with a non-empty suffix."""
    check_xattr_name_length(name)
    if not name.startswith(XATTR_NAMESPACES):
        raise fs_error(errno.EOPNOTSUPP)
    if name in XATTR_NAMESPACES:
        raise fs_error(errno.EINVAL)


def open_access_mask(flags: int) -> int:
    """The permissions ``open(2)`` with ``flags`` needs."""
    acc = flags & os.O_ACCMODE
    mask = {os.O_RDONLY: R_OK, os.O_WRONLY: W_OK, os.O_RDWR: R_OK | W_OK}.get(acc, R_OK | W_OK)
    if flags & os.O_TRUNC:
        mask |= W_OK
    return mask
