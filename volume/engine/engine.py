"""The file-system engine: inode-level POSIX operations over a MetaStore and an ObjectStore.

This is "the client": namespace rules live here once, the storage of records lives in the
metadata store, and file data flows through per-inode write buffers into immutable blocks.
Errors are ``OSError`` with the errno Linux would give, so the FUSE layer only translates.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

from ..errors import VolumeMountError
from ..juicefs import (
    CHUNK_SIZE,
    COUNTER_NEXT_CHUNK,
    COUNTER_NEXT_INODE,
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
    SliceRecord,
    align4k,
    unpack_slices,
)
from ..stores import MetaStore, MetaTxn, ObjectStore
from .blocks import BlockStore
from .compaction import DEFAULT_COMPACTION, CompactionPolicy, CompactionQueue, plan_compaction
from .diskcache import DiskCache
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
    open_access_mask,
    type_from_mode,
)
from .slices import ChunkMap
from .writer import FileWriter, SliceWriter

log = logging.getLogger("volume.engine")

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
INODE_BATCH = 1024
SLICE_BATCH = 4096
NOW = object()  # setattr time value meaning "the current time" (UTIME_NOW)

T = TypeVar("T")


@dataclass
class OpenInode:
    """State shared by every open handle of one inode."""

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

    @property
    def writable(self) -> bool:
        """Whether the handle was opened for writing."""
        return self.flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)


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


def _stats_length(attr: Attr) -> int:
    return attr.length if attr.type == TYPE_FILE else 0


def _space(attr: Attr) -> int:
    return align4k(_stats_length(attr))


class Engine:
    """A mounted volume's file system, without any kernel involvement.

    Thread-safe: namespace operations are serialised by the metadata store's transactions; data
    operations lock per inode. ``compaction`` says when chunks fragmented by many small writes
    are rewritten with fewer records (None: never; see :mod:`volume.engine.compaction`).
    """

    def __init__(
        self,
        meta: MetaStore,
        objects: ObjectStore,
        *,
        read_only: bool = False,
        cache_bytes: int = 256 << 20,
        upload_workers: int = 8,
        buffer_bytes: int = 300 << 20,
        readahead_blocks: int = 2,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_dir_bytes: int = 10 << 30,
        compaction: CompactionPolicy | None = DEFAULT_COMPACTION,
    ):
        self.meta = meta
        self.fmt = meta.load_format()
        self._check_format_supported()
        self.read_only = read_only
        self.blocks = BlockStore(
            objects,
            self.fmt.Name,
            self.fmt.block_bytes,
            hash_prefix=self.fmt.HashPrefix,
            cache_bytes=cache_bytes,
            upload_workers=upload_workers,
            max_pending_bytes=buffer_bytes,
            disk_cache=self._disk_cache(objects, cache_dir, cache_dir_bytes),
        )
        self.readahead_bytes = readahead_blocks * self.fmt.block_bytes
        self._lock = threading.RLock()
        self._open: dict[int, OpenInode] = {}
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._inode_ids = (0, 0)  # [next, limit) of the current batch
        self._slice_ids = (0, 0)
        self._closed = False
        #: set by every metadata write; the lifecycle clears it when it publishes a snapshot
        self.modified = False
        self._session = 0  # JuiceFS session id, taken when first needed
        if not read_only:
            self._drop_sustained()
        self.compaction = compaction
        self._compactions = (
            None
            if compaction is None or read_only
            else CompactionQueue(self.compact_chunk, compaction)
        )

    def _disk_cache(
        self, objects: ObjectStore, cache_dir: str | os.PathLike[str] | None, capacity: int
    ) -> DiskCache | None:
        """A block cache below ``cache_dir/<UUID>`` for remote stores (local stores are served
        by the page cache)."""
        if cache_dir is None or objects.capabilities.local:
            return None
        return DiskCache(Path(cache_dir) / self.fmt.UUID, capacity)

    def _check_format_supported(self) -> None:
        fmt = self.fmt
        unsupported = []
        if fmt.Compression not in ("", "none"):
            unsupported.append(f"compression {fmt.Compression!r}")
        if fmt.Shards > 1:
            unsupported.append(f"{fmt.Shards} shards")
        if fmt.values.get("EncryptKey"):
            unsupported.append("encryption")
        if unsupported:
            raise VolumeMountError(
                f"volume {fmt.Name!r} uses {', '.join(unsupported)}, which this version cannot "
                f"read or write; mount it with the JuiceFS client instead"
            )

    # ================================================================== helpers

    def _txn(self, write: bool = False):
        if write:
            if self.read_only:
                raise fs_error(errno.EROFS)
            self.modified = True
        return self.meta.transaction(write=write)

    def _read(self, fn: Callable[[MetaTxn], T]) -> T:
        with self.meta.transaction(write=False) as tx:
            return fn(tx)

    @staticmethod
    def _attr(tx: MetaTxn, ino: int) -> Attr:
        attr = tx.get_attr(ino)
        if attr is None:
            raise fs_error(errno.ENOENT)
        return attr

    def _dir(self, tx: MetaTxn, ino: int, caller: Caller, mask: int) -> Attr:
        attr = self._attr(tx, ino)
        if attr.type != TYPE_DIRECTORY:
            raise fs_error(errno.ENOTDIR)
        check_access(attr, mask, caller)
        return attr

    def _alloc(self, which: str) -> int:
        """Next id from the in-memory batch, refilling it in its own transaction."""
        with self._lock:
            if which == "inode":
                nxt, limit = self._inode_ids
                counter, batch = COUNTER_NEXT_INODE, INODE_BATCH
            else:
                nxt, limit = self._slice_ids
                counter, batch = COUNTER_NEXT_CHUNK, SLICE_BATCH
            if nxt >= limit:
                with self._txn(write=True) as tx:
                    limit = tx.add_counter(counter, batch)
                nxt = limit - batch
            if which == "inode":
                self._inode_ids = (nxt + 1, limit)
            else:
                self._slice_ids = (nxt + 1, limit)
            return nxt

    def _overlay(self, ino: int, attr: Attr) -> Attr:
        """Attributes with the unpublished writes of an open inode applied."""
        oi = self._open.get(ino)
        if oi is not None and oi.writer is not None and oi.writer.dirty:
            attr.length = max(attr.length, oi.writer.length)
            attr.mtime_ns = attr.ctime_ns = oi.writer.mtime_ns
        return attr

    def _entry_parents(self, tx: MetaTxn, ino: int, attr: Attr) -> list[int]:
        """One parent per entry naming the inode (hard links appear once per link)."""
        if attr.parent:
            return [attr.parent]
        return [p for p, _ in tx.entry_parents(ino)]

    def _account_length(self, tx: MetaTxn, ino: int, attr: Attr, new_length: int) -> None:
        """Move a file to ``new_length``, keeping usedSpace and the parents' dir stats right."""
        d_len = new_length - attr.length
        d_space = align4k(new_length) - align4k(attr.length)
        attr.length = new_length
        if d_space:
            tx.add_counter(COUNTER_USED_SPACE, d_space)
        if d_len or d_space:
            for parent in self._entry_parents(tx, ino, attr):
                tx.update_dir_stats(parent, d_len, d_space, 0)

    def _drop_inode(self, tx: MetaTxn, ino: int, attr: Attr) -> None:
        """Delete an inode that no entry names any more, with its data and accounting."""
        for indx in tx.chunk_indexes(ino):
            self._release_chunk(tx, ino, indx)
        if attr.type == TYPE_SYMLINK:
            tx.delete_symlink(ino)
        if attr.type == TYPE_DIRECTORY:
            tx.delete_dir_stats(ino)
        tx.delete_xattrs(ino)
        tx.delete_attr(ino)
        tx.add_counter(COUNTER_USED_SPACE, -_space(attr))
        tx.add_counter(COUNTER_TOTAL_INODES, -1)

    @staticmethod
    def _release_chunk(tx: MetaTxn, ino: int, indx: int) -> None:
        """Remove a chunk row, dropping one reference per record.

        Blocks are never deleted here: other versions of the volume may share them; rows whose
        count reaches zero are removed so no JuiceFS client finds them to clean up.
        """
        for rec in unpack_slices(tx.read_chunk(ino, indx)):
            if rec.id and tx.add_slice_ref(rec.id, rec.size, -1) <= 0:
                tx.add_slice_ref(rec.id, rec.size, 0)  # keep the row type-stable for stores
        tx.write_chunk(ino, indx, b"")

    # ================================================================== attributes

    def getattr(self, ino: int) -> Attr:
        """Attributes of an inode (ENOENT when missing)."""
        return self._overlay(ino, self._read(lambda tx: self._attr(tx, ino)))

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
        with self._txn(write=True) as tx:
            attr = self._attr(tx, ino)
            owner = caller.uid in (0, attr.uid)
            if mode is not None:
                if not owner:
                    raise fs_error(errno.EPERM)
                mode &= 0o7777
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
        with self._txn(write=True) as tx:
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
            tx.add_counter(COUNTER_USED_SPACE, _space(attr))
            tx.add_counter(COUNTER_TOTAL_INODES, 1)
            tx.update_dir_stats(parent, 0, _space(attr), 1)
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
        with self._txn(write=True) as tx:
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
            tx.update_dir_stats(parent, _stats_length(attr), _space(attr), 1)
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
        with self._lock, self._txn(write=True) as tx:  # the open-inode table is consulted
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
            tx.update_dir_stats(parent, -_stats_length(attr), -_space(attr), -1)
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
        with self._lock, self._txn(write=True) as tx:
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
                tx.update_dir_stats(new_parent, -_stats_length(dattr), -_space(dattr), -1)
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
        tx.update_dir_stats(frm, -_stats_length(attr), -_space(attr), -1)
        tx.update_dir_stats(to, _stats_length(attr), _space(attr), 1)
        if attr.type == TYPE_DIRECTORY:
            from_attr.nlink -= 1
            to_attr.nlink += 1
        if attr.parent:
            attr.parent = to

    def readdir(
        self, ino: int, caller: Caller = ROOT, *, plus: bool = False
    ) -> list[tuple[bytes, int, int, Attr | None]]:
        """``(name, inode, type, attr-or-None)`` of every entry, sorted by name bytes."""

        def run(tx: MetaTxn) -> list[tuple[bytes, int, int, Attr | None]]:
            self._dir(tx, ino, caller, R_OK)
            entries = tx.list_entries(ino)
            if not plus:
                return [(n, i, t, None) for n, i, t in entries]
            return [(n, i, t, self._overlay(i, self._attr(tx, i))) for n, i, t in entries]

        return self._read(run)

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
        with self._txn(write=True) as tx:
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
        with self._txn(write=True) as tx:
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

    # ================================================================== files

    def _open_inode(self, ino: int, length: int) -> OpenInode:
        with self._lock:
            oi = self._open.get(ino)
            if oi is None:
                oi = self._open[ino] = OpenInode(ino, length)
            oi.refs += 1
            return oi

    def _new_handle(self, oi: OpenInode, flags: int) -> int:
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._handles[fh] = Handle(oi, flags)
            return fh

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise fs_error(errno.EBADF) from None

    def open(self, ino: int, flags: int, caller: Caller = ROOT) -> int:
        """Open an inode; returns a handle number. ``O_TRUNC`` truncates."""
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC
        if writing and self.read_only:
            raise fs_error(errno.EROFS)
        attr = self.getattr(ino)
        check_access(attr, open_access_mask(flags), caller)
        if attr.type == TYPE_DIRECTORY and writing:
            raise fs_error(errno.EISDIR)
        if flags & os.O_TRUNC and attr.type == TYPE_FILE and attr.length:
            self._truncate(ino, 0, caller, None)
            attr.length = 0
        oi = self._open_inode(ino, self._read(lambda tx: self._attr(tx, ino)).length)
        return self._new_handle(oi, flags)

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
        oi = self._open_inode(ino, 0)
        return self._new_handle(oi, flags), ino, attr

    def write(self, fh: int, offset: int, data: bytes | memoryview) -> int:
        """Write at ``offset`` (at the end with ``O_APPEND``); returns the bytes written."""
        h = self._handle(fh)
        if not h.writable:
            raise fs_error(errno.EBADF)
        if offset < 0:
            raise fs_error(errno.EINVAL)
        if not data:
            return 0
        oi = h.inode
        view = memoryview(data).cast("B")
        with oi.lock:
            w = oi.writer
            if w is None:
                w = oi.writer = FileWriter(length=oi.length)
            if h.flags & os.O_APPEND:
                offset = w.length
            done = 0
            while done < len(view):
                pos = (offset + done) % CHUNK_SIZE
                indx = (offset + done) // CHUNK_SIZE
                n = min(len(view) - done, CHUNK_SIZE - pos)
                sw = w.slices.get(indx)
                if sw is None or not sw.accepts(pos):
                    if sw is not None:
                        self._publish(oi, {indx: sw.finish()})
                    sw = w.slices[indx] = SliceWriter(self.blocks, self._alloc("slice"), pos)
                sw.write(pos, view[done : done + n])
                if sw.end == CHUNK_SIZE:  # a full chunk: nothing more can join this slice
                    del w.slices[indx]
                    self._publish(oi, {indx: sw.finish()})
                done += n
            w.length = max(w.length, offset + len(view))
            w.mtime_ns = time.time_ns()
            w.dirty = True
        return len(view)

    def _publish(self, oi: OpenInode, records: dict[int, SliceRecord]) -> None:
        """Append finished slices' records (and the length they imply) to the metadata."""
        w = oi.writer
        fragmented = []
        with self._txn(write=True) as tx:
            attr = self._attr(tx, oi.ino)
            for indx, rec in records.items():
                count = tx.append_chunk(oi.ino, indx, rec.pack())
                tx.add_slice_ref(rec.id, rec.size, 1)
                if self._compactions is not None and self.compaction.wants(count):
                    fragmented.append(indx)
            end = max((i * CHUNK_SIZE + r.pos + r.len for i, r in records.items()), default=0)
            if w is not None and not w.slices:
                end = max(end, w.length)  # everything is published: the full length too
            if end > attr.length:
                self._account_length(tx, oi.ino, attr, end)
            if w is not None and w.mtime_ns:
                attr.mtime_ns = attr.ctime_ns = w.mtime_ns
            tx.set_attr(oi.ino, attr)
            oi.length = attr.length
        for indx, rec in records.items():  # committed: cached maps take the record as it is
            cm = oi.chunk_maps.get(indx)
            if cm is not None:
                cm.apply(rec)
        for indx in fragmented:
            self._compactions.request(oi.ino, indx)

    def compact_chunk(self, ino: int, indx: int) -> bool:
        """Rewrite chunk ``indx`` of file ``ino`` with fewer records (see
        :mod:`volume.engine.compaction`); whether it changed.

        The file reads the same bytes before, during and after. Concurrent writers are safe: the
        replacement is committed only if the records it was planned from are still the chunk's
        first records (records appended meanwhile are kept after it); otherwise nothing changes
        and the copied blocks stay unreferenced.
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
            writer = SliceWriter(self.blocks, new_id, 0)
            for piece in plan.copies:
                data = (
                    self.blocks.read(piece.id, piece.size, piece.off, piece.length, inode=ino)
                    if piece.id
                    else bytes(piece.length)
                )
                writer.write(writer.end, data)
            writer.finish()
        replacement = plan.records(new_id)
        with self._txn(write=True) as tx:
            current = tx.read_chunk(ino, indx)
            if not current.startswith(blob):
                return False  # truncated, deleted or rewritten meanwhile
            tx.write_chunk(
                ino, indx, b"".join(r.pack() for r in replacement) + current[len(blob) :]
            )
            refs: dict[tuple[int, int], int] = {}
            for sign, recs in ((-1, records), (1, replacement)):
                for r in recs:
                    if r.id:
                        refs[r.id, r.size] = refs.get((r.id, r.size), 0) + sign
            for (slice_id, size), delta in refs.items():
                if delta:
                    tx.add_slice_ref(slice_id, size, delta)
        oi = self._open.get(ino)
        if oi is not None:
            with oi.lock:
                oi.chunk_maps.pop(indx, None)
        log.debug("inode %d chunk %d: %d records -> %d", ino, indx, len(records), len(replacement))
        return True

    def _flush(self, oi: OpenInode) -> None:
        with oi.lock:
            w = oi.writer
            if w is None or not w.dirty:
                return
            records = {indx: sw.finish() for indx, sw in w.slices.items()}
            w.slices.clear()
            # an unlinked inode too: its open handles still read it (it goes at the last release)
            self._publish(oi, records)
            oi.writer = None

    def _flush_inode(self, ino: int) -> None:
        oi = self._open.get(ino)
        if oi is not None:
            self._flush(oi)

    def flush(self, fh: int) -> None:
        """Publish the handle's buffered writes (close(2) calls this)."""
        self._flush(self._handle(fh).inode)

    def fsync(self, fh: int) -> None:
        """Publish buffered writes and wait until their blocks are stored."""
        self.flush(fh)
        self.blocks.drain()

    def flush_all(self) -> None:
        """Publish the buffered writes of every open file (before a snapshot)."""
        with self._lock:
            open_inodes = list(self._open.values())
        for oi in open_inodes:
            self._flush(oi)

    def release(self, fh: int) -> None:
        """Close a handle; the last close of an unlinked inode deletes it."""
        with self._lock:
            h = self._handles.pop(fh, None)
            if h is None:
                raise fs_error(errno.EBADF)
            oi = h.inode
            self._flush(oi)
            oi.refs -= 1
            if oi.refs > 0:
                return
            del self._open[oi.ino]
            if oi.unlinked and not self.read_only:
                with self._txn(write=True) as tx:
                    attr = tx.get_attr(oi.ino)
                    if attr is not None and attr.nlink <= 0:
                        self._drop_inode(tx, oi.ino, attr)
                    tx.remove_sustained(self._session, oi.ino)

    def read(self, fh: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end of the file)."""
        h = self._handle(fh)
        if h.flags & os.O_ACCMODE == os.O_WRONLY:
            raise fs_error(errno.EBADF)
        if offset < 0:
            raise fs_error(errno.EINVAL)
        oi = h.inode
        with oi.lock:
            if oi.writer is not None and oi.writer.dirty:
                self._flush(oi)
            end = min(offset + size, oi.length)
            if offset >= end:
                return b""
            parts = list(self._pieces(oi, offset, end))
            sequential = offset == oi.seq_end
            oi.seq_end = end
        if sequential and self.readahead_bytes and self.blocks.prefetches:
            ahead_end = min(end + self.readahead_bytes, oi.length)
            with oi.lock:
                ahead = list(self._pieces(oi, end, ahead_end))
            for _, piece in ahead:
                if piece is not None and piece.id:
                    self.blocks.prefetch(piece.id, piece.size, piece.off, piece.length)
        if len(parts) == 1:
            length, piece = parts[0]
            if piece is not None and piece.id:
                return self.blocks.read(piece.id, piece.size, piece.off, length, inode=oi.ino)
            return bytes(length)
        out = bytearray(end - offset)
        pos = 0
        for length, piece in parts:
            if piece is not None and piece.id:
                out[pos : pos + length] = self.blocks.read(
                    piece.id, piece.size, piece.off, length, inode=oi.ino
                )
            pos += length
        return bytes(out)

    def _pieces(self, oi: OpenInode, start: int, end: int) -> Iterator[tuple[int, object]]:
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

    def _truncate(self, ino: int, size: int, caller: Caller, handle: int | None) -> None:
        """Set a file's length, hiding the cut (or grown) range behind id-0 records."""
        self._flush_inode(ino)
        with self._txn(write=True) as tx:
            attr = self._attr(tx, ino)
            if attr.type == TYPE_DIRECTORY:
                raise fs_error(errno.EISDIR)
            if attr.type != TYPE_FILE:
                raise fs_error(errno.EINVAL)
            if handle is None:
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
            tx.set_attr(ino, attr)
        oi = self._open.get(ino)
        if oi is not None:
            with oi.lock:
                oi.length = size
                oi.chunk_maps.clear()

    # ================================================================== lifecycle

    def drain(self, timeout: float | None = None) -> None:
        """Publish every buffered write, finish the compactions it asked for, and wait until
        every block is stored."""
        self.flush_all()
        if self._compactions is not None:
            self._compactions.wait()
        self.blocks.drain(timeout)

    def close(self, *, drain: bool = True) -> None:
        """Release the block store (the metadata store stays open).

        With ``drain`` (the default) buffered writes are published and every block is stored
        first; without it unpublished work is abandoned.
        """
        if self._closed:
            return
        try:
            if drain and not self.read_only:
                self.drain()
        finally:
            self._closed = True
            if self._compactions is not None:
                self._compactions.close(wait=drain)
            self.blocks.close(wait=drain)
