"""A differential hypothesis state machine for file systems.

:class:`FSMachine` runs random sequences of namespace and data operations on a SUBJECT and on an
ORACLE (plain ``os`` calls on a real temporary directory, :class:`OsDir`) and compares every
outcome (the same return value, or the same errno) and, after every step, the whole trees. Both
sides implement :class:`FSAdapter`: ``os``-shaped calls whose paths are absolute *within* the side
(``"/a/b"``). :class:`~volume.engine.PathFS` is such an adapter, and so is :class:`OsDir` on a
mount point, which is how the FUSE tests reuse the machine.

Subclass and fill in the subject::

    class MyStoreMachine(EngineMachine):
        def open_stores(self, workdir):
            return MyMetaStore.open(f"{workdir}/meta"), MemoryObjectStore(f"m-{id(self)}")

    TestMyStore = MyStoreMachine.TestCase

The subject is driven as the same caller as the oracle (this process's uid, gid and groups).
As root, permission checks pass on both sides; as another user the modes the machine sets always
keep the owner's permissions.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import itertools
import os
import random
import shutil
import stat
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, TypeVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ..engine import CompactionPolicy, Engine, PathFS, format_volume, new_format
from ..engine.compaction import DEFAULT_COMPACTION
from ..engine.check import check_metadata
from ..engine.posix import Caller
from ..juicefs import ROOT_INODE
from ..stores import MetaStore, ObjectStore

__all__ = ["EngineMachine", "FSAdapter", "FSMachine", "OracleFeatures", "OsDir", "probe_features"]

T = TypeVar("T")

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100
CHUNK = 64 << 20  # JuiceFS chunk size: offsets around it cross chunk rows
READ_PIECE = 4 << 20
ZERO_PIECE = bytes(READ_PIECE)

# ---------------------------------------------------------------------------- the adapter protocol


class FSAdapter(Protocol):
    """The ``os``-shaped calls the machine drives; paths are ``/``-absolute within the side.

    Errors are ``OSError`` with Linux errnos. ``stat``-like results need ``st_mode``, ``st_nlink``,
    ``st_size`` and ``st_ino``.
    """

    def stat(self, path: str) -> Any: ...
    def lstat(self, path: str) -> Any: ...
    def listdir(self, path: str) -> list[str]: ...
    def mkdir(self, path: str, mode: int = 0o777) -> None: ...
    def rmdir(self, path: str) -> None: ...
    def unlink(self, path: str) -> None: ...
    def rename(self, src: str, dst: str, flags: int = 0) -> None: ...
    def link(self, src: str, dst: str) -> None: ...
    def symlink(self, target: str, path: str) -> None: ...
    def readlink(self, path: str) -> str: ...
    def mkfifo(self, path: str, mode: int = 0o666) -> None: ...
    def chmod(self, path: str, mode: int) -> None: ...
    def truncate(self, path: str, length: int) -> None: ...
    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None: ...
    def getxattr(self, path: str, name: str) -> bytes: ...
    def listxattr(self, path: str) -> list[str]: ...
    def removexattr(self, path: str, name: str) -> None: ...
    def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o666) -> int: ...
    def read(self, fd: int, size: int, offset: int | None = None) -> bytes: ...
    def write(self, fd: int, data: bytes, offset: int | None = None) -> int: ...
    def lseek(self, fd: int, pos: int, how: int = os.SEEK_SET) -> int: ...
    def ftruncate(self, fd: int, length: int) -> None: ...
    def fstat(self, fd: int) -> Any: ...
    def fsync(self, fd: int) -> None: ...
    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None: ...
    def copy_file_range(
        self, src: int, dst: int, count: int, offset_src: int | None = None,
        offset_dst: int | None = None,
    ) -> int: ...  # fmt: skip
    def close(self, fd: int) -> None: ...


# ---------------------------------------------------------------------------- the oracle

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2_fn = getattr(_libc, "renameat2", None)


def renameat2(src: str, dst: str, flags: int) -> None:
    """``renameat2(AT_FDCWD, src, AT_FDCWD, dst, flags)``; ENOSYS when libc lacks it."""
    if _renameat2_fn is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    if _renameat2_fn(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src)


_fallocate_fn = getattr(_libc, "fallocate", None)
if _fallocate_fn is not None:
    _fallocate_fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(fd, mode, offset, length)``; ENOSYS when libc lacks it."""
    if _fallocate_fn is None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    if _fallocate_fn(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class OsDir:
    """:class:`FSAdapter` over a real directory: ``os`` calls below ``root``.

    Nodes are created under ``umask`` whatever the process umask is (it is swapped in only around
    the creating call). ``link`` does not follow a symlink source (``link(2)``, unlike ``os.link``'s
    default).
    """

    def __init__(self, root: str, umask: int = 0o022):
        self.root = os.path.abspath(root).rstrip("/")
        self.umask = umask

    def path(self, path: str) -> str:
        """The real path of a side-absolute ``path`` (a trailing ``/`` is kept)."""
        return self.root + "/" + path.lstrip("/")

    @contextlib.contextmanager
    def _creating(self) -> Iterator[None]:
        old = os.umask(self.umask)
        try:
            yield
        finally:
            os.umask(old)

    def stat(self, path: str) -> os.stat_result:
        """``os.stat``."""
        return os.stat(self.path(path))

    def lstat(self, path: str) -> os.stat_result:
        """``os.lstat``."""
        return os.lstat(self.path(path))

    def listdir(self, path: str) -> list[str]:
        """``os.listdir``."""
        return os.listdir(self.path(path))

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        """``os.mkdir``."""
        with self._creating():
            os.mkdir(self.path(path), mode)

    def rmdir(self, path: str) -> None:
        """``os.rmdir``."""
        os.rmdir(self.path(path))

    def unlink(self, path: str) -> None:
        """``os.unlink``."""
        os.unlink(self.path(path))

    def rename(self, src: str, dst: str, flags: int = 0) -> None:
        """``os.rename`` (``flags``: ``renameat2``)."""
        if flags:
            renameat2(self.path(src), self.path(dst), flags)
        else:
            os.rename(self.path(src), self.path(dst))

    def link(self, src: str, dst: str) -> None:
        """``link(2)``: a symlink source is not followed."""
        os.link(self.path(src), self.path(dst), follow_symlinks=False)

    def symlink(self, target: str, path: str) -> None:
        """``os.symlink``."""
        os.symlink(target, self.path(path))

    def readlink(self, path: str) -> str:
        """``os.readlink``."""
        return os.readlink(self.path(path))

    def mkfifo(self, path: str, mode: int = 0o666) -> None:
        """``os.mkfifo``."""
        with self._creating():
            os.mkfifo(self.path(path), mode)

    def chmod(self, path: str, mode: int) -> None:
        """``os.chmod``."""
        os.chmod(self.path(path), mode)

    def truncate(self, path: str, length: int) -> None:
        """``os.truncate``."""
        os.truncate(self.path(path), length)

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        """``os.setxattr``."""
        os.setxattr(self.path(path), name, value, flags)

    def getxattr(self, path: str, name: str) -> bytes:
        """``os.getxattr``."""
        return os.getxattr(self.path(path), name)

    def listxattr(self, path: str) -> list[str]:
        """``os.listxattr``."""
        return os.listxattr(self.path(path))

    def removexattr(self, path: str, name: str) -> None:
        """``os.removexattr``."""
        os.removexattr(self.path(path), name)

    def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
        """``os.open``."""
        with self._creating():
            return os.open(self.path(path), flags, mode)

    def read(self, fd: int, size: int, offset: int | None = None) -> bytes:
        """``os.read`` (``offset``: ``os.pread``)."""
        return os.read(fd, size) if offset is None else os.pread(fd, size, offset)

    def write(self, fd: int, data: bytes, offset: int | None = None) -> int:
        """``os.write`` (``offset``: ``os.pwrite``)."""
        return os.write(fd, data) if offset is None else os.pwrite(fd, data, offset)

    def lseek(self, fd: int, pos: int, how: int = os.SEEK_SET) -> int:
        """``os.lseek``."""
        return os.lseek(fd, pos, how)

    def ftruncate(self, fd: int, length: int) -> None:
        """``os.ftruncate``."""
        os.ftruncate(fd, length)

    def fstat(self, fd: int) -> os.stat_result:
        """``os.fstat``."""
        return os.fstat(fd)

    def fsync(self, fd: int) -> None:
        """``os.fsync``."""
        os.fsync(fd)

    def fallocate(self, fd: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2)."""
        fallocate(fd, mode, offset, length)

    def copy_file_range(
        self, src: int, dst: int, count: int, offset_src: int | None = None,
        offset_dst: int | None = None,
    ) -> int:  # fmt: skip
        """``os.copy_file_range``."""
        return os.copy_file_range(src, dst, count, offset_src, offset_dst)

    def close(self, fd: int) -> None:
        """``os.close``."""
        os.close(fd)


@dataclass(frozen=True)
class OracleFeatures:
    """Optional calls the oracle's file system supports (rules needing others are skipped)."""

    renameat2: bool
    user_xattrs: bool
    #: fallocate with PUNCH_HOLE and ZERO_RANGE (the modes the JuiceFS client serves)
    fallocate: bool = False


def probe_features(directory: str) -> OracleFeatures:
    """Probe the file system holding ``directory`` (in a scratch subdirectory, removed after)."""
    return _probe(os.stat(directory).st_dev, directory)


@functools.lru_cache(maxsize=None)
def _probe(_device: int, directory: str) -> OracleFeatures:
    scratch = tempfile.mkdtemp(prefix="probe-", dir=directory)
    try:
        a, b = os.path.join(scratch, "a"), os.path.join(scratch, "b")
        for p in (a, b):
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            renameat2(a, b, RENAME_NOREPLACE)
            has_renameat2 = False  # it replaced b: the flag was ignored
        except OSError as exc:
            has_renameat2 = exc.errno == errno.EEXIST
        try:
            os.setxattr(a, "user.probe", b"1")
            has_xattrs = os.getxattr(a, "user.probe") == b"1"
        except OSError:
            has_xattrs = False
        try:
            fd = os.open(a, os.O_RDWR)
            try:
                os.write(fd, b"x" * 8192)
                for mode in FALLOCATE_MODES:
                    fallocate(fd, mode, 100, 5000)
                has_fallocate = True
            finally:
                os.close(fd)
        except OSError:
            has_fallocate = False
        return OracleFeatures(
            renameat2=has_renameat2, user_xattrs=has_xattrs, fallocate=has_fallocate
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---------------------------------------------------------------------------- generated values


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of the strategies, each ``weight`` times as likely as a weight-1 one."""
    return st.one_of(*(strategy for weight, strategy in choices for _ in range(weight)))


NAMES = ("a", "b", "c")
LONG_NAME = "L" * 255  # the longest valid name
TOO_LONG_NAME = "M" * 256  # ENAMETOOLONG
# Paths of up to three short names, each depth about as likely as the others, then a few with
# long names (rarer; shrink last). No name collides with the JuiceFS virtual files at the root
# (.trash, .control, .stats, .config, .accesslog).
WEIGHTED_PATHS = [
    "/" + "/".join(parts)
    for depth, repeat in ((1, 9), (2, 3), (3, 1))
    for parts in itertools.product(NAMES, repeat=depth)
    for _ in range(repeat)
] + [f"/{LONG_NAME}", f"/a/{LONG_NAME}", f"/{TOO_LONG_NAME}", f"/a/{TOO_LONG_NAME}"]
# "." and ".." components and trailing slashes ("/.." is left out: the oracle's root has a parent)
ODD_PATHS = ["/a/", "/a/b/", "/a/.", "/a/..", "/a/./b", "/a/../b", "/a/b/..", "/b/../a/c", "/."]
# Relative targets without "." or "..": no link may lead to the root, because a ".." after it
# would leave the oracle's root (which has a parent; the subject's root does not).
SYMLINK_TARGETS = ("a", "b", "a/b", "b/c", "c/a/b", "missing")
# and targets that are empty (ENOENT), the longest allowed, and one byte too long
symlink_targets = st.one_of(
    st.sampled_from(SYMLINK_TARGETS), st.sampled_from(["", "t" * 4095, "t" * 4096])
)
xattr_names = st.one_of(
    st.sampled_from(["user.a", "user.b"]),
    st.sampled_from(["user.", "bad.name", "trusted.a", "user." + "x" * 251]),
)


# Mostly paths that exist (in the oracle's tree after the last step) and new names in directories
# that exist; also the paths files were opened by (to unlink or replace them while they are
# open), fixed paths, and paths with ".", ".." and trailing slashes.
paths = weighted(
    (3, st.runner().flatmap(lambda machine: machine.existing_paths())),
    (2, st.runner().flatmap(lambda machine: machine.paths_in_existing_dirs())),
    (1, st.runner().flatmap(lambda machine: machine.open_paths())),
    (1, st.sampled_from(WEIGHTED_PATHS)),
    (1, st.sampled_from(ODD_PATHS)),
)
# for the calls that need a regular file: also existing regular files
file_paths = st.one_of(paths, st.runner().flatmap(lambda machine: machine.existing_files()))
# Without root, the owner keeps every permission on what the machine makes, or it could lock
# itself out of its own trees (root passes every permission check on both sides).
OWNER_BITS = 0 if os.geteuid() == 0 else 0o700
modes = st.one_of(
    st.sampled_from([0o755, 0o644, 0o700, 0o777, 0]), st.integers(0, 0o7777)
).map(lambda mode: mode | OWNER_BITS)
sizes = st.one_of(
    st.sampled_from([0, 1, 4095, 4096, 4097, 65535, 65536, 65537, 3 * 65536 + 7]),
    st.integers(0, 300_000),
)
near_chunk_end = st.integers(CHUNK - 8192, CHUNK + 8192)  # multi-chunk files, rarely
offsets = weighted(
    (2, st.integers(0, 300_000)),
    (1, st.sampled_from([0, 4096, 65536, 131072, 1 << 20])),
    (1, near_chunk_end),
)
lengths = st.one_of(st.integers(0, 300_000), st.sampled_from([0, 65536, CHUNK]), near_chunk_end)
read_sizes = st.one_of(st.sampled_from([0, 1, 4096, 65536, 200_000]), st.integers(0, 300_000))
file_slots = st.integers(0, 15)  # index into the open files, modulo their number
# 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE, ZERO_RANGE|KEEP_SIZE (collapse and insert
# range are left out: the JuiceFS client refuses them, local file systems need alignment)
FALLOCATE_MODES = (0x00, 0x01, 0x03, 0x10, 0x11)
fallocate_modes = st.one_of(st.sampled_from(FALLOCATE_MODES), st.sampled_from([0x02, 0x13, 0x04]))
range_lengths = st.one_of(st.integers(-1, 300_000), st.sampled_from([0, 1, 65536]))
ACCESS_MODES = {"O_RDONLY": os.O_RDONLY, "O_WRONLY": os.O_WRONLY, "O_RDWR": os.O_RDWR}
OPEN_EXTRAS = {
    "O_CREAT": os.O_CREAT,
    "O_EXCL": os.O_EXCL,
    "O_TRUNC": os.O_TRUNC,
    "O_APPEND": os.O_APPEND,
    "O_DIRECTORY": os.O_DIRECTORY,
    "O_NOFOLLOW": os.O_NOFOLLOW,
}
# Flags are text ("O_RDWR|O_CREAT") so failing examples read well. Half are the usual
# combinations, so that most opens succeed and the data rules have descriptors to work on.
USUAL_OPEN_FLAGS = (
    "O_RDWR",
    "O_RDWR|O_CREAT",
    "O_WRONLY|O_CREAT|O_TRUNC",
    "O_RDWR|O_APPEND",
    "O_WRONLY|O_APPEND|O_CREAT",
    "O_RDONLY",
)
open_flags = st.one_of(
    st.sampled_from(USUAL_OPEN_FLAGS),
    st.sampled_from(
        [
            "|".join([access, *extras])
            for count in range(4)
            for access in ACCESS_MODES
            for extras in itertools.combinations(OPEN_EXTRAS, count)
        ]
    ),
)


def parse_flags(flags: str) -> int:
    """``"O_RDWR|O_CREAT"`` as an int."""
    value = 0
    for part in flags.split("|"):
        value |= ACCESS_MODES.get(part, 0) | OPEN_EXTRAS.get(part, 0)
    return value


@dataclass(frozen=True)
class Payload:
    """``size`` pseudo-random bytes from ``seed`` (drawn as two numbers, so examples stay short)."""

    size: int
    seed: int

    @functools.cached_property
    def data(self) -> bytes:
        """The bytes."""
        return random.Random(self.seed).randbytes(self.size)


payloads = st.builds(Payload, sizes, st.integers(0, 255))
# A starting tree of (path, kind, content) entries, parents before children.
SHORT_PATHS = sorted(set(WEIGHTED_PATHS[:-4]), key=lambda p: (p.count("/"), p))
ENTRY_KINDS = ("file", "dir", "file", "open file", "hard link", "symlink", "setgid dir")
starting_trees = st.lists(
    st.tuples(st.sampled_from(SHORT_PATHS), st.sampled_from(ENTRY_KINDS), payloads),
    max_size=12,
    unique_by=lambda entry: entry[0],
).map(lambda entries: sorted(entries, key=lambda e: SHORT_PATHS.index(e[0])))
small_payloads = st.builds(Payload, st.integers(0, 64), st.integers(0, 255))

# ---------------------------------------------------------------------------- comparing

Outcome = tuple[str, Any]  # ("ok", value) or ("errno", "ENOENT")


def outcome(call: Callable[[], T]) -> Outcome:
    """The result of ``call``, or the errno name of the ``OSError`` it raised."""
    try:
        return "ok", call()
    except OSError as exc:
        return "errno", errno.errorcode.get(exc.errno or 0, exc.errno)


def kind_of(mode: int) -> str:
    """A readable file type."""
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
    ):
        if test(mode):
            return name
    return oct(stat.S_IFMT(mode))


def stat_view(st_result: Any) -> tuple[str, str, int, int | None]:
    """What the machine compares of a stat result: type, permission bits, nlink, size (not for
    directories, whose size is file-system specific)."""
    mode = st_result.st_mode
    size = None if stat.S_ISDIR(mode) else st_result.st_size
    return kind_of(mode), oct(stat.S_IMODE(mode)), st_result.st_nlink, size


def content_digest(fs: FSAdapter, path: str) -> str:
    """A hash of a file's whole content, read through ``fs``.

    Whole zero pieces are hashed as their length only: sparse files of 64 MiB and more stay cheap.
    """
    digest = hashlib.blake2b(digest_size=16)
    fd = fs.open(path, os.O_RDONLY)
    try:
        offset = 0
        while piece := fs.read(fd, READ_PIECE, offset):
            if piece == ZERO_PIECE[: len(piece)]:
                digest.update(b"zeros %d;" % len(piece))
            else:
                digest.update(b"data %d;" % len(piece))
                digest.update(piece)
            offset += len(piece)
    finally:
        fs.close(fd)
    return f"{offset}:{digest.hexdigest()}"


def user_xattrs(fs: FSAdapter, path: str) -> dict[str, bytes]:
    """The ``user.*`` extended attributes of a node (others are file-system specific)."""
    return {n: fs.getxattr(path, n) for n in sorted(fs.listxattr(path)) if n.startswith("user.")}


@dataclass(frozen=True)
class Node:
    """What the machine compares of one node of a tree."""

    stat: tuple[str, str, int, int | None]
    target: str | None = None
    content: str | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()


def snapshot(fs: FSAdapter, skip_content: Callable[[str], bool]) -> dict[str, Node]:
    """Every node below the root of ``fs`` (the root itself excluded), by path."""
    tree: dict[str, Node] = {}
    pending = ["/"]
    while pending:
        directory = pending.pop()
        for name in sorted(fs.listdir(directory)):
            path = directory.rstrip("/") + "/" + name
            st_result = fs.lstat(path)
            mode = st_result.st_mode
            target = content = None
            xattrs: tuple[tuple[str, bytes], ...] = ()
            if stat.S_ISDIR(mode):
                pending.append(path)
            if stat.S_ISLNK(mode):
                target = fs.readlink(path)
            if stat.S_ISREG(mode) and not skip_content(path):
                content = content_digest(fs, path)
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                xattrs = tuple(user_xattrs(fs, path).items())
            tree[path] = Node(stat_view(st_result), target, content, xattrs)
    return tree


def tree_differences(subject: dict[str, Node], oracle: dict[str, Node]) -> list[str]:
    """Readable differences between two snapshots."""
    lines = []
    for path in sorted(subject.keys() | oracle.keys()):
        s, o = subject.get(path), oracle.get(path)
        if s != o:
            lines.append(f"{path}:\n    subject {s}\n    oracle  {o}")
    return lines


@dataclass
class OpenFile:
    """One file open on both sides."""

    path: str
    flags: str
    subject_fd: int
    oracle_fd: int
    is_dir: bool

    @property
    def writable(self) -> bool:
        """Whether writes through it may be buffered by the subject."""
        return parse_flags(self.flags) & os.O_ACCMODE != os.O_RDONLY


# ---------------------------------------------------------------------------- the machine


class FSMachine(RuleBasedStateMachine):
    """Random POSIX call sequences on :meth:`make_subject` and on an :class:`OsDir` oracle.

    Every rule performs one call on both sides and asserts the same outcome; the invariant
    compares the trees (paths, type, permission bits, nlink, size, symlink targets, content,
    ``user.*`` xattrs; never times, inode numbers, owners or directory sizes) and then calls
    :meth:`check_subject`. Files open for writing are compared by content only once closed (and
    through reads), so the subject's write buffering is exercised across steps.
    """

    umask = 0o027  # not the usual process umask, so a side that ignores it shows up
    max_open_files = 8

    def __init__(self) -> None:
        super().__init__()
        self.workdir = tempfile.mkdtemp(prefix="fsmachine-")
        self.features = probe_features(self.workdir)
        self.files: list[OpenFile] = []
        self.known_paths: list[str] = []  # the oracle's paths after the last step
        self.known_dirs: list[str] = ["/"]  # and its directories
        self.known_files: list[str] = []  # and its regular files
        self.subject: FSAdapter = self.make_subject(self.workdir)
        oracle_root = os.path.join(self.workdir, "oracle")
        os.mkdir(oracle_root)
        # the roots are compared too (through paths like "/." and "/a/.."): start them alike
        os.chmod(oracle_root, stat.S_IMODE(self.subject.stat("/").st_mode))
        self.oracle = OsDir(oracle_root, umask=self.umask)

    # ------------------------------------------------------------------ subclass hooks

    def make_subject(self, workdir: str) -> FSAdapter:
        """The file system under test (``workdir`` is a private scratch directory)."""
        raise NotImplementedError

    def check_subject(self, open_files: list[OpenFile]) -> None:
        """Consistency checks of the subject's own state after every step (none by default)."""

    def close_subject(self) -> None:
        """Release the subject after the descriptors are closed."""

    # ------------------------------------------------------------------ comparing

    def same(self, what: str, call: Callable[[FSAdapter], T]) -> Outcome:
        """Perform ``call`` on both sides and assert the same outcome."""
        expected = outcome(lambda: call(self.oracle))
        actual = outcome(lambda: call(self.subject))
        assert actual == expected, f"{what}: subject {actual!r}, oracle {expected!r}"
        return actual

    def same_fd(self, f: OpenFile, what: str, call: Callable[[FSAdapter, int], T]) -> Outcome:
        """Perform ``call`` with the open file's descriptor on both sides; same outcome."""
        expected = outcome(lambda: call(self.oracle, f.oracle_fd))
        actual = outcome(lambda: call(self.subject, f.subject_fd))
        assert actual == expected, (
            f"{what} on {f.path} ({f.flags}): subject {actual!r}, oracle {expected!r}"
        )
        return actual

    def compare_trees(self) -> None:
        """Assert both trees are the same. The content of files open for writing is left out:
        reading it would publish the subject's buffered writes at every step."""
        busy = self._files_open_for_writing()
        oracle = snapshot(self.oracle, lambda p: os.lstat(self.oracle.path(p)).st_ino in busy)
        busy_paths = {p for p, node in oracle.items() if node.content is None}
        subject = snapshot(self.subject, busy_paths.__contains__)
        differences = tree_differences(subject, oracle)
        assert not differences, "trees differ:\n" + "\n".join(differences)
        self.known_paths = sorted(oracle)
        self.known_dirs = ["/", *(p for p in self.known_paths if oracle[p].stat[0] == "dir")]
        self.known_files = [p for p in self.known_paths if oracle[p].stat[0] == "file"]

    def existing_paths(self) -> st.SearchStrategy[str]:
        """A path that existed after the last step (any path while the tree is empty)."""
        return st.sampled_from(self.known_paths or WEIGHTED_PATHS)

    def existing_files(self) -> st.SearchStrategy[str]:
        """A regular file that existed after the last step (any path when there is none)."""
        return st.sampled_from(self.known_files) if self.known_files else self.existing_paths()

    def open_paths(self) -> st.SearchStrategy[str]:
        """A path a file now open was opened by (an existing path when none is open)."""
        if not self.files:
            return self.existing_paths()
        return st.sampled_from(sorted({f.path for f in self.files}))

    def paths_in_existing_dirs(self) -> st.SearchStrategy[str]:
        """A short name in a directory that existed after the last step."""
        return st.builds(
            lambda directory, name: directory.rstrip("/") + "/" + name,
            st.sampled_from(self.known_dirs),
            st.sampled_from(NAMES),
        )

    def _files_open_for_writing(self) -> set[int]:
        return {os.fstat(f.oracle_fd).st_ino for f in self.files if f.writable}

    def _is_fifo(self, path: str) -> bool:
        """Whether ``path`` (followed) is a fifo: opening one blocks on Linux and means nothing
        to a subject without pipes, so such opens are skipped."""
        try:
            return stat.S_ISFIFO(os.stat(self.oracle.path(path)).st_mode)
        except OSError:
            return False

    def _file(self, slot: int) -> OpenFile:
        return self.files[slot % len(self.files)]

    @invariant()
    def trees_match(self) -> None:
        """After every step: the same trees, then the subject's own checks."""
        self.compare_trees()
        self.check_subject(self.files)

    def teardown(self) -> None:
        """Close every descriptor on both sides, release the subject, remove the scratch."""
        try:
            for f in self.files:
                with contextlib.suppress(OSError):
                    self.subject.close(f.subject_fd)
                with contextlib.suppress(OSError):
                    self.oracle.close(f.oracle_fd)
            self.files.clear()
            self.close_subject()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ namespace rules

    @initialize(tree=starting_trees)
    def populate(self, tree: list[tuple[str, str, Payload]]) -> None:
        """Start from a small tree (missing parents are made first). A file has the content;
        an "open file" stays open for reading and writing; a "hard link" links the file before
        it (or is a file when there is none); a symlink's target is picked by the seed."""
        last_file = None
        for path, kind, payload in tree:
            parts = path.split("/")
            for depth in range(2, len(parts)):
                parent = "/".join(parts[:depth])
                if not os.path.lexists(self.oracle.path(parent)):
                    self.mkdir(parent, 0o755)
            if kind in ("dir", "setgid dir"):
                self.mkdir(path, 0o755)
                if kind == "setgid dir":
                    self.chmod(path, 0o2775)
            elif kind == "symlink":
                self.symlink(SYMLINK_TARGETS[payload.seed % len(SYMLINK_TARGETS)], path)
            elif kind == "hard link" and last_file is not None:
                self.link(last_file, path)
            else:
                self.create_file(path, 0o644, payload)
                last_file = path
                if kind == "open file":
                    self.open_file(path, "O_RDWR", 0o644)

    @rule(path=paths, mode=modes)
    def mkdir(self, path: str, mode: int) -> None:
        """mkdir (umask applied on both sides)."""
        self.same(f"mkdir({path!r}, {mode:#o})", lambda fs: fs.mkdir(path, mode))

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        """rmdir, of empty and non-empty directories and of other nodes."""
        self.same(f"rmdir({path!r})", lambda fs: fs.rmdir(path))

    @rule(path=paths)
    def unlink(self, path: str) -> None:
        """unlink, also of files that are open."""
        self.same(f"unlink({path!r})", lambda fs: fs.unlink(path))

    @rule(src=paths, dst=paths)
    def rename(self, src: str, dst: str) -> None:
        """rename over nothing, files, empty and non-empty directories, into descendants."""
        self.same(f"rename({src!r}, {dst!r})", lambda fs: fs.rename(src, dst))

    @precondition(lambda self: self.features.renameat2)
    @rule(src=paths, dst=paths, flags=st.sampled_from([RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename_with_flags(self, src: str, dst: str, flags: int) -> None:
        """renameat2 with RENAME_NOREPLACE or RENAME_EXCHANGE."""
        name = {RENAME_NOREPLACE: "RENAME_NOREPLACE", RENAME_EXCHANGE: "RENAME_EXCHANGE"}[flags]
        self.same(f"rename({src!r}, {dst!r}, {name})", lambda fs: fs.rename(src, dst, flags))

    @rule(src=file_paths, dst=paths)
    def link(self, src: str, dst: str) -> None:
        """A hard link (to files, symlinks, fifos; directories are refused)."""
        self.same(f"link({src!r}, {dst!r})", lambda fs: fs.link(src, dst))

    @rule(link_target=symlink_targets, path=paths)
    def symlink(self, link_target: str, path: str) -> None:
        """A symlink with a relative target (which may not exist)."""
        self.same(
            f"symlink({link_target!r}, {path!r})", lambda fs: fs.symlink(link_target, path)
        )

    @rule(path=paths)
    def readlink(self, path: str) -> None:
        """readlink, of symlinks and of other nodes."""
        self.same(f"readlink({path!r})", lambda fs: fs.readlink(path))

    @rule(path=paths, mode=modes)
    def mkfifo(self, path: str, mode: int) -> None:
        """A fifo (it is never opened: that would block)."""
        self.same(f"mkfifo({path!r}, {mode:#o})", lambda fs: fs.mkfifo(path, mode))

    @rule(path=paths, mode=modes)
    def chmod(self, path: str, mode: int) -> None:
        """chmod with any of the 12 permission bits (following symlinks)."""
        self.same(f"chmod({path!r}, {mode:#o})", lambda fs: fs.chmod(path, mode))

    @rule(path=file_paths, length=lengths)
    def truncate(self, path: str, length: int) -> None:
        """truncate by path, up and down, across the 64 MiB chunk boundary too."""
        self.same(f"truncate({path!r}, {length})", lambda fs: fs.truncate(path, length))

    @rule(path=paths, follow=st.booleans())
    def stat_path(self, path: str, follow: bool) -> None:
        """stat or lstat."""
        self.same(
            f"{'stat' if follow else 'lstat'}({path!r})",
            lambda fs: stat_view(fs.stat(path) if follow else fs.lstat(path)),
        )

    @rule(path=st.one_of(st.just("/"), paths))
    def listdir(self, path: str) -> None:
        """The names in a directory."""
        self.same(f"listdir({path!r})", lambda fs: sorted(fs.listdir(path)))

    # ------------------------------------------------------------------ xattr rules

    @precondition(lambda self: self.features.user_xattrs)
    @rule(
        path=paths,
        name=xattr_names,
        value=small_payloads,
        flags=st.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE, 3]),
    )
    def setxattr(self, path: str, name: str, value: Payload, flags: int) -> None:
        """setxattr with XATTR_CREATE / XATTR_REPLACE, valid and invalid names."""
        self.same(
            f"setxattr({path!r}, {name!r}, {value}, {flags})",
            lambda fs: fs.setxattr(path, name, value.data, flags),
        )

    @precondition(lambda self: self.features.user_xattrs)
    @rule(path=paths, name=xattr_names)
    def getxattr(self, path: str, name: str) -> None:
        """getxattr, valid and invalid names."""
        self.same(f"getxattr({path!r}, {name!r})", lambda fs: fs.getxattr(path, name))

    @precondition(lambda self: self.features.user_xattrs)
    @rule(path=paths, name=xattr_names)
    def removexattr(self, path: str, name: str) -> None:
        """removexattr, valid and invalid names."""
        self.same(f"removexattr({path!r}, {name!r})", lambda fs: fs.removexattr(path, name))

    @precondition(lambda self: self.features.user_xattrs)
    @rule(path=paths)
    def listxattr(self, path: str) -> None:
        """The user.* names of a node."""
        self.same(f"listxattr({path!r})", lambda fs: sorted(user_xattrs(fs, path)))

    # ------------------------------------------------------------------ file rules

    def open_both(self, path: str, flags: str, mode: int) -> OpenFile | None:
        """Open ``path`` on both sides (same outcome asserted); None when both refused."""
        what = f"open({path!r}, {flags}, {mode:#o})"
        expected = outcome(lambda: self.oracle.open(path, parse_flags(flags), mode))
        actual = outcome(lambda: self.subject.open(path, parse_flags(flags), mode))
        if actual[0] == expected[0] == "ok":
            is_dir = stat.S_ISDIR(os.fstat(expected[1]).st_mode)
            return OpenFile(path, flags, actual[1], expected[1], is_dir)
        for side, result in ((self.subject, actual), (self.oracle, expected)):
            if result[0] == "ok":
                side.close(result[1])
        assert actual == expected, f"{what}: subject {actual!r}, oracle {expected!r}"
        return None

    @rule(path=file_paths, mode=modes, payload=payloads)
    def create_file(self, path: str, mode: int, payload: Payload) -> None:
        """open(O_WRONLY|O_CREAT|O_TRUNC), one write, close."""
        if self._is_fifo(path):
            return
        f = self.open_both(path, "O_WRONLY|O_CREAT|O_TRUNC", mode)
        if f is None:
            return
        try:
            self.same_fd(f, f"write({payload})", lambda fs, fd: fs.write(fd, payload.data))
        finally:
            self.same_fd(f, "close()", lambda fs, fd: fs.close(fd))

    @precondition(lambda self: len(self.files) < self.max_open_files)
    @rule(path=file_paths, flags=open_flags, mode=modes)
    def open_file(self, path: str, flags: str, mode: int) -> None:
        """Open a file (or directory) and keep it open for the descriptor rules."""
        if self._is_fifo(path):
            return
        f = self.open_both(path, flags, mode)
        if f is not None:
            self.files.append(f)

    @precondition(lambda self: self.files)
    @rule(slot=file_slots, offset=offsets, payload=payloads)
    def pwrite(self, slot: int, offset: int, payload: Payload) -> None:
        """pwrite at an offset, far past the end and across the chunk boundary too."""
        f = self._file(slot)
        self.same_fd(
            f, f"pwrite({payload}, {offset})", lambda fs, fd: fs.write(fd, payload.data, offset)
        )

    @precondition(lambda self: self.files)
    @rule(slot=file_slots, payload=payloads)
    def write(self, slot: int, payload: Payload) -> None:
        """write at the descriptor's position (at the end with O_APPEND)."""
        f = self._file(slot)
        self.same_fd(f, f"write({payload})", lambda fs, fd: fs.write(fd, payload.data))

    @precondition(lambda self: self.files)
    @rule(slot=file_slots, offset=offsets, size=read_sizes)
    def pread(self, slot: int, offset: int, size: int) -> None:
        """pread at an offset."""
        f = self._file(slot)
        self.same_fd(f, f"pread({size}, {offset})", lambda fs, fd: fs.read(fd, size, offset))

    @precondition(lambda self: self.files)
    @rule(slot=file_slots, size=read_sizes)
    def read(self, slot: int, size: int) -> None:
        """read at the descriptor's position."""
        f = self._file(slot)
        self.same_fd(f, f"read({size})", lambda fs, fd: fs.read(fd, size))

    @precondition(lambda self: self.files)
    @rule(
        slot=file_slots,
        pos=st.one_of(st.integers(-100, 300_000), near_chunk_end),
        how=st.sampled_from([os.SEEK_SET, os.SEEK_CUR, os.SEEK_END]),
    )
    def lseek(self, slot: int, pos: int, how: int) -> None:
        """lseek from the start, the position or the end (not on directories)."""
        f = self._file(slot)
        if f.is_dir:
            return  # directory offsets are file-system cookies
        self.same_fd(f, f"lseek({pos}, {how})", lambda fs, fd: fs.lseek(fd, pos, how))

    @precondition(lambda self: self.files)
    @rule(slot=file_slots, length=lengths)
    def ftruncate(self, slot: int, length: int) -> None:
        """ftruncate through a descriptor."""
        f = self._file(slot)
        self.same_fd(f, f"ftruncate({length})", lambda fs, fd: fs.ftruncate(fd, length))

    @precondition(lambda self: self.files)
    @rule(slot=file_slots)
    def fstat(self, slot: int) -> None:
        """fstat, also of files unlinked while open."""
        f = self._file(slot)
        self.same_fd(f, "fstat()", lambda fs, fd: stat_view(fs.fstat(fd)))

    @precondition(lambda self: self.files)
    @rule(slot=file_slots)
    def fsync(self, slot: int) -> None:
        """fsync: the subject publishes and stores its buffered writes."""
        f = self._file(slot)
        self.same_fd(f, "fsync()", lambda fs, fd: fs.fsync(fd))

    @precondition(lambda self: self.files and self.features.fallocate)
    @rule(slot=file_slots, mode=fallocate_modes, offset=offsets, length=range_lengths)
    def fallocate(self, slot: int, mode: int, offset: int, length: int) -> None:
        """fallocate: allocate, keep size, punch a hole, zero a range."""
        f = self._file(slot)
        self.same_fd(
            f, f"fallocate({mode:#x}, {offset}, {length})",
            lambda fs, fd: fs.fallocate(fd, mode, offset, length),
        )  # fmt: skip

    @precondition(lambda self: self.files)
    @rule(
        src=file_slots, dst=file_slots, count=range_lengths.filter(lambda n: n >= 0),
        offsets_=st.one_of(st.none(), st.tuples(offsets, offsets)),
    )  # fmt: skip
    def copy_file_range(
        self, src: int, dst: int, count: int, offsets_: tuple[int, int] | None
    ) -> None:
        """copy_file_range between two open files (or within one), at given offsets or at
        the descriptors' positions."""
        fin, fout = self._file(src), self._file(dst)
        off_in, off_out = offsets_ or (None, None)
        what = f"copy_file_range({fin.path} ({fin.flags}), {count}, {off_in}, {off_out})"
        expected = outcome(
            lambda: self.oracle.copy_file_range(
                fin.oracle_fd, fout.oracle_fd, count, off_in, off_out
            )
        )
        actual = outcome(
            lambda: self.subject.copy_file_range(
                fin.subject_fd, fout.subject_fd, count, off_in, off_out
            )
        )
        assert actual == expected, (
            f"{what} to {fout.path} ({fout.flags}): subject {actual!r}, oracle {expected!r}"
        )

    @precondition(lambda self: self.files)
    @rule(slot=file_slots)
    def close(self, slot: int) -> None:
        """Close a descriptor (the last close of an unlinked file deletes it)."""
        f = self.files.pop(slot % len(self.files))
        self.same_fd(f, "close()", lambda fs, fd: fs.close(fd))


class EngineMachine(FSMachine):
    """:class:`FSMachine` whose subject is :class:`~volume.engine.PathFS` over a freshly formatted
    volume; after every step the metadata store must pass
    :func:`~volume.engine.check.check_metadata`.

    Subclasses provide the stores (:meth:`open_stores`).
    """

    block_size_kib = 64  # the smallest block size: modest writes already span several blocks
    #: the engine's compaction; subclasses compact after a few records to exercise it often
    compaction: CompactionPolicy | None = DEFAULT_COMPACTION

    def open_stores(self, workdir: str) -> tuple[MetaStore, ObjectStore]:
        """A new, empty metadata store and object store (``workdir`` is private scratch space)."""
        raise NotImplementedError

    def make_subject(self, workdir: str) -> FSAdapter:
        self.meta, self.objects = self.open_stores(workdir)
        fmt = new_format(
            "fsmachine",
            storage=self.objects.name,
            bucket=self.objects.uri,
            block_size_kib=self.block_size_kib,
        )
        format_volume(self.meta, self.objects, fmt)
        self.engine = Engine(self.meta, self.objects, compaction=self.compaction)
        # the oracle runs with this process's identity, in a root directory it owns: so does
        # the subject
        self.engine.setattr(ROOT_INODE, uid=os.getuid(), gid=os.getgid())
        caller = Caller(os.getuid(), os.getgid(), tuple(os.getgroups()))
        return PathFS(self.engine, caller, umask=self.umask)

    def check_subject(self, open_files: list[OpenFile]) -> None:
        open_inodes = {self.subject.fstat(f.subject_fd).st_ino for f in open_files}
        problems = check_metadata(self.meta, open_inodes)
        assert not problems, "check_metadata found problems:\n" + "\n".join(problems)

    def close_subject(self) -> None:
        try:
            self.engine.close()
        finally:
            self.meta.close()
            self.objects.close()
