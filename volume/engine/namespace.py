"""Namespace operations: attributes, names, links, renames, directories and xattrs.

Each operation is one metadata transaction (see :mod:`volume.engine.engine` for the helpers and
:mod:`volume.engine.files` for the lock order). Operations that must see the open-inode table
consistently with their transaction (unlink, rmdir, a rename that replaces a target) hold the
engine's table lock around it, which the lock order allows (table lock before the metadata
store's lock); none of them touches the object store.
"""

from __future__ import annotations

import errno
import logging
import stat
import time
from dataclasses import dataclass

from ..juicefs import (
    COUNTER_NEXT_SESSION,
    COUNTER_TOTAL_INODES,
    COUNTER_USED_SPACE,
    DIR_LENGTH,
    ROOT_INODE,
    TYPE_BLOCKDEV,
    TYPE_CHARDEV,
    TYPE_DIRECTORY,
    TYPE_FILE,
    TYPE_SYMLINK,
    Attr,
    align4k,
)
from ..stores import MetaTxn
from .posix import (
    MAX_XATTR_VALUE,
    ROOT,
    R_OK,
    W_OK,
    X_OK,
    XATTR_CREATE,
    XATTR_REPLACE,
    Caller,
    check_access,
    check_name,
    check_sticky,
    check_symlink_target,
    check_xattr_name,
    check_xattr_name_length,
    fs_error,
    type_from_mode,
)

log = logging.getLogger("volume.engine")

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
NOW = object()  # setattr time value meaning "the current time" (UTIME_NOW)


@dataclass(frozen=True)
class StatFS:
    """File-system statistics in 4 KiB blocks, as ``statvfs`` reports them."""

    bsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    namemax: int = 255


def stats_length(attr: Attr) -> int:
    """The length a directory's stats count for an entry (files only)."""
    return attr.length if attr.type == TYPE_FILE else 0


def space(attr: Attr) -> int:
    """The space usedSpace counts for an inode (its length rounded up to 4 KiB)."""
    return align4k(stats_length(attr))


class NamespaceOps:
    """The namespace half of :class:`~volume.engine.Engine` (a mixin; the engine supplies the
    transaction helpers, the id allocator and the open-inode table)."""

    # ================================================================== attributes

    def getattr(self, ino: int) -> Attr:
        """Attributes of an inode (ENOENT when missing)."""
        return self._overlay(ino, self._load_attr(ino))

    def _load_attr(self, ino: int) -> Attr:
        """The stored attributes of an inode (ENOENT when missing). A store that can read one
        inode without a transaction of its own (``read_attr``) is asked that way: getattr is
        the commonest call of a mount."""
        read_attr = getattr(self.meta, "read_attr", None)
        if read_attr is None:
            return self._read(lambda tx: self._attr(tx, ino))
        attr = read_attr(ino)
        if attr is None:
            raise fs_error(errno.ENOENT)
        return attr

    def lookup(self, parent: int, name: bytes, caller: Caller = ROOT) -> tuple[int, Attr]:
        """The inode named ``name`` in directory ``parent``."""

        def run(tx: MetaTxn) -> tuple[int, Attr]:
            pattr = self._dir(tx, parent, caller, X_OK)
            if name == b".":
                return parent, pattr
            if name == b"..":
                up = pattr.parent if parent != ROOT_INODE else ROOT_INODE
                return up, self._attr(tx, up)
            check_name(name)
            entry = tx.lookup(parent, name)
            if entry is None:
                raise fs_error(errno.ENOENT, name)
            return entry[0], self._attr(tx, entry[0])

        ino, attr = self._read(run)
        return ino, self._overlay(ino, attr)

    def access(self, ino: int, mask: int, caller: Caller = ROOT) -> None:
        """Raise EACCES unless ``caller`` has ``mask`` on the inode."""
        check_access(self.getattr(ino), mask, caller)

    def setattr(
        self,
        ino: int,
        caller: Caller = ROOT,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | object | None = None,
        mtime_ns: int | object | None = None,
        handle: int | None = None,
    ) -> Attr:
        """Change attributes (chmod, chown, truncate, utimens) with Linux's permission rules."""
        if self.read_only:
            raise fs_error(errno.EROFS)
        self._flush_inode(ino)  # buffered writes would otherwise overwrite the new times later
        if size is not None:
            if size < 0:
                raise fs_error(errno.EINVAL)
            self._truncate(ino, size, caller, handle)
        if mode is None and uid is None and gid is None and atime_ns is None and mtime_ns is None:
            return self.getattr(ino)
        with self._change() as tx:
            attr = self._attr(tx, ino)
            owner = caller.uid in (0, attr.uid)
            if mode is not None:
                mode &= 0o7777
                # a non-owner may only clear set-user-ID/set-group-ID bits: the kernel asks for
                # that after a write through FUSE (JuiceFS allows it the same way)
                only_clears = mode & 0o1777 == attr.mode & 0o1777 and not mode & ~attr.mode
                if not owner and not only_clears:
                    raise fs_error(errno.EPERM)
                if caller.uid != 0 and not caller.in_group(attr.gid):
                    mode &= ~stat.S_ISGID
                attr.mode = mode
            if uid is not None or gid is not None:
                self._chown(attr, caller, uid, gid)
            for value, name in ((atime_ns, "atime_ns"), (mtime_ns, "mtime_ns")):
                if value is None:
                    continue
                if value is NOW:
                    if not owner:
                        check_access(attr, W_OK, caller)
                    value = time.time_ns()
                elif not owner:
                    raise fs_error(errno.EPERM)
                setattr(attr, name, value)
            attr.ctime_ns = time.time_ns()
            tx.set_attr(ino, attr)
        return self._overlay(ino, attr)

    @staticmethod
    def _chown(attr: Attr, caller: Caller, uid: int | None, gid: int | None) -> None:
        new_uid = attr.uid if uid is None or uid == -1 else uid
        new_gid = attr.gid if gid is None or gid == -1 else gid
        if caller.uid != 0:
            if new_uid != attr.uid or caller.uid != attr.uid:
                if not (new_uid == attr.uid and caller.uid == attr.uid):
                    raise fs_error(errno.EPERM)
            if new_gid != attr.gid and not caller.in_group(new_gid):
                raise fs_error(errno.EPERM)
        if attr.type != TYPE_DIRECTORY and (new_uid != attr.uid or new_gid != attr.gid):
            attr.mode &= ~stat.S_ISUID
            if attr.mode & 0o010:
                attr.mode &= ~stat.S_ISGID
        attr.uid, attr.gid = new_uid, new_gid

    # ================================================================== namespace

    def _create_node(
        self,
        parent: int,
        name: bytes,
        type_: int,
        mode: int,
        caller: Caller,
        *,
        rdev: int = 0,
        target: bytes = b"",
    ) -> tuple[int, Attr]:
        if name in (b".", b".."):
            raise fs_error(errno.EEXIST, name)  # they always exist
        check_name(name)
        ino = self._alloc("inode")
        with self._change() as tx:
            pattr = self._dir(tx, parent, caller, W_OK | X_OK)
            if tx.lookup(parent, name) is not None:
                raise fs_error(errno.EEXIST, name)
            now = time.time_ns()
            gid = caller.gid
            mode &= 0o7777
            if pattr.mode & stat.S_ISGID:
                gid = pattr.gid
                if type_ == TYPE_DIRECTORY:
                    mode |= stat.S_ISGID
            is_dir = type_ == TYPE_DIRECTORY
            attr = Attr(
                type=type_,
                mode=mode,
                uid=caller.uid,
                gid=gid,
                atime_ns=now,
                mtime_ns=now,
                ctime_ns=now,
                nlink=2 if is_dir else 1,
                length=DIR_LENGTH if is_dir else len(target),
                rdev=rdev,
                parent=parent,
            )
            tx.set_attr(ino, attr)
            tx.add_entry(parent, name, ino, type_)
            if type_ == TYPE_SYMLINK:
                tx.set_symlink(ino, target)
            if is_dir:
                tx.update_dir_stats(ino, 0, 0, 0)
                pattr.nlink += 1
            pattr.mtime_ns = pattr.ctime_ns = now
            tx.set_attr(parent, pattr)
            tx.add_counter(COUNTER_USED_SPACE, space(attr))
            tx.add_counter(COUNTER_TOTAL_INODES, 1)
            tx.update_dir_stats(parent, 0, space(attr), 1)
        return ino, attr

    def mkdir(self, parent: int, name: bytes, mode: int, caller: Caller = ROOT) -> tuple[int, Attr]:
        """Create a directory (``mode`` already has the umask applied)."""
        mode &= 0o777 | stat.S_ISVTX  # mkdir(2) ignores setuid/setgid (setgid is inherited)
        return self._create_node(parent, name, TYPE_DIRECTORY, mode, caller)

    def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int = 0, caller: Caller = ROOT
    ) -> tuple[int, Attr]:
        """Create a regular file, fifo, socket or device node; the type comes from ``mode``."""
        type_ = type_from_mode(mode)
        if type_ == TYPE_DIRECTORY or type_ == TYPE_SYMLINK:
            raise fs_error(errno.EINVAL)
        if type_ in (TYPE_BLOCKDEV, TYPE_CHARDEV) and caller.uid != 0:
            raise fs_error(errno.EPERM)
        return self._create_node(parent, name, type_, mode, caller, rdev=rdev)

    def symlink(
        self, parent: int, name: bytes, target: bytes, caller: Caller = ROOT
    ) -> tuple[int, Attr]:
        """Create a symbolic link to ``target``."""
        check_symlink_target(target)
        return self._create_node(parent, name, TYPE_SYMLINK, 0o777, caller, target=target)

    def readlink(self, ino: int) -> bytes:
        """Target of a symbolic link (EINVAL for other types)."""

        def run(tx: MetaTxn) -> bytes:
            if self._attr(tx, ino).type != TYPE_SYMLINK:
                raise fs_error(errno.EINVAL)
            target = tx.get_symlink(ino)
            if target is None:
                log.error("symlink inode %d has no target row", ino)
                raise fs_error(errno.EIO)
            return target

        return self._read(run)

    def link(self, ino: int, parent: int, name: bytes, caller: Caller = ROOT) -> Attr:
        """Add a hard link; a file with several links gets ``parent = 0`` (JuiceFS rule)."""
        if name in (b".", b".."):
            raise fs_error(errno.EEXIST, name)  # they always exist
        check_name(name)
        self._flush_inode(ino)
        with self._change() as tx:
            attr = self._attr(tx, ino)
            pattr = self._dir(tx, parent, caller, W_OK | X_OK)
            if tx.lookup(parent, name) is not None:
                raise fs_error(errno.EEXIST, name)  # before EPERM for a directory, as Linux
            if attr.type == TYPE_DIRECTORY:
                raise fs_error(errno.EPERM)
            now = time.time_ns()
            tx.add_entry(parent, name, ino, attr.type)
            attr.nlink += 1
            attr.parent = 0
            attr.ctime_ns = now
            tx.set_attr(ino, attr)
            pattr.mtime_ns = pattr.ctime_ns = now
            tx.set_attr(parent, pattr)
            tx.update_dir_stats(parent, stats_length(attr), space(attr), 1)
        return self._overlay(ino, attr)

    def unlink(self, parent: int, name: bytes, caller: Caller = ROOT) -> None:
        """Remove a non-directory entry; the inode goes when its last link and handle do."""
        if name in (b".", b".."):
            raise fs_error(errno.EISDIR, name)
        self._remove_entry(parent, name, caller, directory=False)

    def rmdir(self, parent: int, name: bytes, caller: Caller = ROOT) -> None:
        """Remove an empty directory."""
        if name == b".":
            raise fs_error(errno.EINVAL)
        if name == b"..":
            raise fs_error(errno.ENOTEMPTY)
        self._remove_entry(parent, name, caller, directory=True)

    def _remove_entry(self, parent: int, name: bytes, caller: Caller, *, directory: bool) -> None:
        """unlink(2) or rmdir(2): drop the entry and one link of the inode it names."""
        check_name(name)
        with self._table_lock, self._change() as tx:  # the open-inode table is consulted
            pattr = self._dir(tx, parent, caller, W_OK | X_OK)
            entry = tx.lookup(parent, name)
            if entry is None:
                raise fs_error(errno.ENOENT, name)
            ino = entry[0]
            attr = self._attr(tx, ino)
            if (attr.type == TYPE_DIRECTORY) != directory:
                raise fs_error(errno.ENOTDIR if directory else errno.EISDIR, name)
            check_sticky(pattr, attr, caller)
            if directory and tx.has_entries(ino):
                raise fs_error(errno.ENOTEMPTY, name)
            now = time.time_ns()
            tx.remove_entry(parent, name)
            if directory:
                pattr.nlink -= 1
            pattr.mtime_ns = pattr.ctime_ns = now
            tx.set_attr(parent, pattr)
            tx.update_dir_stats(parent, -stats_length(attr), -space(attr), -1)
            self._unref(tx, ino, attr, now)

    def _unref(self, tx: MetaTxn, ino: int, attr: Attr, now: int) -> None:
        """Drop one link (a directory's only one); delete the inode unless links or open
        handles remain."""
        attr.nlink = 0 if attr.type == TYPE_DIRECTORY else attr.nlink - 1
        attr.ctime_ns = now
        if attr.nlink > 0:
            tx.set_attr(ino, attr)
            return
        oi = self._open.get(ino)
        if oi is not None:
            oi.unlinked = True  # deleted at the last release
            attr.parent = 0  # in no directory: its length changes touch no dir stats
            tx.set_attr(ino, attr)
            # as JuiceFS does: a snapshot taken (or a crash) before the last release keeps a
            # record of it, so the next writable mount deletes it
            tx.add_sustained(self._session_id(tx), ino)
        else:
            self._drop_inode(tx, ino, attr)

    def _session_id(self, tx: MetaTxn) -> int:
        """This engine's session id, taken from ``nextSession`` when first needed."""
        if not self._session:
            self._session = tx.add_counter(COUNTER_NEXT_SESSION, 1)
        return self._session

    def _drop_sustained(self) -> None:
        """Delete the inodes that earlier sessions held open after their last link went: none
        of this engine's handles can hold them."""
        if not self._read(lambda tx: tx.sustained()):
            return
        with self.meta.transaction(write=True) as tx:  # not a change of the user's: no .modified
            for session, ino in tx.sustained():
                attr = tx.get_attr(ino)
                if attr is not None and attr.nlink <= 0:
                    self._drop_inode(tx, ino, attr)
                tx.remove_sustained(session, ino)

    def _is_descendant(self, tx: MetaTxn, ino: int, ancestor: int) -> bool:
        """Whether directory ``ino`` is ``ancestor`` or lies below it."""
        seen = 0
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT_INODE or seen > 100_000:
                return False
            ino = self._attr(tx, ino).parent
            seen += 1

    def rename(
        self,
        parent: int,
        name: bytes,
        new_parent: int,
        new_name: bytes,
        flags: int = 0,
        caller: Caller = ROOT,
    ) -> None:
        """rename(2) and renameat2(2) with ``RENAME_NOREPLACE`` / ``RENAME_EXCHANGE``."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise fs_error(errno.EINVAL)
        if name in (b".", b".."):
            raise fs_error(errno.EBUSY, name)
        if new_name in (b".", b".."):
            raise fs_error(errno.EEXIST if flags & RENAME_NOREPLACE else errno.EBUSY, new_name)
        check_name(name)
        with self._table_lock, self._change() as tx:
            spattr = self._dir(tx, parent, caller, W_OK | X_OK)
            dpattr = spattr if new_parent == parent else self._dir(tx, new_parent, caller, W_OK | X_OK)
            src = tx.lookup(parent, name)
            if src is None:
                raise fs_error(errno.ENOENT, name)
            check_name(new_name)  # Linux looks the source up before the target's name
            sino = src[0]
            sattr = self._attr(tx, sino)
            check_sticky(spattr, sattr, caller)
            dst = tx.lookup(new_parent, new_name)
            if flags & RENAME_EXCHANGE and dst is None:
                raise fs_error(errno.ENOENT, new_name)
            if flags & RENAME_NOREPLACE and dst is not None:
                raise fs_error(errno.EEXIST, new_name)
            dattr = None
            if dst is not None:
                dattr = self._attr(tx, dst[0])
                check_sticky(dpattr, dattr, caller)
            if sattr.type == TYPE_DIRECTORY and self._is_descendant(tx, new_parent, sino):
                raise fs_error(errno.EINVAL)
            if (
                dattr is not None
                and dattr.type == TYPE_DIRECTORY
                and self._is_descendant(tx, parent, dst[0])
            ):  # the target is an ancestor of the source: Linux checks this before types
                raise fs_error(errno.EINVAL if flags & RENAME_EXCHANGE else errno.ENOTEMPTY)
            if dst is not None and dst[0] == sino:
                return  # two names of one inode: POSIX says do nothing
            if dattr is not None and not flags & RENAME_EXCHANGE:
                if sattr.type == TYPE_DIRECTORY:
                    if dattr.type != TYPE_DIRECTORY:
                        raise fs_error(errno.ENOTDIR, new_name)
                    if tx.has_entries(dst[0]):
                        raise fs_error(errno.ENOTEMPTY, new_name)
                elif dattr.type == TYPE_DIRECTORY:
                    raise fs_error(errno.EISDIR, new_name)

            now = time.time_ns()
            tx.remove_entry(parent, name)
            if dst is not None:
                tx.remove_entry(new_parent, new_name)
            tx.add_entry(new_parent, new_name, sino, sattr.type)
            self._move_accounting(tx, sino, sattr, spattr, dpattr, parent, new_parent)
            if flags & RENAME_EXCHANGE:
                assert dattr is not None and dst is not None
                tx.add_entry(parent, name, dst[0], dattr.type)
                self._move_accounting(tx, dst[0], dattr, dpattr, spattr, new_parent, parent)
                dattr.ctime_ns = now
                tx.set_attr(dst[0], dattr)
            elif dattr is not None:
                assert dst is not None
                tx.update_dir_stats(new_parent, -stats_length(dattr), -space(dattr), -1)
                if dattr.type == TYPE_DIRECTORY:
                    dpattr.nlink -= 1
                self._unref(tx, dst[0], dattr, now)
            sattr.ctime_ns = now
            tx.set_attr(sino, sattr)
            for ino, pattr in {parent: spattr, new_parent: dpattr}.items():
                pattr.mtime_ns = pattr.ctime_ns = now
                tx.set_attr(ino, pattr)

    @staticmethod
    def _move_accounting(
        tx: MetaTxn, ino: int, attr: Attr, from_attr: Attr, to_attr: Attr, frm: int, to: int
    ) -> None:
        """Bookkeeping for an entry of ``ino`` moving from directory ``frm`` to ``to``."""
        if frm == to:
            return
        tx.update_dir_stats(frm, -stats_length(attr), -space(attr), -1)
        tx.update_dir_stats(to, stats_length(attr), space(attr), 1)
        if attr.type == TYPE_DIRECTORY:
            from_attr.nlink -= 1
            to_attr.nlink += 1
        if attr.parent:
            attr.parent = to

    def readdir(
        self, ino: int, caller: Caller = ROOT, *, plus: bool = False,
        after: bytes | None = None, limit: int | None = None,
    ) -> list[tuple[bytes, int, int, Attr | None]]:
        """``(name, inode, type, attr-or-None)`` of the entries sorted by name bytes, starting
        strictly after the name ``after``, at most ``limit`` of them (a listing read in pages
        sees every entry that exists throughout, as readdir(3) promises)."""

        def run(tx: MetaTxn) -> list[tuple[bytes, int, int, Attr | None]]:
            self._dir(tx, ino, caller, R_OK)
            if not plus:
                return [(n, i, t, None) for n, i, t in tx.list_entries(ino, after, limit)]
            return [
                (n, i, t, self._overlay(i, a if a is not None else self._attr(tx, i)))
                for n, i, t, a in tx.list_entries_attrs(ino, after, limit)
            ]

        return self._read(run)

    def has_xattrs(self) -> bool:
        """Whether some inode may have an extended attribute (True when the store cannot tell
        cheaply)."""
        return self._read(lambda tx: tx.any_xattrs())

    def without_xattrs(self, inodes: list[int]) -> set[int]:
        """Those of ``inodes`` that have no extended attribute (one query where the store can)."""
        return set(inodes) - self._read(lambda tx: tx.inodes_with_xattrs(inodes))

    def statfs(self) -> StatFS:
        """Space and inode usage from the store's counters (and the Format's quotas)."""

        def run(tx: MetaTxn) -> tuple[int, int]:
            return tx.get_counter(COUNTER_USED_SPACE), tx.get_counter(COUNTER_TOTAL_INODES)

        used, iused = self._read(run)
        used, iused = max(used, 0), max(iused, 0)
        total = self.fmt.values.get("Capacity") or 0
        if not total:
            total = 1 << 50
            while total < used * 2:
                total *= 2
        itotal = self.fmt.values.get("Inodes") or 0
        if not itotal:
            itotal = 10 << 20
            while itotal < iused * 2:
                itotal *= 2
        free = max(total - used, 0) // 4096
        return StatFS(4096, total // 4096, free, free, itotal, max(itotal - iused, 0))

    # ================================================================== xattrs

    def getxattr(self, ino: int, name: str) -> bytes:
        """Value of an extended attribute (ENODATA when absent)."""
        check_xattr_name_length(name)

        def run(tx: MetaTxn) -> bytes:
            if self._attr(tx, ino).type not in (TYPE_FILE, TYPE_DIRECTORY):
                if name.startswith("user."):  # before the name's validity, as Linux
                    raise fs_error(errno.ENODATA)
            check_xattr_name(name)
            value = tx.get_xattr(ino, name)
            if value is None:
                raise fs_error(errno.ENODATA)
            return value

        return self._read(run)

    def listxattr(self, ino: int) -> list[str]:
        """Names of the inode's extended attributes."""

        def run(tx: MetaTxn) -> list[str]:
            self._attr(tx, ino)
            return [n for n, _ in tx.list_xattrs(ino)]

        return self._read(run)

    def setxattr(
        self, ino: int, name: str, value: bytes, flags: int = 0, caller: Caller = ROOT
    ) -> None:
        """Set an extended attribute (``XATTR_CREATE`` / ``XATTR_REPLACE`` honoured)."""
        check_xattr_name_length(name)
        if len(value) > MAX_XATTR_VALUE:
            raise fs_error(errno.E2BIG)
        with self._change() as tx:
            attr = self._xattr_target(tx, ino, name, caller)
            exists = tx.get_xattr(ino, name) is not None
            if flags & XATTR_CREATE and exists:
                raise fs_error(errno.EEXIST)
            if flags & XATTR_REPLACE and not exists:
                raise fs_error(errno.ENODATA)
            tx.set_xattr(ino, name, bytes(value))
            attr.ctime_ns = time.time_ns()
            tx.set_attr(ino, attr)

    def removexattr(self, ino: int, name: str, caller: Caller = ROOT) -> None:
        """Remove an extended attribute (ENODATA when absent)."""
        check_xattr_name_length(name)
        with self._change() as tx:
            attr = self._xattr_target(tx, ino, name, caller)
            if not tx.remove_xattr(ino, name):
                raise fs_error(errno.ENODATA)
            attr.ctime_ns = time.time_ns()
            tx.set_attr(ino, attr)

    def _xattr_target(self, tx: MetaTxn, ino: int, name: str, caller: Caller) -> Attr:
        attr = self._attr(tx, ino)
        if name.startswith("user."):
            if attr.type not in (TYPE_FILE, TYPE_DIRECTORY):
                raise fs_error(errno.EPERM)
            check_access(attr, W_OK, caller)
        elif caller.uid != 0:
            raise fs_error(errno.EPERM)
        check_xattr_name(name)  # after the permission checks, as Linux
        return attr

