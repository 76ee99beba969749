"""The translator of a FUSE mount: libfuse's path-based calls to an engine's inode calls.

:class:`EngineOperations` has the shape of mfusepy's ``Operations`` and does nothing but
translate: permissions are checked by the kernel (``default_permissions``) and again by the
engine, POSIX rules live in the engine, errors are the engine's errnos.

libfuse's high-level API names every file by path, so the translator keeps a path -> inode cache
(a mirror of the paths the kernel has looked up) that namespace changes invalidate. Changes made
in-process (the handle's ``.fs``) go through :class:`~volume.mount.view.KernelCoherentEngine`,
which tells the translator (:meth:`EngineOperations.namespace_changed`,
:meth:`EngineOperations.inode_changed`) so that it and the kernel drop what became stale.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import itertools
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..engine import RENAME_EXCHANGE, ROOT, Caller, Engine
from ..engine.posix import TYPE_TO_IFMT as _IFMT, check_xattr_name, st_mode
from ..juicefs import ROOT_INODE, TYPE_DIRECTORY, Attr
from ..stores import ByteStream
from ._libfuse import libfuse, mfusepy, request_id

log = logging.getLogger("volume.mount.fuse")

__all__ = ["EngineOperations", "MAX_IO", "read_request_bytes", "request_bytes"]

MAX_IO = 1 << 20  # largest read/write request: one engine call per MiB, not per page
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14  # the kernel asks for attributes only while it uses them
FUSE_CAP_AUTO_INVAL_DATA = 1 << 12  # the kernel drops a file's pages when it sees a new mtime
FUSE_CAP_SPLICE_WRITE = 1 << 7  # libfuse may splice a reply's data into /dev/fuse
DIR_HANDLE = 1 << 63  # set in directory handles (their inode), never in engine file handles
REINVALIDATE_SECONDS = 0.05  # kernel lookups in flight during an in-process change answer by then
CACHE_LIMIT = 100_000  # keys per generation of a translator cache (see _Recent)
READDIR_BATCH = 128  # entries read per engine call of a listing, until requests show their size
READDIR_SLACK = 16  # read this many more than the last request of a listing took
CAPABILITY = "security.capability"  # the kernel asks for it before every write
HIDDEN_NAME = re.compile(r"\.fuse_hidden[0-9a-f]{16}")  # libfuse's names for unlinked open files



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


@functools.lru_cache(maxsize=None)
def request_bytes() -> int:
    """The size of the mount's requests: the largest, at most :data:`MAX_IO`, that libfuse
    splices out of ``/dev/fuse`` (a file system with ``write_buf``). Its pipe must hold a whole
    request, the data and a page for the header, and a process without ``CAP_SYS_RESOURCE``
    cannot grow a pipe past ``/proc/sys/fs/pipe-max-size`` (1 MiB by default). Otherwise libfuse
    reads every request into its buffer, a copy more of each byte written: measured, 1 MiB writes
    split in requests of 1020 + 4 KiB cost the server less than whole 1 MiB requests copied
    (0.69-0.82 against 0.81-1.00 CPU seconds per GiB), and writes of 4 MiB 25% less.

    The kernel takes its largest request in pages from ``max_write`` for reads too, so the
    mount's readahead is set near this size as well (:func:`read_request_bytes`): a readahead
    window of 1 MiB would come as requests of 1020 and 4 KiB."""
    if not hasattr(fcntl, "F_SETPIPE_SZ"):  # not Linux: no splicing
        return MAX_IO
    page = os.sysconf("SC_PAGESIZE")
    reader, writer = os.pipe()
    try:
        fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, MAX_IO + page)
        return MAX_IO
    except OSError:
        pass
    finally:
        os.close(reader)
        os.close(writer)
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            largest = int(f.read()) - page
    except (OSError, ValueError):
        return MAX_IO
    # requests much smaller than 1 MiB would cost more per byte than the copy saves
    return largest if MAX_IO // 2 <= largest < MAX_IO else MAX_IO


def read_request_bytes() -> int:
    """The size of the mount's read requests (its readahead): :func:`request_bytes` less four
    pages, so that libfuse can splice a reply of a whole request from up to two block files.
    libfuse splices a reply only when its pipe holds the data, the header and a page per part
    and one more; a bigger reply is copied through its memory instead."""
    return request_bytes() - 4 * os.sysconf("SC_PAGESIZE")


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
        self._replies[threading.get_ident()] = (request_id(), path, ino, attr)
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
            libfuse().fuse_invalidate_path(self._fuse, os.fsencode(path))

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
            reply[0] == request_id()
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
        self._last_setattr[threading.get_ident()] = (request_id(), path)
        self._invalidate(self._other_names(ino, path))

    def _answers_setattr(self, path: str) -> bool:
        """Whether this getattr of ``path`` is libfuse asking for a setattr's reply."""
        last = self._last_setattr.pop(threading.get_ident(), None)
        return last is not None and last[0] is not None and last == (request_id(), path)

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
        self._last_hide[threading.get_ident()] = (request_id(), path, ino)
        self._invalidate(others)

    def _hidden_by_this_request(self, path: str) -> int | None:
        """The inode libfuse hid at ``path`` while serving the current request (a rename over an
        open file hides it first), else None."""
        last = self._last_hide.pop(threading.get_ident(), None)
        if last is None or last[0] is None or last[1] != path or last[0] != request_id():
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

    def read_spans(
        self, path: str | None, size: int, offset: int, fh: int
    ) -> list[tuple[int, int, int]] | None:
        """Where the bytes of a read lie in the bucket's files (``(fd, position, length)``, the
        caller closes each ``fd``), for libfuse to splice them; None: :meth:`read_into` them."""
        return self.engine.read_spans(fh, offset, size)

    #: Present, it has mfusepy register libfuse's ``read_buf``: the session answers a read with
    #: the file ranges of :meth:`read_spans`, which libfuse splices into /dev/fuse.
    read_buf = read_spans

    def write(self, path: str | None, data: memoryview | ByteStream, offset: int, fh: int) -> int:
        """``data`` is valid during the call only (the engine copies it): a view of the request,
        or the request's bytes left in a pipe (see :meth:`write_buf`)."""
        written = self.engine.write(fh, offset, data)
        self._invalidate(self._other_names(self._handle_inodes.get(fh), path))
        return written

    #: Present, it has mfusepy register libfuse's ``write_buf``, which makes libfuse splice big
    #: write requests into a pipe; the session hands them to :meth:`write` as a ``ByteStream``.
    write_buf = write

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
        """Ask for requests of up to 1 MiB (libfuse caps them at its buffer size), or the
        largest libfuse can splice (:func:`request_bytes`), and for replies spliced from files
        (:meth:`read_spans`)."""
        self._fuse = libfuse().fuse_get_context().contents.fuse
        conn.want &= ~FUSE_CAP_AUTO_INVAL_DATA  # see FuseMount.start: kernel_cache instead
        # attributes with every directory listing, not only its first batch: otherwise ls -l,
        # du and find -type look each further entry up in a request of its own
        conn.want &= ~FUSE_CAP_READDIRPLUS_AUTO
        conn.want |= conn.capable & FUSE_CAP_SPLICE_WRITE  # replies of read_buf's file ranges
        conn.max_write = request_bytes()
        conn.max_readahead = read_request_bytes()  # the kernel keeps the smaller of it and its own

