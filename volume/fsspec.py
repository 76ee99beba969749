"""An fsspec file system over a volume, registered as the ``volume`` protocol.

Two ways to get one: over a mounted volume (``vol.fs``), or straight from a committed version by
its locator, with no kernel mount and no meta dir (the index is read from a temporary copy)::

    fs = fsspec.filesystem("volume", locator="s3://bucket/vol/_volume/versions/.../volume.json")
    pandas.read_csv("volume:///data/table.csv", storage_options={"locator": locator})


:class:`VolumeFileSystem` drives a :class:`~volume.engine.PathFS` directly, so reads and writes go
through the engine's descriptors without a kernel mount and without holding whole files in memory::

    fs = VolumeFileSystem(pathfs)                       # or fsspec.filesystem("volume", pathfs=...)
    fs.pipe_file("/docs/readme.txt", b"hello")
    with fs.open("/docs/readme.txt") as f:
        f.read()

Paths are volume-absolute (``/a/b``); ``volume://a/b`` and ``a/b`` name the same file. Symbolic
links are listed as themselves (``islink``, ``destination``): a link to a regular file reads as that
file (type ``"file"``, the target's size) and any other link has type ``"other"``, so ``walk``,
``find`` and ``rm(recursive=True)`` never leave the tree through a link nor loop on one.

Errors are the ``OSError`` subclasses Linux gives (``FileNotFoundError``, ``IsADirectoryError``,
...), naming the caller's path. On a read-only volume every write raises
:class:`~volume.errors.VolumeReadOnly` (a ``PermissionError``) before anything changes.

Instances wrap a live engine, so fsspec does not cache them; one opened over a mounted volume does
not pickle, one opened by locator pickles as its locator (dask sends it to workers that way).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import io
import os
import posixpath
import shutil
import stat
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from fsspec import AbstractFileSystem
from fsspec.utils import stringify_path

from . import keys
from .engine import PathFS, StatResult
from .engine.posix import fs_error
from .errors import (
    ObjectNotFound,
    VolumeError,
    VolumeNoIndex,
    VolumeReadOnly,
    VolumeUsageError,
    VolumeValidationError,
)

if TYPE_CHECKING:
    from .model import ROVolume
    from .stores import MetaStore, ObjectStore

__all__ = [
    "VolumeFileSystem",
    "VolumeRawFile",
    "load_version",
    "open_index",
    "open_version",
]

# what the first letter of an fsspec/``open`` mode asks of the file, before "+" adds the other way
_MODE_FLAGS = {
    "r": os.O_RDONLY,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
}


def _open_flags(mode: str) -> int:
    """``os.open`` flags of a binary mode such as ``"rb"``, ``"ab"`` or ``"r+b"``."""
    kinds = [c for c in mode if c in _MODE_FLAGS]
    repeated = len(set(mode)) != len(mode)
    if len(kinds) != 1 or "b" not in mode or set(mode) - set("rwaxb+") or repeated:
        raise ValueError(f"invalid mode {mode!r}: expected r, w, a or x, optionally +, and b")
    flags = _MODE_FLAGS[kinds[0]]
    if "+" in mode:
        flags = flags & ~os.O_ACCMODE | os.O_RDWR
    return flags


def _entry_type(st_mode: int) -> str:
    if stat.S_ISDIR(st_mode):
        return "directory"
    return "file" if stat.S_ISREG(st_mode) else "other"


class VolumeRawFile(io.RawIOBase):
    """Unbuffered reads and writes through one PathFS descriptor, which it owns and closes.

    :meth:`VolumeFileSystem._open` wraps it in ``io.BufferedReader``/``BufferedWriter``/
    ``BufferedRandom``, which is what callers see.
    """

    def __init__(self, pathfs: PathFS, fd: int, name: str, mode: str, chunk_bytes: int):
        super().__init__()
        self._pathfs = pathfs
        self._fd = fd
        self._flags = _open_flags(mode)
        self._chunk_bytes = chunk_bytes
        self.name = name
        self.mode = mode

    def _descriptor(self) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return self._fd

    def readable(self) -> bool:
        """Whether the mode allows reading."""
        self._descriptor()
        return self._flags & os.O_ACCMODE != os.O_WRONLY

    def writable(self) -> bool:
        """Whether the mode allows writing."""
        self._descriptor()
        return self._flags & os.O_ACCMODE != os.O_RDONLY

    def seekable(self) -> bool:
        """Always true: volume files support random access."""
        self._descriptor()
        return True

    def readinto(self, buffer: Any) -> int:
        """Read up to ``len(buffer)`` bytes at the current position into ``buffer``."""
        with memoryview(buffer) as view, view.cast("B") as target:
            data = self._pathfs.read(self._descriptor(), len(target))
            target[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        """The rest of the file, read in large pieces (``RawIOBase`` would use 8 KiB ones)."""
        fd = self._descriptor()
        chunks = []
        while chunk := self._pathfs.read(fd, self._chunk_bytes):
            chunks.append(chunk)
        return b"".join(chunks)

    def write(self, buffer: Any) -> int:
        """Write ``buffer`` at the current position (at the end in append mode)."""
        return self._pathfs.write(self._descriptor(), memoryview(buffer).cast("B"))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position, as ``os.lseek``; returns the new position."""
        return self._pathfs.lseek(self._descriptor(), offset, whence)

    def tell(self) -> int:
        """The current position."""
        return self.seek(0, io.SEEK_CUR)

    def truncate(self, size: int | None = None) -> int:
        """Cut or extend the file to ``size`` bytes (the current position by default)."""
        if size is None:
            size = self.tell()
        self._pathfs.ftruncate(self._descriptor(), size)
        return size

    def close(self) -> None:
        """Close the descriptor; the engine records buffered writes here."""
        if self.closed:
            return
        try:
            super().close()
        finally:
            self._pathfs.close(self._fd)


class VolumeFileSystem(AbstractFileSystem):
    """fsspec's interface to a mounted volume (protocol ``volume``).

    ``read_only`` defaults to the engine's flag; ``auto_mkdir`` makes writes create missing parent
    directories, as fsspec's local file system does with the same option. Other storage options go
    to :class:`fsspec.AbstractFileSystem`.
    """

    protocol = "volume"
    root_marker = "/"
    # instances wrap live engines: fsspec's instance cache must never hand back one whose engine
    # has since been closed, or another volume's
    cachable = False

    def __init__(
        self,
        pathfs: PathFS | None = None,
        *,
        locator: str | None = None,
        read_only: bool | None = None,
        auto_mkdir: bool = False,
        **storage_options: Any,
    ):
        super().__init__(**storage_options)
        if (pathfs is None) == (locator is None):
            raise VolumeUsageError(
                "give VolumeFileSystem either a mounted volume's pathfs or locator=<version URI>"
            )
        if pathfs is None:
            pathfs = open_version(load_version(str(locator)))
            read_only = True
        self.locator = locator
        self.pathfs = pathfs
        self.read_only = pathfs.engine.read_only if read_only is None else read_only
        self.auto_mkdir = auto_mkdir

    # ------------------------------------------------------------------ paths and errors

    @classmethod
    def _strip_protocol(cls, path: str | os.PathLike[str]) -> str:
        """``volume://a/b/``, ``/a/b`` and ``a/b`` all become ``/a/b``; the root is ``/``."""
        path = stringify_path(path)
        for prefix in (f"{cls.protocol}://", f"{cls.protocol}::"):
            if path.startswith(prefix):
                path = path[len(prefix) :]
                break
        return "/" + "/".join(part for part in path.split("/") if part)

    @staticmethod
    def _read_only_error(action: str, path: str) -> VolumeReadOnly:
        return VolumeReadOnly(
            f"cannot {action} {path}: the volume is mounted read-only; for a writable copy, fork "
            f"the version (ROVolume.fork(name)) and mount the fork"
        )

    @contextlib.contextmanager
    def _operation(
        self, path: str, path2: str | None = None, *, writes: str | None = None
    ) -> Iterator[None]:
        """Run the PathFS calls of one fsspec call on ``path`` (and ``path2``).

        ``writes`` names the change for the read-only refusal, made before anything is touched.
        """
        what = path if path2 is None else f"{path} to {path2}"
        if writes is not None and self.read_only:
            raise self._read_only_error(writes, what)
        try:
            yield
        except VolumeError:
            raise
        except OSError as exc:
            if exc.errno == errno.EROFS:  # the engine is read-only though this instance was not
                raise self._read_only_error(writes or "write to", what) from exc
            # the engine names only the failing component ("b" of "/a/b"); os calls name the path
            # the caller gave, and so do we unless an inner call already did
            if exc.errno is not None and not str(exc.filename or "").startswith("/"):
                exc.filename = path
                if path2 is not None:  # None would still print as "-> None"
                    exc.filename2 = path2
            raise

    def _make_parent(self, path: str) -> None:
        """Create the missing parents of ``path`` when the instance was made with ``auto_mkdir``."""
        parent = self._parent(path)
        if self.auto_mkdir and parent != self.root_marker:
            self.pathfs.makedirs(parent, exist_ok=True)

    def _open_descriptor(self, path: str, flags: int) -> int:
        """A PathFS descriptor on a file (directories are refused even for reading)."""
        if flags & os.O_CREAT:
            self._make_parent(path)
        fd = self.pathfs.open(path, flags)
        # the engine opens directories read-only, as open(2) does, but reads give no entries
        if stat.S_ISDIR(self.pathfs.fstat(fd).st_mode):
            self.pathfs.close(fd)
            raise fs_error(errno.EISDIR, path)
        return fd

    @contextlib.contextmanager
    def _descriptor(self, path: str, flags: int) -> Iterator[int]:
        """:meth:`_open_descriptor`, closed on exit."""
        fd = self._open_descriptor(path, flags)
        try:
            yield fd
        finally:
            self.pathfs.close(fd)

    def _write_all(self, fd: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += self.pathfs.write(fd, view[done : done + self.blocksize])

    # ------------------------------------------------------------------ metadata

    def _entry(self, path: str, st: StatResult) -> dict[str, Any]:
        """The fsspec info dict of ``path`` from its ``lstat``."""
        link = stat.S_ISLNK(st.st_mode)
        entry: dict[str, Any] = {
            "name": path,
            "size": st.st_size,
            "type": _entry_type(st.st_mode),
            "islink": link,
            "mode": st.st_mode,
            "nlink": st.st_nlink,
            "uid": st.st_uid,
            "gid": st.st_gid,
            "ino": st.st_ino,
            "mtime": st.st_mtime,
            # JuiceFS records no birth time; like fsspec's local file system on Linux, "created"
            # is the inode change time
            "created": st.st_ctime,
        }
        if link:
            entry["destination"] = self.pathfs.readlink(path)
            try:
                target = self.pathfs.stat(path)
            except OSError:
                pass  # dangling or looping: the link stays "other"
            else:
                if stat.S_ISREG(target.st_mode):
                    entry.update(type="file", size=target.st_size)
        return entry

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[dict[str, Any]] | list[str]:
        """Entries of a directory (the entry itself for anything else), in name order.

        Details come from one metadata pass; ``kwargs`` (such as ``refresh``) are accepted for
        fsspec compatibility: there is no listings cache to refresh.
        """
        path = self._strip_protocol(path)
        with self._operation(path):
            st = self.pathfs.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                return [self._entry(path, st)] if detail else [path]
            prefix = path if path == self.root_marker else path + "/"
            if not detail:
                return [prefix + name for name in self.pathfs.listdir(path)]
            return [
                self._entry(prefix + name, entry_st)
                for name, _ino, entry_st in self.pathfs.scandir(path)
            ]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """Details of one entry, as :meth:`ls` gives them (links are not followed)."""
        path = self._strip_protocol(path)
        with self._operation(path):
            return self._entry(path, self.pathfs.lstat(path))

    def exists(self, path: str, **kwargs: Any) -> bool:
        """Whether ``path`` names an entry (a dangling link too: :meth:`ls` lists it)."""
        try:
            self.info(path)
        except OSError:
            return False
        return True

    lexists = exists

    def islink(self, path: str) -> bool:
        """Whether ``path`` is a symbolic link."""
        try:
            return self.info(path)["islink"]
        except OSError:
            return False

    def created(self, path: str) -> datetime.datetime:
        """The inode change time (the format records no creation time), in UTC."""
        return datetime.datetime.fromtimestamp(self.info(path)["created"], datetime.timezone.utc)

    def modified(self, path: str) -> datetime.datetime:
        """The modification time, in UTC."""
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], datetime.timezone.utc)

    # ------------------------------------------------------------------ namespace changes

    def mkdir(self, path: str, create_parents: bool = True, mode: int = 0o777) -> None:
        """Create a directory (FileExistsError if anything is there), with missing parents."""
        path = self._strip_protocol(path)
        with self._operation(path, writes="create directory"):
            if path == self.root_marker:
                raise fs_error(errno.EEXIST, path)
            if create_parents:
                self.pathfs.makedirs(path, mode)  # the parents may exist, the leaf may not
            else:
                self.pathfs.mkdir(path, mode)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Create a directory and its missing parents."""
        path = self._strip_protocol(path)
        with self._operation(path, writes="create directory"):
            if path != self.root_marker:
                self.pathfs.makedirs(path, exist_ok=exist_ok)
            elif not exist_ok:
                raise fs_error(errno.EEXIST, path)

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        path = self._strip_protocol(path)
        with self._operation(path, writes="remove directory"):
            self.pathfs.rmdir(path)

    def rm_file(self, path: str) -> None:
        """Remove a file, link or other non-directory."""
        path = self._strip_protocol(path)
        with self._operation(path, writes="remove"):
            self.pathfs.unlink(path)

    _rm = rm_file  # fsspec's former name for rm_file

    def rm(
        self, path: str | list[str], recursive: bool = False, maxdepth: int | None = None
    ) -> None:
        """Remove files (globs allowed), and directories with their contents when ``recursive``.

        Without ``recursive`` a directory is refused with IsADirectoryError, like ``rm``.
        """
        if self.read_only:
            raise self._read_only_error("remove", str(path))
        # sorted paths list every directory before its contents: reversed, contents go first
        for p in reversed(self.expand_path(path, recursive=recursive, maxdepth=maxdepth)):
            with self._operation(p, writes="remove"):
                if not stat.S_ISDIR(self.pathfs.lstat(p).st_mode):
                    self.pathfs.unlink(p)
                elif recursive:
                    self.pathfs.rmdir(p)
                else:
                    raise IsADirectoryError(
                        errno.EISDIR, "Is a directory; pass recursive=True to remove it", p
                    )

    def mv(
        self,
        path1: str,
        path2: str,
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Rename within the volume; into ``path2`` when it is an existing directory.

        A rename moves whole trees at once, so ``recursive`` and ``maxdepth`` change nothing.
        """
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if src == dst:
            return
        with self._operation(src, dst, writes="move"):
            if self.isdir(dst):
                dst = posixpath.join(dst, posixpath.basename(src))
            else:
                self._make_parent(dst)
            self.pathfs.rename(src, dst)

    # ------------------------------------------------------------------ data

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Copy one entry within the volume.

        A file's bytes are streamed through the volume; a directory is created (``copy`` with
        ``recursive=True`` then copies its entries); a link that does not read as a file is
        recreated as a link to the same destination.
        """
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        with self._operation(src, dst, writes="copy"):
            source = self.info(src)
            if source["type"] == "directory":
                self.makedirs(dst, exist_ok=True)
            elif source["type"] == "file":
                self._copy_bytes(src, dst)
            elif source["islink"]:
                self._make_parent(dst)
                self.pathfs.symlink(source["destination"], dst)
            else:
                raise OSError(errno.ENOTSUP, "cannot copy a fifo, socket or device node", src)

    def _copy_bytes(self, src: str, dst: str) -> None:
        with self._descriptor(src, os.O_RDONLY) as source:
            try:
                same = self.pathfs.stat(dst).st_ino == self.pathfs.fstat(source).st_ino
            except FileNotFoundError:
                same = False
            if same:  # truncating the target would destroy the source
                raise OSError(errno.EINVAL, "source and destination are the same file", dst)
            with self._descriptor(dst, _open_flags("wb")) as target:
                while chunk := self.pathfs.read(source, self.blocksize):
                    self._write_all(target, chunk)

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """Bytes ``[start:end)`` of a file (negative values count from the end), reading no more."""
        path = self._strip_protocol(path)
        with self._operation(path), self._descriptor(path, os.O_RDONLY) as fd:
            lo, hi, _ = slice(start, end).indices(self.pathfs.fstat(fd).st_size)
            chunks = []
            while lo < hi and (chunk := self.pathfs.read(fd, min(hi - lo, self.blocksize), lo)):
                chunks.append(chunk)
                lo += len(chunk)
            return b"".join(chunks)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        """Set a file's bytes; ``mode="create"`` refuses an existing file (FileExistsError)."""
        if mode not in ("overwrite", "create"):
            raise ValueError(f"invalid mode {mode!r}: expected 'overwrite' or 'create'")
        path = self._strip_protocol(path)
        flags = _open_flags("xb" if mode == "create" else "wb")
        with self._operation(path, writes="write"), self._descriptor(path, flags) as fd:
            self._write_all(fd, value)

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        """Create an empty file, or empty an existing one; ``truncate=False`` only updates times."""
        path = self._strip_protocol(path)
        with self._operation(path, writes="touch"):
            if not truncate and self.pathfs.exists(path):
                self.pathfs.utime(path)
                return
            with self._descriptor(path, _open_flags("wb")):
                pass

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict | None = None,
        **kwargs: Any,
    ) -> io.BufferedIOBase:
        """A buffered binary file reading and writing through a volume descriptor.

        ``block_size`` is the buffer size (4 MiB by default); ``cache_options`` are ignored because
        the engine caches blocks itself. Writes are visible to every reader of the volume at once,
        so fsspec transactions (``autocommit=False``) are not supported.
        """
        path = self._strip_protocol(path)
        flags = _open_flags(mode)
        writing = flags & os.O_ACCMODE != os.O_RDONLY
        if writing and not autocommit:
            raise NotImplementedError(
                "volume writes cannot be deferred to a transaction; write without one"
            )
        buffer_bytes = block_size or self.blocksize
        with self._operation(path, writes="write" if writing else None):
            fd = self._open_descriptor(path, flags)
        raw = VolumeRawFile(self.pathfs, fd, path, mode, buffer_bytes)  # owns the descriptor now
        if flags & os.O_APPEND:
            raw.seek(0, io.SEEK_END)  # tell() starts at the end, as with the builtin open()
        if "+" in mode:
            return io.BufferedRandom(raw, buffer_bytes)
        if writing:
            return io.BufferedWriter(raw, buffer_bytes)
        return io.BufferedReader(raw, buffer_bytes)


# --------------------------------------------------------------------------- versions by locator

_VERSIONS_MARK = keys.versions_prefix("")  # "/_volume/versions/", after the family name


def _split_locator(uri: str) -> tuple[str, str]:
    """``(bucket root URI, key)`` of a version document URI in the bucket layout."""
    head, sep, tail = uri.rpartition(_VERSIONS_MARK)
    root, slash, family = head.rpartition("/")
    if not sep or not slash or not family or "/" not in tail:
        raise VolumeValidationError(
            f"{uri!r} is not a version locator: expected <bucket>/<family>/_volume/versions/"
            f"<version>/volume.json, or a path to a version document"
        )
    return root, f"{family}{_VERSIONS_MARK}{tail}"


def _document_bytes(ref: str) -> bytes:
    from .locations import object_store
    from .model import Volume

    local = ref[len("file://") :] if ref.startswith("file://") else ref
    if "://" not in local:
        if Path(local).is_dir() and (Path(local) / "volume.json").is_file():
            local = str(Path(local) / "volume.json")  # a version's directory
        try:
            return Path(local).read_bytes()
        except FileNotFoundError:
            raise VolumeUsageError(f"no version document at {ref!r}: the file does not exist")
        except OSError as exc:
            raise VolumeUsageError(f"cannot read the version document {ref!r}: {exc.strerror}")
    root, key = _split_locator(ref)
    objects = object_store(Volume.parse({"name": "locator", "bucket": root}))
    try:
        return objects.get(key)
    except ObjectNotFound:
        raise VolumeUsageError(f"no version document at {ref!r}: the object does not exist")
    finally:
        objects.close()


def load_version(ref: str | os.PathLike[str]) -> "ROVolume":
    """The committed version named by its locator URI or by a path to its version document.

    Raises :class:`~volume.errors.VolumeUsageError` when nothing is there or it is not a
    version document, :class:`~volume.errors.VolumeNoIndex` when it was never committed.
    """
    from .model import ROVolume

    ref = os.fspath(ref)
    data = _document_bytes(ref)
    try:
        version = ROVolume.parse(data)
    except VolumeValidationError:
        raise VolumeUsageError(
            f"{ref!r} is not a version document (flyte.volume/v1 JSON); pass a version's "
            f"locator (its produced_by.locator) or the path of its volume.json"
        ) from None
    if version.index is None:
        raise VolumeNoIndex(f"{ref!r} names volume {version.name!r}, which was never committed")
    return version


@contextlib.contextmanager
def open_index(version: "ROVolume") -> Iterator[tuple["MetaStore", "ObjectStore"]]:
    """The version's committed index, opened read-only from a temporary copy, and its store.

    Nothing is written anywhere but a temporary directory, removed on exit.
    """
    store_cls, objects, tmp = _stage(version)
    try:
        meta = store_cls.open(tmp / "meta", read_only=True)
    except BaseException:
        objects.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        yield meta, objects
    finally:
        meta.close()
        objects.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _stage(version: "ROVolume") -> tuple[Any, "ObjectStore", Path]:
    from . import plugins
    from .locations import object_store, restore_index

    index = version.index
    if index is None:
        raise VolumeNoIndex(f"volume {version.name!r} was never committed: it has no index")
    store_cls = plugins.meta_store_class(index.format or version.metadata_store_type or "sqlite")
    objects = object_store(version)
    tmp = Path(tempfile.mkdtemp(prefix="volume-read-"))
    try:
        restore_index(version, objects, store_cls, tmp / "meta")  # every index form a mount reads
    except BaseException:
        objects.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return store_cls, objects, tmp


def _release(engine: Any, meta: Any, objects: Any, tmp: Path) -> None:
    try:
        engine.close(drain=False)
    finally:
        meta.close()
        objects.close()
        shutil.rmtree(tmp, ignore_errors=True)


def open_version(version: "ROVolume") -> PathFS:
    """A read-only :class:`PathFS` over a committed version, without a mount or meta dir.

    The engine, its stores and the temporary index copy are released when the returned object
    (and every file opened through it) is garbage collected, or by ``pathfs.release()``.
    """
    from .engine import Engine

    store_cls, objects, tmp = _stage(version)
    meta = engine = None
    try:
        meta = store_cls.open(tmp / "meta", read_only=True)
        engine = Engine(meta, objects, read_only=True)
    except BaseException:
        if meta is not None:
            meta.close()
        objects.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pathfs = PathFS(engine)
    pathfs.release = weakref.finalize(pathfs, _release, engine, meta, objects, tmp)  # type: ignore[attr-defined]
    return pathfs
