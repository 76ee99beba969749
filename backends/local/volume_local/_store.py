"""The ``file`` object store: objects are files below a local directory.

The layout is JuiceFS's ``file`` storage with ``Bucket=<root>/``: key ``k`` is the file
``<root>/k``, written through a temporary file ``.jfs.<basename>.tmp.<random>`` in the same
directory, so the JuiceFS client finds our objects and we find its. Staged objects are unnamed
files in that directory where the file system makes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from volume.errors import (
    InvalidKeyError,
    ObjectExists,
    ObjectNotFound,
    ObjectStoreError,
    VolumeError,
    VolumeValidationError,
)
from volume.keys import validate_key, validate_prefix, validate_range
from volume.stores import (
    ByteStream,
    ObjectInfo,
    ObjectStore,
    ObjectStoreCapabilities,
    StagedObject,
)

from ._ahead import COUNT, FilesAhead

# Temporary files (ours and a JuiceFS client's) are not objects: list() skips them and no key may
# take such a name.
_TEMP_NAME = re.compile(r"\.jfs\..*\.tmp\.\d+", re.DOTALL)
# JuiceFS cuts the basename inside a temporary name to 200 bytes, which keeps the temporary name
# under NAME_MAX (255 bytes) whenever the final name fits.
_TEMP_BASENAME_BYTES = 200
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# Linux names the file behind a descriptor here: one readlink tells where an open really landed.
_PROC_FD = "/proc/self/fd"
_HAVE_PROC_FD = os.path.isdir(_PROC_FD)
# O_NONBLOCK: opening a FIFO someone left below the root must not hang a read (it is then refused
# as "not a regular file"); it changes nothing for regular files.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_STAGE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL  # read back when sealing fails
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY  # a handle to resolve, not read
# A staged object is an unnamed file (O_TMPFILE) where the file system makes them, linked to its
# key through /proc when sealed: a writer killed mid-block leaves nothing behind.
_UNNAMED_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_RDWR
# what open(O_TMPFILE) fails with where the file system (EOPNOTSUPP) or kernel (EISDIR, EINVAL)
# makes no unnamed files: stage named temporary files instead
_NO_UNNAMED = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})
# what linking one through /proc fails with where /proc will not (ENOSPC and the like are not that)
_NO_PROC_LINK = frozenset({errno.ENOENT, errno.EXDEV, errno.EPERM, errno.EACCES, errno.ELOOP})


class StagedFile(StagedObject):
    """An object of :class:`LocalObjectStore` being written: an unnamed file in its key's
    directory (``tmp`` None), else a temporary file beside its key's (never listed, as every
    temporary file); linked to the key when sealed."""

    def __init__(self, store: LocalObjectStore, key: str, tmp: str | None, fd: int) -> None:
        self._store = store
        self._key = key  # the key it was staged for, to name in errors
        self._tmp = tmp
        self._fd: int | None = fd
        self._end = 0

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"the object staged for {self._key!r} was sealed or discarded")
        return self._fd

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` (no copy in the interpreter: ``pwrite(2)``)."""
        view = memoryview(data).cast("B")
        self._write_at(offset, len(view), lambda fd: _write_all(fd, view, offset))

    def write_stream(self, offset: int, data: ByteStream) -> None:
        """Write a stream's bytes at ``offset`` (straight from a pipe into the file, when the
        stream is one: ``splice(2)``)."""
        self._write_at(offset, len(data), lambda fd: data.write_into(fd, offset))

    def _write_at(self, offset: int, length: int, put: Callable[[int], object]) -> None:
        """``put(fd)`` the ``length`` bytes of a write at ``offset`` (which must leave no gap).
        OS errors are turned into store errors here, not by ``_os_errors``: a write request
        pays for every context manager it enters."""
        fd = self._open_fd()
        if not 0 <= offset <= self._end:
            raise ValueError(f"staged write at {offset} leaves a gap after byte {self._end}")
        try:
            put(fd)
        except VolumeError:
            raise
        except OSError as exc:
            raise self._store._failed("write", self._key, exc) from exc
        self._end = max(self._end, offset + length)

    def read(self, length: int) -> bytes:
        with self._store._os_errors("read", self._key):
            return _pread_exactly(self._open_fd(), min(length, self._end), 0)

    def seal(self, key: str, length: int) -> None:
        store = self._store
        fd = self._open_fd()
        path = store._path(key)
        if key.rpartition("/")[0] != self._key.rpartition("/")[0]:  # (path = root + key)
            raise InvalidKeyError(f"key {key!r} is not in the directory its object was staged in")
        if not 0 <= length <= self._end:
            raise ValueError(f"cannot seal {length} bytes of the {self._end} staged for {key!r}")
        with store._os_errors("write", key):
            if os.fstat(fd).st_size != length:  # bytes past it, e.g. of a write that failed
                os.ftruncate(fd, length)
            if store._fsync:
                os.fsync(fd)
            if self._tmp is None:
                store._link_unnamed(key, path, fd)
            else:
                store._install(key, path, self._tmp, if_absent=True)
            self._fd = None
            os.close(fd)

    def discard(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # an unnamed file goes with its last descriptor
            self._fd = None
            if self._tmp is not None:
                _remove_quietly(self._tmp)


class LocalObjectStore(ObjectStore):
    """Objects kept as files below a local directory (storage name ``file``).

    Puts are atomic (temporary file, then rename); put-if-absent publishes with ``link(2)``, which
    fails when the key exists, so of racing writers in any threads or processes exactly one wins.
    A key that would resolve outside the root through a symbolic link is refused. Needs a POSIX
    file system with hard links; backslashes in keys are ordinary file-name characters.
    """

    name = "file"
    capabilities = ObjectStoreCapabilities(
        conditional_put=True, range_reads=True, local=True, staging=True
    )
    #: what :meth:`stage` returns (a subclass may wrap the staged files' calls)
    staged_class: type[StagedFile] = StagedFile

    def __init__(
        self, root: str | os.PathLike[str], *, fsync: bool = False, files_ahead: int = COUNT
    ) -> None:
        """Use the directory ``root`` (made absolute, created when missing).

        ``fsync``: flush each object, and the directory entry naming it, to stable storage before
        ``put`` returns (slower; without it a machine crash may lose recent puts, never tear one).
        ``files_ahead``: unnamed files a background thread keeps ready in the directory of the
        last staged object, for the next ones (0: each is made when staged).
        """
        self._root = os.path.abspath(os.fspath(root))
        try:
            os.makedirs(self._root, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise VolumeValidationError(
                f"the file object store root {self._root!r} exists and is not a directory; "
                f"give a directory path"
            ) from None
        except OSError as exc:
            raise _with_errno(
                ObjectStoreError(
                    f"cannot create the file object store root {self._root!r}: {exc.strerror}"
                ),
                exc.errno,
            ) from exc
        self._prefix = self._root.rstrip("/") + "/"
        self._real_prefix = os.path.realpath(self._root).rstrip("/") + "/"
        self._fsync = fsync
        self._durable_dirs: set[str] = set()  # directories whose entry :meth:`sync` made durable
        #: whether :meth:`stage` makes unnamed files (until this file system turns out not to)
        self.stages_unnamed = bool(_UNNAMED_FLAGS & ~os.O_RDWR) and _HAVE_PROC_FD
        self._ahead = FilesAhead(self._make_unnamed, files_ahead)

    @classmethod
    def from_uri(
        cls, uri: str, *, region: str | None = None, **options: object
    ) -> "LocalObjectStore":
        """Open ``file:///abs/dir``, ``file://rel/dir`` or a plain directory path.

        Relative paths are resolved against the working directory. ``region`` is ignored. The one
        option is ``fsync`` (a bool, see :class:`LocalObjectStore`).
        """
        unknown = sorted(set(options) - {"fsync"})
        if unknown:
            raise VolumeValidationError(
                f"unknown option(s) {', '.join(unknown)} for the file object store; "
                f"the accepted option is fsync"
            )
        fsync = options.get("fsync", False)
        if not isinstance(fsync, bool):
            raise VolumeValidationError(
                f"the file object store option fsync={fsync!r} is not a bool"
            )
        return cls(_directory_of(uri), fsync=fsync)

    @property
    def uri(self) -> str:
        """``file://`` followed by the absolute root and a ``/`` (JuiceFS's Bucket form)."""
        return "file://" + self._prefix

    @property
    def root(self) -> Path:
        """The absolute root directory."""
        return Path(self._root)

    # ------------------------------------------------------------------ object operations

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object, read with one ``pread`` of just that range."""
        validate_range(start, end)
        path = self._path(key)
        with self._os_errors("read", key, missing=True):
            fd, size = self._open_object(key, path)
            try:
                stop = size if end is None else min(end, size)
                return _pread_exactly(fd, stop - start, start) if stop > start else b""
            finally:
                os.close(fd)

    def will_read(self, key: str) -> None:
        """Start reading the object's file into the page cache (``POSIX_FADV_WILLNEED``): a
        sequential reader then finds the next block there instead of waiting for the disk."""
        path = self._path(key)  # an invalid key is refused, as by every call
        try:
            fd, _ = self._open_object(key, path)  # a regular file below the root only
        except (OSError, VolumeError):
            return  # only a hint: a missing object fails when it is read
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def get_into(self, key: str, start: int, buffer: memoryview) -> int:
        """The object's bytes from ``start`` read straight into ``buffer`` (``preadv``, no copy
        through an intermediate ``bytes``); returns how many (fewer only at its end)."""
        validate_range(start, None)
        path = self._path(key)
        with self._os_errors("read", key, missing=True):
            fd, size = self._open_object(key, path)
            try:
                want = max(0, min(len(buffer), size - start))
                done = 0
                while done < want:  # Linux returns at most ~2 GiB per call
                    n = os.preadv(fd, [buffer[done:want]], start + done)
                    if not n:
                        break
                    done += n
                return done
            finally:
                os.close(fd)

    def open_file(self, key: str) -> tuple[int, int]:
        """``(fd, size)`` of the object's file, open for reading; the caller closes ``fd``."""
        path = self._path(key)
        with self._os_errors("read", key, missing=True):
            return self._open_object(key, path)

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False) -> None:
        """Write the object atomically (see :class:`LocalObjectStore`)."""
        view = memoryview(data).cast("B")
        self._publish(key, lambda tmp, fd: _write_all(fd, view), if_absent=if_absent)

    def head(self, key: str) -> ObjectInfo:
        """Size of the object."""
        path = self._path(key)
        with self._os_errors("inspect", key, missing=True):
            fd, size = self._open_object(key, path)
            os.close(fd)
        return ObjectInfo(key, size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose keys start with ``prefix``, sorted by key.

        Only the directory named by the part of ``prefix`` before its last ``/`` is walked.
        Directories, temporary files, symbolic links and other non-regular files are skipped.
        """
        validate_prefix(prefix)
        directory, _, partial = prefix.rpartition("/")
        start = self._prefix + directory if directory else self._root
        self._check_inside(prefix, os.path.realpath(start))
        return self._walk(start, directory + "/" if directory else "", partial)

    def delete(self, key: str) -> None:
        """Remove the object's file; a missing key is fine. Emptied directories stay (as in
        JuiceFS), so that a concurrent put never loses the directory it is writing into."""
        path = self._path(key)
        with self._os_errors("delete", key):
            self._check_inside(key, os.path.realpath(os.path.dirname(path)))
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                os.unlink(path)

    def sync(self, keys: Iterable[str] | None = None) -> None:
        """Flush the objects ``keys`` (stored earlier by ``put``) and the directory entries naming
        them to stable storage: what fsync(2) of a file in a mounted volume waits for. Missing
        keys are skipped (nothing of theirs to keep). ``None``: everything on the file system
        holding the root (``syncfs(2)``)."""
        if keys is None:
            _syncfs(self._root)
            return
        directories: set[str] = set()
        for key in keys:
            path = self._path(key)
            with self._os_errors("sync", key):
                try:
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            directories.add(os.path.dirname(path))
        # the directories up to the root too: one made for these objects must stay named. An
        # ancestor synced once stays named (directories are never removed), so it is skipped.
        ancestors = set()
        for directory in directories:
            while directory.startswith(self._prefix):
                directory = os.path.dirname(directory)
                if directory not in self._durable_dirs:
                    ancestors.add(directory)
        for directory in sorted(directories | ancestors, key=len, reverse=True):  # deepest first
            with self._os_errors("sync", directory[len(self._prefix) :]):
                _fsync_directory(directory)
        self._durable_dirs |= directories | ancestors

    def get_file(self, key: str, path: str | Path) -> int:
        """Copy the object into the file ``path`` (in the kernel where possible); the file
        appears whole or not at all. Returns its size."""
        source = self._path(key)
        dest = os.path.abspath(os.fspath(path))
        tmp = _temp_path_for(dest)
        with self._os_errors("download", key, missing=True):
            fd, size = self._open_object(key, source)  # refuses missing objects, escaping keys
            os.close(fd)
            try:
                shutil.copyfile(source, tmp)
                os.replace(tmp, dest)
            except BaseException:
                _remove_quietly(tmp)
                raise
        return size

    def put_file(self, key: str, path: str | Path, *, if_absent: bool = False) -> int:
        """Store a copy of the local file ``path`` (copied in the kernel where possible, never
        linked: later changes to the file must not change the object). Returns its size."""
        source = os.fspath(path)
        return self._publish(key, lambda tmp, fd: shutil.copyfile(source, tmp), if_absent=if_absent)

    def close(self) -> None:
        """Close the files made ahead for staging (staged objects stay usable)."""
        self._ahead.close()

    # ------------------------------------------------------------------ internals

    def _publish(
        self, key: str, fill: Callable[[str, int], object], *, if_absent: bool
    ) -> int:
        """Write a temporary file with ``fill(tmp_path, fd)`` and move it to ``key``; its size."""
        path = self._path(key)
        with self._os_errors("write", key):
            tmp, fd = self._create_temp(key, path)
            try:
                try:
                    fill(tmp, fd)
                    size = os.fstat(fd).st_size
                    if self._fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                self._install(key, path, tmp, if_absent=if_absent)
            except BaseException:
                _remove_quietly(tmp)
                raise
        return size

    def _install(self, key: str, path: str, tmp: str, *, if_absent: bool) -> None:
        """Give the complete temporary file ``tmp`` the name ``path`` of ``key``; with
        ``if_absent``, :class:`ObjectExists` (and ``tmp`` left) when the key exists."""
        if if_absent:
            # link(2) fails with EEXIST when the key exists: the one atomic test-and-set a POSIX
            # file system offers for a whole file, across threads and processes
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise self._exists(key) from None
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
        if self._fsync:
            _fsync_directory(os.path.dirname(path))

    def _link_unnamed(self, key: str, path: str, fd: int) -> None:
        """Give the unnamed file open as ``fd`` the name ``path`` of ``key``, as put-if-absent
        does (:class:`ObjectExists` when the key exists). linkat(2) follows /proc's link to the
        open file, into the key's directory opened and checked as :meth:`_create_temp` does."""
        directory = self._open_directory(key, path)
        try:
            os.link(f"{_PROC_FD}/{fd}", os.path.basename(path), dst_dir_fd=directory)
        except FileExistsError:
            raise self._exists(key) from None
        except OSError as exc:
            if exc.errno in _NO_PROC_LINK:  # stage named files from now on
                self.stages_unnamed = False
            raise
        finally:
            os.close(directory)
        if self._fsync:
            _fsync_directory(os.path.dirname(path))

    def _exists(self, key: str) -> ObjectExists:
        exists = ObjectExists(f"object {key!r} already exists in {self.uri}")
        return _with_errno(exists, errno.EEXIST)

    def stage(self, key: str) -> "StagedFile":
        """An unnamed file in ``key``'s directory (a temporary file beside ``key``'s where the
        file system makes no unnamed files), written in place and linked to its key when sealed
        (no reader or listing sees it before; once the process is gone, nothing is left of it
        when it was unnamed)."""
        path = self._path(key)
        with self._os_errors("write", key):
            if self.stages_unnamed:
                try:
                    fd = self._ahead.take(key, path)
                    if fd is None:
                        fd = self._make_unnamed(key, path)
                except OSError as exc:
                    if exc.errno not in _NO_UNNAMED:
                        raise
                    self.stages_unnamed = False
                else:
                    return self.staged_class(self, key, None, fd)
            tmp, fd = self._create_temp(key, path, flags=_STAGE_FLAGS)
        return self.staged_class(self, key, tmp, fd)

    def _make_unnamed(self, key: str, path: str) -> int:
        """An unnamed file open for reading and writing in the directory of ``path``."""
        directory = self._open_directory(key, path)
        try:
            return os.open(".", _UNNAMED_FLAGS, 0o666, dir_fd=directory)  # umasked, as JuiceFS's
        finally:
            os.close(directory)

    def _create_temp(self, key: str, path: str, flags: int = _TEMP_FLAGS) -> tuple[str, int]:
        """Create the temporary file for ``path`` (and its missing parents); ``(name, fd)``."""
        directory = self._open_directory(key, path)
        try:
            tmp = _temp_path_for(path)
            # the umask applies, as to JuiceFS's files
            fd = os.open(tmp.rpartition("/")[2], flags, 0o666, dir_fd=directory)
        finally:
            os.close(directory)
        return tmp, fd

    def _open_directory(self, key: str, path: str) -> int:
        """The directory of ``path``, made with its missing parents and opened (``O_PATH``) for
        creating files in with ``dir_fd``.

        No file or directory is ever made outside the root: the directory is opened once,
        checked by what that open resolved to, and files are created in that very directory,
        so a symbolic link swapped in between cannot redirect them."""
        parent = os.path.dirname(path)
        try:
            directory = os.open(parent, _DIR_FLAGS)
        except FileNotFoundError:
            self._check_inside(key, os.path.realpath(parent))  # before any directory is made
            os.makedirs(parent, 0o777, exist_ok=True)  # 0777 minus the umask, as JuiceFS's
            directory = os.open(parent, _DIR_FLAGS)
        try:
            self._check_inside(key, _resolved(directory, parent))
        except BaseException:
            os.close(directory)
            raise
        return directory

    def _path(self, key: str) -> str:
        """The file of ``key``; :class:`InvalidKeyError` for keys this store cannot hold."""
        validate_key(key)
        if _TEMP_NAME.fullmatch(key.rpartition("/")[2]):
            raise InvalidKeyError(
                f"invalid object key {key!r}: its last segment has the form of a temporary file "
                f"(.jfs.<name>.tmp.<number>), which the file object store never lists"
            )
        return self._prefix + key

    def _open_object(self, key: str, path: str) -> tuple[int, int]:
        """``(fd, size)`` of ``key``'s file ``path``, open for reading; the caller closes ``fd``."""
        fd = os.open(path, _READ_FLAGS)
        try:
            self._check_inside(key, _resolved(fd, path))
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):  # e.g. the directory holding keys "<key>/..."
                raise self._not_found(key)
        except BaseException:
            os.close(fd)
            raise
        return fd, info.st_size

    def _walk(self, directory: str, key_prefix: str, partial: str = "") -> Iterator[ObjectInfo]:
        """Objects below ``directory``, whose keys start with ``key_prefix``, sorted by key; at
        this level only entries whose names start with ``partial``."""
        with self._os_errors("list", key_prefix + partial):
            try:
                with os.scandir(directory) as scan:
                    entries = [entry for entry in scan if entry.name.startswith(partial)]
            except (FileNotFoundError, NotADirectoryError):
                return  # nothing is stored below this prefix
            # a directory sorts as "<name>/", so that the walk yields keys in key order
            # ("a.txt" < "a/x" although "a" < "a.txt")
            entries.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
            for entry in entries:
                if not _is_utf8(entry.name):
                    continue  # undecodable bytes: no key names this file or anything below it
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(entry.path, f"{key_prefix}{entry.name}/")
                elif entry.is_file(follow_symlinks=False) and not _TEMP_NAME.fullmatch(entry.name):
                    try:
                        size = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # deleted while we list
                    yield ObjectInfo(key_prefix + entry.name, size)

    def _check_inside(self, name: str, real_path: str) -> None:
        """Refuse ``name`` when its resolved path ``real_path`` is not the root or below it."""
        if not (real_path + "/").startswith(self._real_prefix):
            raise InvalidKeyError(
                f"{name!r} resolves to {real_path!r}, outside the store root {self._root!r}, "
                f"through a symbolic link; keys must stay below the root"
            )

    def _not_found(self, key: str) -> ObjectNotFound:
        return _with_errno(ObjectNotFound(f"no object {key!r} in {self.uri}"), errno.ENOENT)

    @contextlib.contextmanager
    def _os_errors(self, action: str, key: str, *, missing: bool = False) -> Iterator[None]:
        """Turn OS errors into store errors naming the key (keeping errno). With ``missing``, a
        path that does not exist means the object does not."""
        try:
            yield
        except VolumeError:
            raise
        except (FileNotFoundError, NotADirectoryError) as exc:
            if missing:
                raise self._not_found(key) from None
            raise self._failed(action, key, exc) from exc
        except OSError as exc:
            raise self._failed(action, key, exc) from exc

    def _failed(self, action: str, key: str, exc: OSError) -> ObjectStoreError:
        return _with_errno(
            ObjectStoreError(f"cannot {action} {key!r} in {self.uri}: {exc.strerror or exc}"),
            exc.errno,
        )


_E = TypeVar("_E", bound=ObjectStoreError)


def _with_errno(exc: _E, code: int | None) -> _E:
    """``exc`` carrying ``code`` as its errno. Our error classes put RuntimeError before OSError in
    their MRO, so ``OSError(errno, message)`` argument parsing does not happen for them."""
    exc.errno = code
    return exc


def _directory_of(uri: str) -> str:
    """The directory a ``file://`` URI or plain path names (not yet made absolute)."""
    if not isinstance(uri, str) or not uri.strip():
        raise VolumeValidationError(
            f"file object store URI {uri!r} is empty; give file:///abs/dir or a directory path"
        )
    if "\0" in uri:
        raise VolumeValidationError(f"file object store URI {uri!r} contains a NUL character")
    scheme = _SCHEME.match(uri)
    if scheme is None:
        return uri
    if scheme.group(1).lower() != "file":
        raise VolumeValidationError(
            f"{uri!r} is not a file URI; the file object store takes file:///abs/dir or a plain "
            f"directory path"
        )
    directory = uri[scheme.end() :]
    if not directory:
        raise VolumeValidationError(f"file URI {uri!r} names no directory; write file:///abs/dir")
    return directory


def _resolved(fd: int, path: str) -> str:
    """Where the open ``fd`` (opened by ``path``) really is: what the kernel resolved, where
    ``/proc`` tells it, else ``path`` resolved again."""
    return os.readlink(f"{_PROC_FD}/{fd}") if _HAVE_PROC_FD else os.path.realpath(path)


def _temp_path_for(path: str) -> str:
    """A fresh temporary name beside ``path``, in JuiceFS's form."""
    directory, _, basename = path.rpartition("/")
    short = basename.encode("utf-8")[:_TEMP_BASENAME_BYTES].decode("utf-8", "ignore")
    return f"{directory}/.jfs.{short}.tmp.{secrets.randbits(63)}"


def _is_utf8(name: str) -> bool:
    """Whether a file name is text a key can hold (not undecodable bytes)."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _pread_exactly(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset`` (fewer only at the end of the file)."""
    data = os.pread(fd, size, offset)
    if len(data) == size:
        return data  # the usual case: one system call
    # Linux returns at most ~2 GiB per call
    parts = [data]
    done = len(data)
    while done < size:
        chunk = os.pread(fd, size - done, offset + done)
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


def _write_all(fd: int, view: memoryview, offset: int | None = None) -> None:
    """Write all of ``view`` at the file position, or at ``offset`` (``pwrite``)."""
    written = 0
    while written < len(view):  # a write may be partial (Linux caps one at ~2 GiB)
        rest = view[written:]
        written += os.write(fd, rest) if offset is None else os.pwrite(fd, rest, offset + written)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _syncfs(path: str) -> None:
    """``syncfs(2)`` of the file system holding ``path`` (``sync(2)`` where libc lacks it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    syncfs = getattr(libc, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
