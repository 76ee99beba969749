"""The FUSE transport: a kernel mount of an :class:`~volume.engine.Engine` through libfuse 3.

:class:`FuseMount` runs libfuse's multithreaded loop (through mfusepy) in a daemon thread of this
process. :class:`EngineOperations` translates libfuse's path-based calls to the engine's inode
calls and does nothing else: permissions are checked by the kernel (``default_permissions``) and
again by the engine, POSIX rules live in the engine, errors are the engine's errnos.

libfuse's high-level API names every file by path, so the translator keeps a path -> inode cache
(a mirror of the paths the kernel has looked up) that namespace changes invalidate. Changes made
in-process (the handle's ``.fs``) go through :class:`~volume.mount.view.KernelCoherentEngine`,
which tells the translator (:meth:`EngineOperations.namespace_changed`,
:meth:`EngineOperations.inode_changed`) so that it and the kernel drop what became stale.

See ``spec/fuse.md`` for the mount options and what they map to.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import functools
import itertools
import operator
import logging
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..engine import NOW, RENAME_EXCHANGE, ROOT, Caller, Engine
from ..engine.posix import TYPE_TO_IFMT as _IFMT, check_xattr_name, st_mode
from ..errors import VolumeMountError, VolumeMountTimeout, VolumeSystemError
from ..juicefs import ROOT_INODE, TYPE_DIRECTORY, Attr

# mfusepy loads libfuse 2 when both are installed unless told otherwise; this module speaks 3.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
try:
    import mfusepy
except (ImportError, OSError, AttributeError) as exc:  # no libfuse, or one mfusepy refuses
    mfusepy = None
    _LIBFUSE_PROBLEM = f"libfuse 3 cannot be loaded ({exc}); install fuse3 (apt-get install fuse3)"
else:
    _LIBFUSE_PROBLEM = (
        ""
        if mfusepy.fuse_version_major == 3
        else f"libfuse {mfusepy.fuse_version_major}.{mfusepy.fuse_version_minor} was loaded but "
        f"libfuse 3 is needed; install fuse3 or set FUSE_LIBRARY_NAME=fuse3"
    )

log = logging.getLogger("volume.mount.fuse")

__all__ = ["EngineOperations", "FuseMount", "fuse_usable"]

DEV_FUSE = "/dev/fuse"
FUSERMOUNT = "fusermount3"
MAX_IO = 1 << 20  # largest read/write request: one engine call per MiB, not per page
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
FUSE_READDIR_PLUS = 1  # readdir flag: the kernel wants attributes with the names
FUSE_FILL_DIR_PLUS = 2  # filler flag: this entry carries full attributes
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14  # the kernel asks for attributes only while it uses them
FUSE_CAP_AUTO_INVAL_DATA = 1 << 12  # the kernel drops a file's pages when it sees a new mtime
DIR_HANDLE = 1 << 63  # set in directory handles (their inode), never in engine file handles
REINVALIDATE_SECONDS = 0.05  # kernel lookups in flight during an in-process change answer by then
CACHE_LIMIT = 100_000  # keys per generation of a translator cache (see _Recent)
READDIR_BATCH = 128  # entries read per engine call of a listing, until requests show their size
READDIR_SLACK = 16  # read this many more than the last request of a listing took
CAPABILITY = "security.capability"  # the kernel asks for it before every write
HIDDEN_NAME = re.compile(r"\.fuse_hidden[0-9a-f]{16}")  # libfuse's names for unlinked open files
PROBE_EXISTING_SECONDS = 5.0  # how long a mount already at the path may take to answer
EXIT_JOIN_SECONDS = 2.0  # how long interpreter exit waits for a busy mount's users to leave
MNT_FORCE = 1  # umount2 flag: for FUSE, abort the connection (the mount then answers ENOTCONN)
_created_mount_points: set[Path] = set()  # mount points prepare_mount_point made (removed after)


def fuse_usable() -> tuple[bool, str]:
    """Whether FUSE mounts can work here; when not, the string says why and what to do."""
    if not os.path.exists(DEV_FUSE):
        return False, f"{DEV_FUSE} does not exist; load the fuse module (or pass the device in)"
    try:
        os.close(os.open(DEV_FUSE, os.O_RDWR))
    except OSError as exc:
        return False, f"{DEV_FUSE} cannot be opened ({exc.strerror}); run with access to it"
    if _LIBFUSE_PROBLEM:
        return False, _LIBFUSE_PROBLEM
    if shutil.which(FUSERMOUNT) is None:
        return False, f"{FUSERMOUNT} is not on PATH; install fuse3 (apt-get install fuse3)"
    return True, ""


# =========================================================================== the translator


@dataclass(frozen=True)
class _RequestCaller(Caller):
    """The process behind a FUSE request. Its supplementary groups are read from ``/proc`` only
    when the engine asks about a group other than the primary one (FUSE passes uid, gid and pid
    only)."""

    pid: int = 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in _supplementary_groups(self.pid)


def _supplementary_groups(pid: int) -> tuple[int, ...]:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except OSError:  # the process is gone: it has no groups to grant
        pass
    return ()


def _stat(ino: int, attr: Attr) -> dict[str, int]:
    """What ``getattr`` returns (times in ns: the operations class sets ``use_ns``)."""
    return {
        "st_ino": ino,
        "st_mode": st_mode(attr),
        "st_nlink": attr.nlink,
        "st_uid": attr.uid,
        "st_gid": attr.gid,
        "st_rdev": attr.rdev,
        "st_size": attr.length,
        "st_blocks": (attr.length + 511) // 512,
        "st_blksize": 4096,
        "st_atime": attr.atime_ns,
        "st_mtime": attr.mtime_ns,
        "st_ctime": attr.ctime_ns,
    }


@functools.lru_cache(maxsize=256)
def _valid_xattr_name(name: str) -> bool:
    """Whether the engine would look ``name`` up (an invalid one gets its own errno there)."""
    try:
        check_xattr_name(name)
    except OSError:
        return False
    return True


_MISSING: Any = object()
_FS_ENCODING = "utf-8"  # how mfusepy decodes libfuse's paths (with surrogateescape)


class _Recent:
    """A bounded map that forgets its oldest keys, never all of them at once: two generations of
    at most ``limit`` keys each. New keys go into the young one; a key read from the old one
    moves to the young one (:meth:`get`); when the young one is full it becomes the old one and
    the old one's keys are forgotten. Used as a set through :meth:`add` / :meth:`discard`.

    Every operation is a few dict operations, atomic under the GIL; a key forgotten by a
    concurrent rotation is only looked up again.
    """

    __slots__ = ("limit", "_young", "_old")

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self._young: dict[Any, Any] = {}
        self._old: dict[Any, Any] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        value = self._young.get(key, _MISSING)
        if value is _MISSING:
            value = self._old.pop(key, _MISSING)
            if value is _MISSING:
                return default
            self[key] = value
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        young = self._young
        if len(young) >= self.limit and key not in young:
            self._old, self._young = young, {}
            young = self._young
        young[key] = value

    def __contains__(self, key: Any) -> bool:
        return key in self._young or key in self._old

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def pop(self, key: Any, default: Any = None) -> Any:
        young = self._young.pop(key, _MISSING)
        old = self._old.pop(key, _MISSING)
        return young if young is not _MISSING else old if old is not _MISSING else default

    def items(self) -> list[tuple[Any, Any]]:
        """A snapshot (young keys win over old ones)."""
        return list({**self._old, **self._young}.items())

    def __iter__(self) -> Iterator[Any]:
        return iter([k for k, _ in self.items()])

    def update(self, other: dict[Any, Any] | list[tuple[Any, Any]]) -> None:
        """Add many keys at once (the young generation may then exceed the limit by as many)."""
        if len(self._young) + len(other) > self.limit:
            self._old, self._young = self._young, {}
        self._young.update(other)

    def add(self, key: Any) -> None:
        self[key] = True

    def discard(self, key: Any) -> None:
        self.pop(key)


@dataclass
class _DirStream:
    """An open directory: the names it handed out, in order (see ``EngineOperations.entries``).
    libfuse serves one request of a directory handle at a time."""

    ino: int
    names: list[bytes] = field(default_factory=list)
    start: int = 0  # entries handed out before the request being served
    batch: int = READDIR_BATCH  # entries per engine call


def _split(path: str) -> tuple[str, bytes]:
    """``"/a/b"`` -> ``("/a", b"b")``; libfuse's paths are absolute and normalised."""
    head, _, name = path.rpartition("/")
    return head or "/", os.fsencode(name)


class EngineOperations:
    """libfuse's path-based operations on an engine's inodes (the mfusepy ``Operations`` shape).

    Methods raise ``OSError`` with the engine's errno. A file's ``fh`` is its engine handle; a
    directory's is its inode with :data:`DIR_HANDLE` set (the engine has no directory handles).
    """

    use_ns = True  # mfusepy: times are integer nanoseconds

    def __init__(self, engine: Engine):
        self.engine = engine
        self._inodes = _Recent()  # path -> inode; the root is never looked up here
        self._generation = 0  # bumped whenever the path cache is dropped
        self._later: set[str] = set()  # paths to invalidate again (see namespace_changed)
        self._later_lock = threading.Lock()
        self._later_timer: threading.Timer | None = None
        self.closed = False  # set once the mount is gone: no more kernel notifications
        self._handle_inodes: dict[int, int] = {}
        self._dirs: dict[int, _DirStream] = {}  # open directories by handle
        # A read-only mount of a version without any xattr answers getxattr with ENOSYS: the
        # kernel then stops asking (and answers EOPNOTSUPP itself), as on a JuiceFS client
        # mount without --enable-xattr. ls -l would otherwise cost a round trip per name.
        self.xattrs_absent = bool(
            engine is not None and engine.read_only and not engine.has_xattrs()
        )
        self.xattrs_refused = False  # see refuse_xattrs
        self._dir_handles = itertools.count(1)
        # Inodes known to have no security.capability: the kernel checks it (to drop file
        # capabilities) before every write, which would otherwise cost a metadata transaction.
        self._no_capability = _Recent()
        # Inodes known to have no extended attribute at all: ``ls -l`` asks for two of them per
        # file (SELinux label, POSIX ACL). Kept exactly as the capability set (all setxattr
        # calls and in-process changes pass here), so it never answers for a stale inode.
        self._no_xattrs = _Recent()
        # bumped (under the lock) after every xattr change: a miss seen before a change that
        # finished meanwhile is not recorded
        self._xattr_epoch = 0
        self._xattr_lock = threading.Lock()
        # Inodes seen with several links. libfuse's high-level API gives each *name* its own
        # kernel inode, so a change made through one name must invalidate the others' caches.
        self._linked = _Recent()
        self._fuse: int | None = None  # libfuse's struct fuse, for cache invalidations
        # libfuse keeps an open file that loses its name under a hidden name, and names it by that
        # path until the last close. The engine has unlinked it already (it keeps unlinked open
        # inodes itself): the hidden paths map to their inodes here only, never in the volume.
        self._hidden: dict[str, int] = {}
        # (request id, path, inode) of each thread's last hide, by OS thread: ctypes gives every
        # callback a fresh Python thread state, so threading.local would not last between two
        self._last_hide: dict[int, tuple[int | None, str, int]] = {}
        # (request id, path) of each thread's last setattr: libfuse answers a setattr with our
        # getattr of the path but, unlike for a getattr, does not take the hidden name's link off
        self._last_setattr: dict[int, tuple[int | None, str | None]] = {}
        # (request id, path, inode, attr) of each thread's last change that libfuse answers
        # with a getattr of the same path in the same request (setattr, create, mkdir, mknod,
        # symlink, link): the change's own result answers it, without another transaction
        self._replies: dict[int, tuple[int | None, str | None, int, Attr]] = {}

    # ------------------------------------------------------------------ resolution

    @staticmethod
    def _caller() -> Caller:
        uid, gid, pid = mfusepy.fuse_get_context()
        return ROOT if uid == 0 and gid == 0 else _RequestCaller(uid, gid, pid=pid)

    def _lookup(self, path: str) -> tuple[int, Attr]:
        """Inode and attributes of ``path`` (one engine call when its directory is known)."""
        ino = ROOT_INODE if path == "/" else self._inodes.get(path)
        if ino is not None:
            try:
                return ino, self.engine.getattr(ino)
            except FileNotFoundError:
                self._inodes.pop(path, None)  # removed behind the cache: look the name up again
        hidden = self._hidden.get(path)
        if hidden is not None:
            return hidden, self.engine.getattr(hidden)
        head, name = _split(path)
        generation = self._generation
        ino, attr = self.engine.lookup(self._inode(head), name, self._caller())
        if generation == self._generation:  # else an in-process change may have made it stale
            self._remember(path, ino)
        return ino, attr

    def _answered(self, path: str | None, ino: int, attr: Attr) -> Attr:
        """Keep ``attr`` (the result of a change to ``path``) for the getattr libfuse makes
        next in this request to answer it."""
        self._replies[threading.get_ident()] = (_request_id(), path, ino, attr)
        return attr

    def _note_links(self, ino: int, attr: Attr) -> None:
        if attr.nlink > 1 and attr.type != TYPE_DIRECTORY:
            self._linked.add(ino)

    def _other_names(self, ino: int | None, path: str | None) -> list[str]:
        """Known paths (hidden ones too) other than ``path`` naming ``ino``, when it has (had)
        several links."""
        if ino not in self._linked:
            return []
        named = list(self._inodes.items()) + list(self._hidden.items())
        return [p for p, i in named if i == ino and p != path]

    def _invalidate(self, paths: list[str]) -> None:
        """Drop the kernel's attributes and pages of these names (other names of an inode this
        request changed; never the request's own, which the kernel is busy with)."""
        if self.closed or self._fuse is None:
            return  # the session is ending: its struct fuse is about to go
        for path in paths:
            _libfuse().fuse_invalidate_path(self._fuse, os.fsencode(path))

    def _inode(self, path: str) -> int:
        ino = ROOT_INODE if path == "/" else self._inodes.get(path)
        return ino if ino is not None else self._lookup(path)[0]

    def _parent(self, path: str) -> tuple[int, bytes]:
        head, name = _split(path)
        return self._inode(head), name

    def _target(self, path: str | None, fh: int | None) -> int:
        """The inode a call is about: the open file's or directory's, else the path's."""
        if fh is not None:
            if fh & DIR_HANDLE:
                stream = self._dirs.get(fh)
                ino = None if stream is None else stream.ino
            else:
                ino = self._handle_inodes.get(fh)
            if ino is not None:
                return ino
        if path is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return self._inode(path)

    @property
    def hidden_paths(self) -> dict[str, int]:
        """The hidden names libfuse keeps for open files that lost their name, with inodes."""
        return dict(self._hidden)

    @property
    def open_inodes(self) -> list[int]:
        """The inode of every engine handle the kernel holds (one per open file description;
        the kernel releases a closed file asynchronously)."""
        return list(self._handle_inodes.values())

    def _remember(self, path: str, ino: int) -> None:
        self._inodes[path] = ino

    def _forget(self, *paths: str) -> None:
        for path in paths:
            self._inodes.pop(path, None)

    def _drop_paths(self) -> None:
        # a new cache, not clear(): a lookup that raced the drop fills the old one
        self._generation += 1
        self._inodes = _Recent()

    # ------------------------------------------------------------------ changes made in-process

    def namespace_changed(self, entries: list[tuple[int, str]]) -> None:
        """Entries ``(parent inode, name)`` were created, removed or moved in-process: forget
        every cached path and drop the kernel's attributes and pages of those names (and of the
        cached paths ending in them). A kernel lookup in flight during the change may re-cache
        the old name, so the invalidation is repeated once such lookups have answered."""
        old = self._inodes
        self._drop_paths()
        if self._fuse is None:
            return
        paths = {p for p in old if p != "/" and p.endswith(tuple("/" + n for _, n in entries))}
        for parent, name in entries:
            heads = ["/"] if parent == ROOT_INODE else [p for p, i in old.items() if i == parent]
            paths.update(f"{head.rstrip('/')}/{name}" for head in heads)
        self._invalidate(sorted(paths))
        self._invalidate_later(sorted(paths))

    def _invalidate_later(self, paths: list[str]) -> None:
        if not paths:
            return
        with self._later_lock:
            self._later.update(paths)
            if self._later_timer is None:
                self._later_timer = threading.Timer(REINVALIDATE_SECONDS, self._invalidate_again)
                self._later_timer.daemon = True
                self._later_timer.start()

    def _invalidate_again(self) -> None:
        with self._later_lock:  # held: stop() cannot end the session meanwhile
            paths, self._later, self._later_timer = sorted(self._later), set(), None
            self._invalidate(paths)

    def inode_changed(self, ino: int) -> None:
        """An inode's attributes or bytes changed in-process: drop the kernel's copies."""
        self._forget_xattrs(ino)
        if self._fuse is None:
            return
        self._invalidate([p for p, i in list(self._inodes.items()) if i == ino])

    # ------------------------------------------------------------------ attributes

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, int]:
        return _stat(*self.attributes(path, fh))

    def attributes(self, path: str | None, fh: int | None = None) -> tuple[int, Attr]:
        """What :meth:`getattr` reports, as ``(inode, attr)``."""
        reply = self._replies.pop(threading.get_ident(), None)
        if reply is not None and reply[1] == path and reply[0] is not None and (
            reply[0] == _request_id()
        ):
            ino, attr = reply[2], reply[3]
        elif fh is None and path is not None:
            ino, attr = self._lookup(path)
        else:
            ino = self._target(path, fh)
            attr = self.engine.getattr(ino)
        if attr.nlink and path in self._hidden and not self._answers_setattr(path):
            attr.nlink += 1  # libfuse counts the hidden name as a link and takes one off
        self._note_links(ino, attr)
        return ino, attr

    def _setattr(self, path: str | None, fh: int | None, **changes: Any) -> None:
        ino = self._target(path, fh)
        self._answered(path, ino, self.engine.setattr(ino, self._caller(), **changes))
        self._last_setattr[threading.get_ident()] = (_request_id(), path)
        self._invalidate(self._other_names(ino, path))

    def _answers_setattr(self, path: str) -> bool:
        """Whether this getattr of ``path`` is libfuse asking for a setattr's reply."""
        last = self._last_setattr.pop(threading.get_ident(), None)
        return last is not None and last[0] is not None and last == (_request_id(), path)

    def access(self, path: str, amode: int) -> None:
        self.engine.access(self._inode(path), amode, self._caller())

    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> None:
        self._setattr(path, fh, mode=mode)

    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> None:
        self._setattr(path, fh, uid=uid, gid=gid)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
        self._setattr(path, fh, size=length, handle=fh)

    def utimens(
        self, path: str | None, atime: int | object | None, mtime: int | object | None,
        fh: int | None = None,
    ) -> None:  # fmt: skip
        """Times in ns, :data:`~volume.engine.NOW`, or None to leave one unchanged."""
        self._setattr(path, fh, atime_ns=atime, mtime_ns=mtime)

    def statfs(self, path: str) -> dict[str, int]:
        s = self.engine.statfs()
        return {
            "f_bsize": s.bsize,
            "f_frsize": s.bsize,
            "f_blocks": s.blocks,
            "f_bfree": s.bfree,
            "f_bavail": s.bavail,
            "f_files": s.files,
            "f_ffree": s.ffree,
            "f_favail": s.ffree,
            "f_namemax": s.namemax,
        }

    # ------------------------------------------------------------------ namespace

    def mkdir(self, path: str, mode: int) -> None:
        parent, name = self._parent(path)
        ino, attr = self.engine.mkdir(parent, name, mode, self._caller())
        self._remember(path, ino)
        self._answered(path, ino, attr)

    def mknod(self, path: str, mode: int, dev: int) -> None:
        parent, name = self._parent(path)
        ino, attr = self.engine.mknod(parent, name, mode, dev, self._caller())
        self._remember(path, ino)
        self._answered(path, ino, attr)

    def symlink(self, path: str, target: str) -> None:
        """``ln -s target path`` (mfusepy's order: the new link first)."""
        parent, name = self._parent(path)
        ino, attr = self.engine.symlink(parent, name, os.fsencode(target), self._caller())
        self._remember(path, ino)
        self._answered(path, ino, attr)

    def readlink(self, path: str) -> str:
        return os.fsdecode(self.engine.readlink(self._inode(path)))

    def link(self, path: str, existing: str) -> None:
        """``ln existing path`` (mfusepy's order: the new name first)."""
        ino = self._inode(existing)
        parent, name = self._parent(path)
        attr = self.engine.link(ino, parent, name, self._caller())
        self._remember(path, ino)
        self._linked.add(ino)
        self._answered(path, ino, attr)
        self._invalidate(self._other_names(ino, path))

    def unlink(self, path: str) -> None:
        if self._hidden.pop(path, None) is not None:
            return  # the last close of a file unlinked while open: the engine dropped it
        parent, name = self._parent(path)
        others = self._other_names(self._inodes.get(path), path)
        try:
            self.engine.unlink(parent, name, self._caller())
        finally:
            self._forget(path)
        self._invalidate(others)

    def rmdir(self, path: str) -> None:
        parent, name = self._parent(path)
        try:
            self.engine.rmdir(parent, name, self._caller())
        finally:
            self._forget(path)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """rename(2) / renameat2(2) (``RENAME_NOREPLACE``, ``RENAME_EXCHANGE``)."""
        if not flags and HIDDEN_NAME.fullmatch(new.rpartition("/")[2]):
            ino = self._inode(old)
            if ino in self._handle_inodes.values():
                self._hide(old, new, ino)
                return
        src_parent, src_name = self._parent(old)
        dst_parent, dst_name = self._parent(new)
        source = self._lookup_quietly(old)
        hidden = self._hidden_by_this_request(new)
        if hidden is not None and source is not None and source[0] == hidden:
            # two names of one inode: rename(2) does nothing, but libfuse hid the target first
            self.engine.link(hidden, dst_parent, dst_name, self._caller())
            self._remember(new, hidden)
            return
        exchange = bool(flags & RENAME_EXCHANGE)
        target = self._lookup_quietly(new) if exchange else None
        replaced = [] if exchange else self._other_names(self._inodes.get(new), new)
        self.engine.rename(src_parent, src_name, dst_parent, dst_name, flags, self._caller())
        if source is None:
            self._drop_paths()  # unknown before, moved now: nothing cached can be trusted
        elif any(n is not None and n[1].type == TYPE_DIRECTORY for n in (source, target)):
            self._move_paths(old, new, exchange)
        else:
            self._forget(old, new)
            self._remember(new, source[0])
            if target is not None:
                self._remember(old, target[0])
        self._invalidate(replaced)  # the names of the replaced inode lost a link

    def _lookup_quietly(self, path: str) -> tuple[int, Attr] | None:
        try:
            return self._lookup(path)
        except OSError:  # the engine call that follows says what is wrong
            return None

    def _move_paths(self, old: str, new: str, exchange: bool) -> None:
        """Re-key cached paths at and below moved directories (with no exchange, nothing below
        the replaced target survives)."""
        moves = [(old, new), (new, old)] if exchange else [(old, new)]
        for cache in (self._inodes, self._hidden):
            moved: dict[str, int] = {}
            for path in list(cache):
                for src, dst in moves:
                    if path == src or path.startswith(src + "/"):
                        ino = cache.pop(path, None)
                        if ino is not None:
                            moved[dst + path[len(src) :]] = ino
                        break
                else:
                    if not exchange and (path == new or path.startswith(new + "/")):
                        cache.pop(path, None)
            cache.update(moved)

    def _hide(self, path: str, hidden_path: str, ino: int) -> None:
        """libfuse hides an open file that is unlinked or renamed over: unlink it in the engine
        (which keeps it until its last handle goes) and answer for the hidden path."""
        parent, name = self._parent(path)
        others = self._other_names(ino, path)
        self.engine.unlink(parent, name, self._caller())
        self._forget(path)
        self._hidden[hidden_path] = ino
        self._last_hide[threading.get_ident()] = (_request_id(), path, ino)
        self._invalidate(others)

    def _hidden_by_this_request(self, path: str) -> int | None:
        """The inode libfuse hid at ``path`` while serving the current request (a rename over an
        open file hides it first), else None."""
        last = self._last_hide.pop(threading.get_ident(), None)
        if last is None or last[0] is None or last[1] != path or last[0] != _request_id():
            return None
        return last[2]

    def readdir(self, path: str | None, fh: int, plus: bool = False) -> Iterator[tuple[bytes, Any]]:
        """``(name, stat)`` of ".", ".." and every entry; ``stat`` is full with ``plus``, else
        type and inode only (".." carries none: its inode is not at hand). The mount itself
        reads listings in pages (:meth:`entries`)."""
        for name, _next, ino, node_type, attr in self.entries(path, fh, 0, plus):
            if attr is not None:
                yield name, _stat(ino, attr)
            else:
                yield name, {"st_mode": _IFMT[node_type], "st_ino": ino} if ino else None

    def entries(
        self, path: str | None, fh: int, offset: int, plus: bool
    ) -> Iterator[tuple[bytes, int, int, int, Attr | None]]:
        """The listing of an open directory from position ``offset`` on: ``(name, position of
        the next entry, inode, type, attr)``, "." and ".." first (".." with inode 0: it is not
        at hand); ``attr`` with ``plus`` only.

        Positions count the entries this handle has handed out. The engine is read in pages,
        each starting after the last name handed out before ``offset``, so a long listing costs
        one query per kernel request, and entries created or removed meanwhile never shift the
        others (every entry that exists throughout is listed once, as readdir(3) promises).
        With ``plus`` the names (and which inodes have no xattrs) are remembered, as lookups
        would: the kernel takes the attributes and does not look the names up.
        """
        stream = self._dirs.get(fh)
        if stream is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if offset < 1:
            yield b".", 1, stream.ino, TYPE_DIRECTORY, None
        if offset < 2:
            yield b"..", 2, 0, TYPE_DIRECTORY, None
        done = max(offset - 2, 0)
        if done > stream.start:  # the last request took this many: read about as many
            stream.batch = max(done - stream.start + READDIR_SLACK, READDIR_SLACK)
        stream.start = done
        names = stream.names
        del names[done:]
        after = names[-1] if names else None
        caller = self._caller()
        prefix = None if path is None else "/" if path == "/" else path + "/"
        while True:
            generation, epoch, limit = self._generation, self._xattr_epoch, stream.batch
            try:
                page = self.engine.readdir(stream.ino, caller, plus=plus, after=after, limit=limit)
            except FileNotFoundError:
                if path is not None:
                    raise
                return  # removed while open (libfuse has no path for it): empty, as on Linux
            if plus and page:
                self._learn(prefix, page, generation, epoch)
            for name, child, node_type, attr in page:
                names.append(name)
                yield name, len(names) + 2, child, node_type, attr
            if len(page) < limit:
                return
            after = page[-1][0]

    def _learn(
        self, prefix: str | None, page: list[tuple[bytes, int, int, Attr | None]],
        generation: int, epoch: int,
    ) -> None:  # fmt: skip
        """Record what a listing with attributes told the kernel: the names' inodes, the
        inodes with several links, and those without xattrs (``ls -l`` asks for two xattrs
        per name). Skipped when an in-process change or an xattr change ran meanwhile."""
        for _, child, _t, attr in page:
            if attr is not None and attr.nlink > 1:
                self._note_links(child, attr)
        if prefix is not None and generation == self._generation:
            self._inodes.update([(prefix + n.decode(_FS_ENCODING, "surrogateescape"), child)
                                 for n, child, _t, _a in page])  # fmt: skip
        if self.xattrs_absent:
            return
        free = self.engine.without_xattrs([child for _, child, _t, _a in page])
        with self._xattr_lock:
            if epoch == self._xattr_epoch:
                for child in free:
                    self._no_xattrs.add(child)

    def opendir(self, path: str) -> int:
        fh = DIR_HANDLE | next(self._dir_handles)
        self._dirs[fh] = _DirStream(self._inode(path))  # the kernel opens only directories here
        return fh

    def releasedir(self, path: str | None, fh: int) -> None:
        self._dirs.pop(fh, None)

    # ------------------------------------------------------------------ xattrs

    def refuse_xattrs(self) -> None:
        """Serve no extended attribute at all (a mount with ``xattrs=False``): every xattr call
        gets ENOSYS, after which the kernel answers them itself (EOPNOTSUPP) without asking, as
        on a JuiceFS client mount without ``--enable-xattr``. The volume's own xattrs are kept
        as they are."""
        self.xattrs_absent = self.xattrs_refused = True

    def _check_xattrs_served(self) -> None:
        if self.xattrs_refused:
            raise OSError(errno.ENOSYS, "this mount serves no extended attributes")

    def known_xattr_miss(self, path: str, name: str) -> int:
        """The errno a getxattr of ``name`` gets without asking the volume (ENOSYS: none here
        at all; ENODATA: the inode is known to lack it), else 0. ``ls -l`` asks two names of
        every entry, and the answer is nearly always this."""
        if self.xattrs_absent:
            return errno.ENOSYS
        ino = self._inode(path)
        if (ino in self._no_xattrs and _valid_xattr_name(name)) or (
            name == CAPABILITY and ino in self._no_capability
        ):
            return errno.ENODATA
        return 0

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        miss = self.known_xattr_miss(path, name)
        if miss:
            raise OSError(miss, os.strerror(miss))
        ino = self._inode(path)
        epoch = self._xattr_epoch
        try:
            return self.engine.getxattr(ino, name)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                none = not self.engine.listxattr(ino)
                with self._xattr_lock:
                    if epoch == self._xattr_epoch:
                        if name == CAPABILITY:
                            self._no_capability.add(ino)
                        if none:
                            self._no_xattrs.add(ino)
            raise

    def _forget_xattrs(self, ino: int) -> None:
        with self._xattr_lock:
            self._xattr_epoch += 1
            self._no_capability.discard(ino)
            self._no_xattrs.discard(ino)

    def listxattr(self, path: str) -> list[str]:
        self._check_xattrs_served()
        ino = self._inode(path)
        return [] if ino in self._no_xattrs else self.engine.listxattr(ino)

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> None:
        self._check_xattrs_served()
        ino = self._inode(path)
        self._forget_xattrs(ino)
        try:
            self.engine.setxattr(ino, name, value, options, self._caller())
        finally:
            self._forget_xattrs(ino)

    def removexattr(self, path: str, name: str) -> None:
        self._check_xattrs_served()
        self.engine.removexattr(self._inode(path), name, self._caller())

    # ------------------------------------------------------------------ files

    def open(self, path: str, flags: int) -> int:
        ino = self._inode(path)
        fh = self.engine.open(ino, flags, self._caller())
        self._handle_inodes[fh] = ino
        if flags & os.O_TRUNC:
            self._invalidate(self._other_names(ino, path))
        return fh

    def create(self, path: str, mode: int, flags: int) -> int:
        parent, name = self._parent(path)
        caller = self._caller()
        try:
            fh, ino, attr = self.engine.create(parent, name, mode, flags | os.O_EXCL, caller)
            self._no_capability.add(ino)  # a new file has no extended attributes
            self._no_xattrs.add(ino)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            # created meanwhile by someone else: open it, as open(2) without O_EXCL does
            fh, ino, attr = self.engine.create(parent, name, mode, flags, caller)
        self._handle_inodes[fh] = ino
        self._remember(path, ino)
        self._answered(path, ino, attr)
        return fh

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return self.engine.read(fh, offset, size)

    def read_into(self, path: str | None, into: memoryview, offset: int, fh: int) -> int:
        """``read`` straight into libfuse's reply buffer ``into``; returns the bytes read."""
        return self.engine.read_into(fh, offset, into)

    def write(self, path: str | None, data: memoryview, offset: int, fh: int) -> int:
        """``data`` is valid during the call only (the engine copies it)."""
        written = self.engine.write(fh, offset, data)
        self._invalidate(self._other_names(self._handle_inodes.get(fh), path))
        return written

    def flush(self, path: str | None, fh: int) -> None:
        self.engine.flush(fh)

    def fsync(self, path: str | None, datasync: int, fh: int) -> None:
        self.engine.fsync(self.engine.inode_of(fh))

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> None:
        self.engine.fallocate(fh, mode, offset, size)
        self._invalidate(self._other_names(self._handle_inodes.get(fh), path))

    def copy_file_range(
        self, path_in: str | None, fh_in: int, off_in: int,
        path_out: str | None, fh_out: int, off_out: int, size: int, flags: int,
    ) -> int:  # fmt: skip
        """A metadata-only clone of the source's slices (no block is copied)."""
        copied = self.engine.copy_file_range(fh_in, off_in, fh_out, off_out, size, flags)
        self._invalidate(self._other_names(self._handle_inodes.get(fh_out), path_out))
        return copied

    def release(self, path: str | None, fh: int) -> None:
        self._handle_inodes.pop(fh, None)
        self.engine.release(fh)

    def init_with_config(self, conn: Any, config: Any) -> None:
        """Ask for 1 MiB requests (libfuse caps them at its buffer size)."""
        self._fuse = _libfuse().fuse_get_context().contents.fuse
        conn.want &= ~FUSE_CAP_AUTO_INVAL_DATA  # see FuseMount.start: kernel_cache instead
        # attributes with every directory listing, not only its first batch: otherwise ls -l,
        # du and find -type look each further entry up in a request of its own
        conn.want &= ~FUSE_CAP_READDIRPLUS_AUTO
        conn.max_write = MAX_IO
        conn.max_readahead = MAX_IO  # the kernel keeps the smaller of this and its own


# =========================================================================== the libfuse session


class _ContextAndRequest(ctypes.Structure):
    """libfuse's ``fuse_context_i``: the public context, then the request being served."""

    _fields_ = [
        ("ctx", mfusepy.fuse_context if mfusepy is not None else ctypes.c_void_p),
        ("req", ctypes.c_void_p),
    ]


class _RequestHead(ctypes.Structure):
    """The first fields of libfuse's ``struct fuse_req``."""

    _fields_ = [("session", ctypes.c_void_p), ("unique", ctypes.c_uint64)]


def _request_id() -> int | None:
    """The kernel's id of the request this thread serves, from libfuse internals stable since
    libfuse 2 (None when there is no request)."""
    context = _libfuse().fuse_get_context()
    if not context:
        return None
    request = ctypes.cast(context, ctypes.POINTER(_ContextAndRequest)).contents.req
    if not request:
        return None
    return ctypes.cast(request, ctypes.POINTER(_RequestHead)).contents.unique


@functools.lru_cache(maxsize=None)
def _python_api() -> Any:
    """The C API calls that keep a worker thread's Python thread state, declared."""
    api = ctypes.pythonapi
    api.PyGILState_Ensure.restype = ctypes.c_int
    api.PyThreadState_Get.restype = ctypes.c_void_p
    api.PyThreadState_Clear.argtypes = (ctypes.c_void_p,)
    api.PyThreadState_Delete.argtypes = (ctypes.c_void_p,)
    return api


@functools.lru_cache(maxsize=None)
def _libfuse() -> Any:
    """The libfuse library mfusepy loaded, with the one call mfusepy does not wrap declared."""
    lib = mfusepy._libfuse
    lib.fuse_invalidate_path.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
    lib.fuse_invalidate_path.restype = ctypes.c_int
    return lib


class _LibfuseSession(mfusepy.FUSE if mfusepy is not None else object):  # type: ignore[misc]
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
        try:
            super().__init__(operations, mountpoint, **kwargs)
        finally:
            for state in self._kept_states.values():
                _python_api().PyThreadState_Clear(state)
                _python_api().PyThreadState_Delete(state)
            self._kept_states.clear()

    def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> int:
        ident = threading.get_ident()
        if ident not in self._kept_states and ident != self._loop_thread:
            api = _python_api()
            api.PyGILState_Ensure()  # a second hold: ctypes' release leaves the state alive
            self._kept_states[ident] = api.PyThreadState_Get()
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

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        # a view of libfuse's request buffer, not a copy: the engine copies what it keeps
        data = ctypes.cast(buf, ctypes.POINTER(ctypes.c_char * size)).contents
        return self.operations.write(self._str(path), memoryview(data), offset, fip.contents.fh)

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


def _utime(ts: Any) -> int | object | None:
    if ts.tv_nsec == UTIME_NOW:
        return NOW
    if ts.tv_nsec == UTIME_OMIT:
        return None
    return ts.tv_sec * 1_000_000_000 + ts.tv_nsec


# =========================================================================== mount points


def _unescape(field: str) -> str:
    """A mountinfo path field (spaces, tabs, newlines and backslashes are octal escapes)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _mount_at(path: Path) -> tuple[str, str] | None:
    """``(fstype, "major:minor")`` of the topmost mount at ``path``, from mountinfo (no file-system
    call: a mount whose daemon hangs must not hang the caller)."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            parts = fields.split()
            if len(parts) > 4 and _unescape(parts[4]) == str(path):
                found = (rest.split()[0], parts[2])
    return found


def _probe(path: Path, seconds: float) -> os.stat_result | OSError | None:
    """Ask the file system at ``path`` for its statistics and attributes, in a helper thread: the
    attributes, the error, or None when no answer came within ``seconds`` (the thread is left
    blocked in the kernel until the mount answers or goes). ``statvfs`` always reaches the FUSE
    daemon, where ``stat`` may be answered from the kernel's attribute cache."""
    outcome: list[os.stat_result | OSError] = []

    def probe() -> None:
        try:
            os.statvfs(path)
            outcome.append(os.stat(path))
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=probe, name=f"fuse-probe:{path}", daemon=True)
    thread.start()
    thread.join(max(seconds, 0.0))
    return outcome[0] if outcome else None


def _fusermount(path: Path, *flags: str) -> bool:
    """``fusermount3 -u [flags] path``; whether it succeeded."""
    done = subprocess.run(
        [FUSERMOUNT, "-u", *flags, str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode:
        log.debug("%s -u %s %s: %s", FUSERMOUNT, " ".join(flags), path, done.stderr.strip())
    return done.returncode == 0


def prepare_mount_point(path: str | os.PathLike) -> Path:
    """Check a mount point before anything is mounted there, and return it absolute.

    Refuses files, non-empty directories and live mount points (:class:`VolumeMountError`),
    unmounts a dead FUSE mount left by a killed process, and creates a missing directory.
    """
    path = Path(os.path.realpath(Path(path).parent)) / Path(path).name  # the mountinfo spelling
    if _mount_at(path) is not None:
        probed = _probe(path, PROBE_EXISTING_SECONDS)
        if isinstance(probed, OSError) and probed.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            log.warning("%s: cleaning a dead FUSE mount (its process was killed)", path)
            _fusermount(path, "-z")
        else:
            raise VolumeMountError(
                f"{path} is already a mount point; unmount it ({FUSERMOUNT} -u {path}) or choose "
                f"another mount path"
            )
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise VolumeMountError(f"mount path {path} is not a directory; pass a directory path")
    if path.is_dir():
        if any(path.iterdir()):
            raise VolumeMountError(
                f"mount path {path} is not empty; pass an empty or missing directory"
            )
    else:
        path.mkdir(parents=True)
        _created_mount_points.add(path)
    return path


def _umount(path: Path, flags: int = 0) -> bool:
    """Unmount ``path`` (never lazily unless ``flags`` say so); whether it is unmounted."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.umount2(os.fsencode(path), flags) == 0:
            return True
        err = ctypes.get_errno()
        log.debug("umount2(%s, %d): %s", path, flags, os.strerror(err))
        return err == errno.EINVAL and _mount_at(path) is None
    return _fusermount(path)


def _release_mount_point(path: Path) -> None:
    """Remove a mount point this module created, right after its unmount: a process that goes
    on writing by path then gets ENOENT instead of filling the bare directory."""
    if path not in _created_mount_points:
        return
    _created_mount_points.discard(path)
    try:
        path.rmdir()
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            log.error("%s: something was written into the bare mount point after the unmount: "
                      "%s", path, sorted(os.listdir(path))[:5])  # fmt: skip
        elif exc.errno != errno.ENOENT:
            log.debug("%s: mount point kept: %s", path, exc)


# =========================================================================== the mount


class FuseMount:
    """A kernel mount of an engine, served by a daemon thread of this process.

    Use :meth:`start`; :meth:`stop` unmounts (it also runs at interpreter exit).
    """

    def __init__(self, engine: Engine, mount_path: Path, options: dict[str, Any]):
        self.engine = engine
        self.mount_path = mount_path
        self.options = options
        self.operations = EngineOperations(engine)
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._serve, name=f"fuse:{mount_path}", daemon=True
        )
        self._stop_lock = threading.Lock()
        self._stopped = False

    @classmethod
    def start(
        cls,
        engine: Engine,
        mount_path: Path,
        *,
        read_only: bool,
        attr_cache: float,
        entry_cache: float,
        dir_entry_cache: float,
        timeout: float,
        fsname: str,
        xattrs: bool = True,
    ) -> "FuseMount":
        """Mount ``engine`` at ``mount_path`` and return once the kernel gets answers from it.

        ``attr_cache`` / ``entry_cache`` / ``dir_entry_cache`` are the kernel's attribute, entry
        and negative-entry cache times in seconds. With ``xattrs=False`` the mount serves no
        extended attributes (see :meth:`EngineOperations.refuse_xattrs`). Raises
        :class:`VolumeMountError` when FUSE is unusable or the path is a file, a non-empty
        directory or a live mount point, and :class:`VolumeMountTimeout` (with nothing left
        mounted) when the mount does not answer within ``timeout`` seconds.
        """
        usable, why = fuse_usable()
        if not usable:
            raise VolumeMountError(f"cannot mount with FUSE: {why}")
        mount_path = prepare_mount_point(mount_path)
        options: dict[str, Any] = {
            "fsname": fsname,
            "subtype": "volume",
            "default_permissions": True,
            "use_ino": True,
            "attr_timeout": float(attr_cache),
            "entry_timeout": float(entry_cache),
            # a writable mount keeps no negative entries: a name created in-process is seen
            "negative_timeout": float(dir_entry_cache) if read_only else 0.0,
            "max_idle_threads": 10,  # libfuse 3.14's default is out of range: it says so on stderr
        }
        if os.geteuid() == 0:
            options["allow_other"] = True  # as JuiceFS: other users' processes see a root mount
        if read_only:
            options.update(ro=True, kernel_cache=True)  # nothing changes: keep the page cache
        else:
            # Keep the page cache across opens: every change reaches it, through the kernel's
            # write-through or our invalidations of in-process changes. Invalidating it on open
            # (auto_cache) or on a changed mtime (auto_inval_data) races the kernel's
            # write-through, which unlocks a written page before its WRITE is answered: a reader
            # could cache the old bytes and the writer read them back.
            options["kernel_cache"] = True
        mount = cls(engine, mount_path, options)
        if not xattrs:
            mount.operations.refuse_xattrs()
        previous_handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM)}
        mount._thread.start()
        atexit.register(mount._stop_at_exit)
        try:
            mount._wait_ready(timeout)
        except BaseException:
            mount._abandon()
            raise
        mount._restore_signal_handlers(previous_handlers)
        mount._raise_readahead()
        return mount

    def _serve(self) -> None:
        try:
            _LibfuseSession(
                self.operations, str(self.mount_path), foreground=True, **self.options
            )
        except BaseException as exc:  # reported by start(); a clean unmount returns normally
            self._error = exc

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not (_mount_at(self.mount_path) or ("",))[0].startswith("fuse"):
            if not self._thread.is_alive():
                raise VolumeMountError(
                    f"libfuse could not mount {self.mount_path} ({self._error!r}); its message is "
                    f"on stderr"
                )
            if time.monotonic() > deadline:
                raise self._timeout(timeout)
            time.sleep(0.005)
        probed = _probe(self.mount_path, deadline - time.monotonic())
        if probed is None:
            raise self._timeout(timeout)
        if isinstance(probed, OSError):
            raise VolumeMountError(f"the new mount at {self.mount_path} fails: {probed}")

    def _timeout(self, timeout: float) -> VolumeMountTimeout:
        return VolumeMountTimeout(
            f"the FUSE mount at {self.mount_path} did not answer within {timeout} s; it was "
            f"unmounted again. Retry with a longer timeout, or check the metadata and object "
            f"stores it reads"
        )

    def _abandon(self) -> None:
        """Undo a failed start: detach the mount at once. The loop ends by itself once the
        calls in flight return (a hung engine call keeps it, and only it, alive)."""
        with self._stop_lock:
            self._stopped = True
        atexit.unregister(self._stop_at_exit)
        if _mount_at(self.mount_path) is not None:
            _fusermount(self.mount_path, "-z")
        self._thread.join(1.0)

    def _raise_readahead(self) -> None:
        """Let sequential reads arrive as 1 MiB requests: the kernel caps FUSE readahead at its
        128 KiB default whatever the daemon asks, unless the mount's bdi says otherwise (only
        root may set it; others keep 128 KiB requests)."""
        mounted = _mount_at(self.mount_path)
        if mounted is None:
            return
        try:
            with open(f"/sys/class/bdi/{mounted[1]}/read_ahead_kb", "w") as f:
                f.write(str(MAX_IO // 1024))
        except OSError as exc:
            log.debug("%s: kernel readahead left at its default: %s", self.mount_path, exc)

    def _restore_signal_handlers(self, handlers: dict[int, Any]) -> None:
        """libfuse takes SIGHUP and SIGTERM to end its loop; give them back to the process (a
        terminated process should terminate, not just lose its mount)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)

    @property
    def mounted(self) -> bool:
        """Whether the mount is up (its loop runs and the kernel lists it)."""
        return self._thread.is_alive() and _mount_at(self.mount_path) is not None

    def _stop_at_exit(self) -> None:
        # briefly: files this process still holds open keep the mount busy
        self.stop(timeout=EXIT_JOIN_SECONDS)

    def stop(self, timeout: float = 30.0) -> None:
        """Unmount and wait for the loop to end; idempotent.

        Never lazily: a lazy unmount lets the next path lookup of a process still working in
        the mount land in the bare mount-point directory. A busy mount stays mounted (read-only
        when its engine is frozen) until its users leave or ``timeout`` passes; then its
        connection is aborted: its users get ENOTCONN, and it is unmounted once they are gone.
        A mount point that was created for the mount is removed right after it.
        """
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        with self.operations._later_lock:
            self.operations.closed = True
        atexit.unregister(self._stop_at_exit)
        deadline = time.monotonic() + timeout
        pause = 0.01
        while _mount_at(self.mount_path) is not None:
            if _umount(self.mount_path):
                break
            if time.monotonic() >= deadline:
                self._abort()
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
        else:
            _release_mount_point(self.mount_path)
        if _mount_at(self.mount_path) is None:
            _release_mount_point(self.mount_path)
        self._thread.join(max(deadline - time.monotonic(), EXIT_JOIN_SECONDS))
        if self._thread.is_alive():
            log.warning("the FUSE loop of %s still runs after the unmount", self.mount_path)

    def _abort(self) -> None:
        """The mount stayed busy past its timeout: never a lazy unmount. As root, abort its
        connection (its users get ENOTCONN); otherwise (only root may abort a connection) it
        stays mounted, frozen, while this process lives. Either way it is unmounted in the
        background once its users have left."""
        path = self.mount_path
        if os.geteuid() == 0:
            log.warning("%s is still busy: its connection is aborted (its users get ENOTCONN)",
                        path)  # fmt: skip
            _umount(path, MNT_FORCE)
        else:
            log.warning("%s is still busy: it stays mounted until its users leave (they get "
                        "ENOTCONN if this process exits first)", path)  # fmt: skip

        def reap() -> None:
            while _mount_at(path) is not None and not _umount(path):
                time.sleep(1.0)
            _release_mount_point(path)

        threading.Thread(target=reap, name=f"fuse-reap:{path}", daemon=True).start()

    def __repr__(self) -> str:
        return f"FuseMount({str(self.mount_path)!r}, mounted={self.mounted})"
