"""The two store interfaces every backend plugin implements.

``ObjectStore`` holds immutable blocks, index snapshots and small documents under string keys.
``MetaStore`` holds one volume's namespace in the JuiceFS layout of its kind (SQLite tables, Redis
keys). A metadata store offers *storage transactions over JuiceFS records*; the POSIX rules
(permissions, nlink and ctime bookkeeping, rename semantics) live once, in ``volume.engine``, on top
of :class:`MetaTxn`. The normative description is ``spec/stores.md``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

from .errors import VolumeIndexCorrupt
from .juicefs import Attr, Format

# =========================================================================== object stores


@dataclass(frozen=True)
class ObjectInfo:
    """What ``head`` and ``list`` report about one object."""

    key: str
    size: int


@dataclass(frozen=True)
class ObjectStoreCapabilities:
    """What an object store can guarantee.

    conditional_put: ``put(..., if_absent=True)`` is atomic: of several racing writers of one key
        exactly one succeeds and the others get :class:`~volume.errors.ObjectExists`. Without it
        the core refuses writable mounts unless the caller opts in.
    range_reads: ``get(key, start, end)`` fetches only the range (otherwise it is emulated).
    local: objects live on this machine's file system (no network cost).
    staging: :meth:`ObjectStore.stage` writes a new object in place, piece by piece, and
        publishes it under its key when it is sealed. The engine then writes blocks straight into
        the store (one copy of each byte, outside the interpreter lock) instead of buffering them
        in memory and calling ``put``.
    """

    conditional_put: bool = False
    range_reads: bool = True
    local: bool = False
    staging: bool = False


class ByteStream(ABC):
    """The bytes of one write, handed over once and read in order: e.g. a FUSE write request's
    data left in a kernel pipe, which can move into a file without passing through the
    interpreter (``splice(2)``).

    ``len()`` is the number of bytes; a slice is a stream of that part of them (the parts of a
    stream are read in order, each once). :meth:`read` returns them; :meth:`write_into` puts them
    into a file at an offset, which an implementation may do without copying them into memory.
    """

    def __init__(self, length: int) -> None:
        self._start = 0  # this stream's first byte, in its root stream
        self._length = length
        self._root = self
        self._pos = 0  # (of a root) bytes read so far

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, part: slice) -> ByteStream:
        start, stop, step = part.indices(self._length)
        if step != 1:
            raise ValueError("a byte stream is read in order")
        return _StreamPart(self._root, self._start + start, max(0, stop - start))

    def _take(self) -> ByteStream:
        """The root stream, checked to be at this part's first byte, and moved past it."""
        root = self._root
        if root._pos != self._start:
            raise ValueError(
                f"byte stream read out of order: at byte {root._pos}, asked for {self._start}"
            )
        root._pos += self._length
        return root

    def read(self) -> bytes | memoryview:
        """This stream's bytes."""
        return self._take()._read_next(self._length)

    def write_into(self, fd: int, offset: int) -> None:
        """Write this stream's bytes into the open file ``fd`` at ``offset`` (``pwrite(2)``
        unless the implementation knows better); raises :class:`OSError` on failure."""
        self._take()._write_next(self._length, fd, offset)

    @abstractmethod
    def _read_next(self, n: int) -> bytes | memoryview:
        """The root's next ``n`` bytes."""

    def _write_next(self, n: int, fd: int, offset: int) -> None:
        """Write the root's next ``n`` bytes into ``fd`` at ``offset``."""
        view = memoryview(self._read_next(n))
        done = 0
        while done < n:  # a write may be partial (Linux caps one at ~2 GiB)
            done += os.pwrite(fd, view[done:], offset + done)


class _StreamPart(ByteStream):
    """A slice of a stream: bytes ``[start, start + length)`` of its root."""

    def __init__(self, root: ByteStream, start: int, length: int) -> None:
        super().__init__(length)
        self._root, self._start = root, start

    def _read_next(self, n: int) -> bytes | memoryview:
        raise AssertionError("only a root stream reads")  # (_take returns the root)


class StagedObject(ABC):
    """A new object being written in place (:meth:`ObjectStore.stage`): invisible to every reader
    until :meth:`seal` publishes it whole. Used by one thread at a time."""

    @abstractmethod
    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` (over earlier bytes or at the end; never past it)."""

    def write_stream(self, offset: int, data: ByteStream) -> None:
        """:meth:`write` the bytes of a stream (a store writing to a file descriptor overrides
        this with ``data.write_into``, which may move them without a copy)."""
        self.write(offset, data.read())

    @abstractmethod
    def read(self, length: int) -> bytes:
        """Bytes ``[0, length)`` written so far."""

    @abstractmethod
    def seal(self, key: str, length: int) -> None:
        """Publish bytes ``[0, length)`` (bytes written past them are dropped) as ``key``, a key
        of the directory of the one the object was staged for, as ``put(..., if_absent=True)``
        does: :class:`~volume.errors.ObjectExists` when the key exists. After a failure the
        staged bytes are still there to :meth:`read` (and :meth:`discard`)."""

    @abstractmethod
    def discard(self) -> None:
        """Drop the staged bytes (after :meth:`seal` failed, or instead of it)."""


class ObjectStore(ABC):
    """A flat key space of immutable objects below one root (a directory, a bucket prefix).

    Keys are ``/``-separated relative paths: never empty, never absolute, no ``.`` or ``..``
    segment, no empty segment, no NUL. Invalid keys raise :class:`~volume.errors.InvalidKeyError`
    before any I/O. Missing objects raise :class:`~volume.errors.ObjectNotFound`.
    Implementations are safe to call from many threads at once.
    """

    #: the ``storage`` name the plugin is registered under (entry point name)
    name: ClassVar[str] = ""
    capabilities: ClassVar[ObjectStoreCapabilities] = ObjectStoreCapabilities()

    @classmethod
    @abstractmethod
    def from_uri(cls, uri: str, *, region: str | None = None, **options: object) -> "ObjectStore":
        """Open the store rooted at ``uri`` (``file:///dir``, ``s3://bucket/prefix``, ...)."""

    @property
    @abstractmethod
    def uri(self) -> str:
        """The root URI, without credentials."""

    @abstractmethod
    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (``end=None``: to the end; clamped to its size)."""

    @abstractmethod
    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False) -> None:
        """Store ``data`` atomically: readers see the old object or the whole new one.

        With ``if_absent`` the put fails with :class:`~volume.errors.ObjectExists` when the key
        exists, and of racing writers exactly one wins.
        """

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size of the object; :class:`~volume.errors.ObjectNotFound` when missing."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a plain string prefix), sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""

    def exists(self, key: str) -> bool:
        """Whether the object exists."""
        from .errors import ObjectNotFound

        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def will_read(self, key: str) -> None:
        """A hint that the object will be read soon (the engine gives it for the blocks ahead of
        a sequential reader). The default does nothing; the local store asks the kernel to read
        the file into the page cache in the background. Never fails for a missing object."""

    def get_into(self, key: str, start: int, buffer: memoryview) -> int:
        """Read the object's bytes from ``start`` into ``buffer`` (a writable byte view), up to
        its length; returns how many were read (fewer only at the object's end).

        The default copies what :meth:`get` returns; a store that can read into memory it is
        given (the local store: one ``preadv``) overrides it and saves that copy.
        """
        data = self.get(key, start, start + len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def open_file(self, key: str) -> tuple[int, int] | None:
        """``(fd, size)``: a descriptor open for reading on the file that holds the object, for
        a store that keeps objects as files (the caller closes it); None (the default) for a
        store without files. The engine's FUSE reads hand such files' ranges to the kernel,
        which moves their pages without a copy through the interpreter (``splice(2)``)."""
        return None

    def stage(self, key: str) -> StagedObject:
        """Start a new object to be sealed as ``key`` or another key of its directory; stores with
        the ``staging`` capability implement it (the default refuses)."""
        raise NotImplementedError(f"{type(self).__name__} does not stage objects")

    def get_file(self, key: str, path: str | Path) -> int:
        """Download the object into a local file (atomically); returns its size."""
        import secrets

        data = self.get(key)
        tmp = Path(f"{path}.part-{secrets.token_hex(4)}")
        try:
            tmp.write_bytes(data)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return len(data)

    def put_file(self, key: str, path: str | Path, *, if_absent: bool = False) -> int:
        """Upload a local file; returns its size."""
        data = Path(path).read_bytes()
        self.put(key, data, if_absent=if_absent)
        return len(data)

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


# =========================================================================== metadata stores


@dataclass(frozen=True)
class MetaStoreCapabilities:
    """What a metadata store offers.

    embedded: runs inside this process (no server to reach).
    juicefs_compatible: the index it snapshots is mountable by the JuiceFS client as is.
    """

    embedded: bool = True
    juicefs_compatible: bool = True


class MetaTxn(ABC):
    """Primitive record operations inside one storage transaction.

    Names are ``bytes``; xattr names are ``str``. Counters are in the SQL convention (next free
    inode and slice id; last used session and trash offset) whatever the store keeps internally.
    A read-only transaction raises on any write method.
    """

    # ---- inodes
    @abstractmethod
    def get_attr(self, inode: int) -> Attr | None:
        """The inode's attributes, or None."""

    @abstractmethod
    def set_attr(self, inode: int, attr: Attr) -> None:
        """Create or replace the inode's attributes."""

    @abstractmethod
    def delete_attr(self, inode: int) -> None:
        """Remove the inode record (entries, chunks, xattrs and symlink are removed separately)."""

    @abstractmethod
    def iter_attrs(self) -> Iterator[tuple[int, Attr]]:
        """Every inode, in inode order."""

    # ---- directory entries
    @abstractmethod
    def lookup(self, parent: int, name: bytes) -> tuple[int, int] | None:
        """``(inode, type)`` of the entry, or None."""

    @abstractmethod
    def add_entry(self, parent: int, name: bytes, inode: int, type: int) -> None:
        """Add an entry; the caller has checked that the name is free."""

    @abstractmethod
    def remove_entry(self, parent: int, name: bytes) -> None:
        """Remove an entry (no-op when missing)."""

    @abstractmethod
    def list_entries(
        self, parent: int, after: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, int, int]]:
        """``(name, inode, type)`` of the directory's entries sorted by name bytes, starting
        strictly after ``after``, at most ``limit``."""

    def list_entries_attrs(
        self, parent: int, after: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, int, int, Attr | None]]:
        """``(name, inode, type, attr)`` of the directory's entries, sorted by name bytes,
        starting strictly after ``after``, at most ``limit`` (``attr`` None when the inode has
        no attributes row). Stores may answer it in one query; this default asks for each
        entry's attributes in turn."""
        return [(n, i, t, self.get_attr(i)) for n, i, t in self.list_entries(parent, after, limit)]

    def any_xattrs(self) -> bool:
        """Whether some inode may have an extended attribute (a store that cannot tell cheaply
        answers True)."""
        return True

    def inodes_with_xattrs(self, inodes: list[int]) -> set[int]:
        """Those of ``inodes`` that have at least one extended attribute. Stores may answer it
        in one query; this default lists each inode's in turn."""
        return {i for i in inodes if self.list_xattrs(i)}

    @abstractmethod
    def has_entries(self, parent: int) -> bool:
        """Whether the directory has any entry."""

    @abstractmethod
    def entry_parents(self, inode: int) -> list[tuple[int, bytes]]:
        """Every ``(parent, name)`` that names ``inode`` (hard links)."""

    # ---- symlinks
    @abstractmethod
    def get_symlink(self, inode: int) -> bytes | None:
        """Target of a symlink."""

    @abstractmethod
    def set_symlink(self, inode: int, target: bytes) -> None:
        """Store a symlink target."""

    @abstractmethod
    def delete_symlink(self, inode: int) -> None:
        """Forget a symlink target."""

    # ---- extended attributes
    @abstractmethod
    def get_xattr(self, inode: int, name: str) -> bytes | None:
        """Value of one xattr."""

    @abstractmethod
    def set_xattr(self, inode: int, name: str, value: bytes) -> None:
        """Create or replace one xattr."""

    @abstractmethod
    def remove_xattr(self, inode: int, name: str) -> bool:
        """Remove one xattr; whether it existed."""

    @abstractmethod
    def list_xattrs(self, inode: int) -> list[tuple[str, bytes]]:
        """Every ``(name, value)`` of the inode, sorted by name."""

    @abstractmethod
    def delete_xattrs(self, inode: int) -> None:
        """Remove every xattr of the inode."""

    # ---- chunks and slice references
    @abstractmethod
    def read_chunk(self, inode: int, indx: int) -> bytes:
        """Concatenated 24-byte records of the chunk in append order (b"" when none)."""

    @abstractmethod
    def append_chunk(self, inode: int, indx: int, records: bytes) -> int:
        """Append records to the chunk; returns the number of records it now holds."""

    @abstractmethod
    def write_chunk(self, inode: int, indx: int, records: bytes) -> None:
        """Replace the chunk's records (b"" deletes the chunk)."""

    @abstractmethod
    def chunk_indexes(self, inode: int) -> list[int]:
        """Indexes of the inode's chunks that have records, ascending."""

    @abstractmethod
    def iter_chunks(self) -> Iterator[tuple[int, int, bytes]]:
        """Every ``(inode, indx, records)`` in the store."""

    @abstractmethod
    def add_slice_ref(self, slice_id: int, size: int, delta: int) -> int:
        """Add ``delta`` to the reference count of slice ``(id, size)`` (creating it at 0);
        returns the new count."""

    @abstractmethod
    def slice_refs(self) -> Iterator[tuple[int, int, int]]:
        """Every ``(id, size, refs)``."""

    # ---- counters (SQL convention)
    @abstractmethod
    def get_counter(self, name: str) -> int:
        """Counter value; 0 when absent."""

    @abstractmethod
    def add_counter(self, name: str, delta: int) -> int:
        """Add to a counter (creating it at 0); returns the new value."""

    @abstractmethod
    def set_counter(self, name: str, value: int) -> None:
        """Set a counter."""

    # ---- sustained inodes (JuiceFS's jfs_sustained; Redis: session{sid} sets)
    @abstractmethod
    def add_sustained(self, session: int, inode: int) -> None:
        """Record that session ``session`` holds ``inode`` open after its last link went (a
        no-op when already recorded)."""

    @abstractmethod
    def remove_sustained(self, session: int, inode: int) -> None:
        """Forget one sustained inode (a missing one: no error)."""

    @abstractmethod
    def sustained(self) -> list[tuple[int, int]]:
        """Every ``(session, inode)``, by session, then in the order they were recorded."""

    # ---- per-directory statistics (direct children only)
    @abstractmethod
    def update_dir_stats(self, inode: int, length: int, space: int, inodes: int) -> None:
        """Add the deltas to the directory's stats row (creating it at 0)."""

    @abstractmethod
    def delete_dir_stats(self, inode: int) -> None:
        """Remove the directory's stats row."""

    @abstractmethod
    def get_dir_stats(self, inode: int) -> tuple[int, int, int] | None:
        """``(data_length, used_space, used_inodes)`` of a directory, or None."""


class MetaStore(ABC):
    """One volume's metadata, kept in a local directory (``meta_dir``) or behind a server.

    A store is used by one engine at a time; the engine serialises write transactions, so stores
    need isolation only between their own read and write transactions.
    """

    #: the ``metadata_store_type`` name the plugin is registered under
    name: ClassVar[str] = ""
    capabilities: ClassVar[MetaStoreCapabilities] = MetaStoreCapabilities()
    #: file name of the index snapshot (``meta.db``, ``meta.rdb``) inside a meta dir
    index_filename: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def open(cls, meta_dir: str | Path, *, read_only: bool = False) -> "MetaStore":
        """Open the store kept in ``meta_dir`` (created empty when missing, unless read-only)."""

    @classmethod
    @abstractmethod
    def restore(
        cls,
        index_path: str | Path,
        meta_dir: str | Path,
        *,
        verified: bool = False,
        move: bool = False,
    ) -> None:
        """Place a snapshot made by :meth:`snapshot` into ``meta_dir`` so :meth:`open` opens it.

        Raises :class:`~volume.errors.VolumeIndexCorrupt` when the file is not a valid index.
        ``verified``: the caller matched the file against a hash recorded when the snapshot was
        made (a committed version's index), so its bytes are the ones :meth:`snapshot` wrote;
        the store may then skip the checks that only find damage (a scan of the whole file),
        but still refuses a file that is not an index of its kind. ``move``: the caller gives
        the file up, so it may be renamed into place rather than copied (see
        :func:`place_file`); it is gone once the restore succeeded.
        """

    @abstractmethod
    def is_formatted(self) -> bool:
        """Whether a Format setting exists."""

    @abstractmethod
    def format(self, fmt: Format, now_ns: int) -> None:
        """Initialise an empty store as ``juicefs format`` does: schema, setting, counters, root
        inode (and trash inode when ``TrashDays > 0``)."""

    @abstractmethod
    def load_format(self) -> Format:
        """The stored Format; :class:`~volume.errors.VolumeIndexCorrupt` when missing or bad."""

    @abstractmethod
    def save_format(self, fmt: Format) -> None:
        """Replace the stored Format."""

    @abstractmethod
    def transaction(self, write: bool = False) -> contextlib.AbstractContextManager[MetaTxn]:
        """A transaction: committed when the block exits normally, rolled back on an exception."""

    @abstractmethod
    def snapshot(self, dest: str | Path) -> int:
        """Write a consistent copy of the whole store to the file ``dest``; returns its size."""

    @abstractmethod
    def close(self) -> None:
        """Release the store; no method is called afterwards."""

    def __enter__(self) -> "MetaStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def place_file(source: Path, dest: Path, *, move: bool) -> None:
    """Put ``source``'s bytes at ``dest`` for a :meth:`MetaStore.restore`: a rename when the
    caller gave the file up (``move``) and both lie on one file system, else a copy (a moved file
    from another file system is removed after its copy)."""
    if move:
        try:
            os.replace(source, dest)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    shutil.copyfile(source, dest)
    if move:
        source.unlink()


def parse_stored_format(text: str | bytes | None, *, missing: str, holder: str) -> Format:
    """The Format a store read back, for :meth:`MetaStore.load_format`.

    Raises :class:`~volume.errors.VolumeIndexCorrupt` with ``missing`` as the message when
    ``text`` is None, and naming ``holder`` (what held it) when it is not a Format JSON object.
    """
    if text is None:
        raise VolumeIndexCorrupt(missing)
    try:
        return Format.from_json(text)
    except (ValueError, TypeError) as exc:
        raise VolumeIndexCorrupt(f"{holder} is not a valid Format JSON object: {exc}") from exc
