"""``MemoryObjectStore``: an in-process object store for tests (storage name ``memory``).

Stores opened with the same name in one process share their objects (like fsspec's memory file
system), so a test can reopen what the engine wrote. Each named store counts its operations
(:class:`MemoryStoreStats`) and can be told to fail the next calls
(:meth:`~MemoryObjectStore.fail_next`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar, Iterator

from ..errors import ObjectExists, ObjectNotFound, VolumeValidationError
from ..keys import validate_key, validate_prefix, validate_range
from ..stores import ObjectInfo, ObjectStore, ObjectStoreCapabilities

__all__ = ["MemoryObjectStore", "MemoryStoreStats"]

_SCHEME = "memory://"
#: the operations that are counted and that :meth:`MemoryObjectStore.fail_next` can fail
OPERATIONS = ("get", "put", "head", "list", "delete")


@dataclass
class MemoryStoreStats:
    """How many operations a named store completed, and the bytes they moved.

    ``exists``, ``get_file`` and ``put_file`` count as the ``head``, ``get`` or ``put`` they make.
    """

    gets: int = 0
    get_bytes: int = 0
    puts: int = 0
    put_bytes: int = 0
    heads: int = 0
    lists: int = 0
    deletes: int = 0

    def copy(self) -> "MemoryStoreStats":
        """A snapshot that later operations do not change."""
        return dataclasses.replace(self)

    def __sub__(self, earlier: "MemoryStoreStats") -> "MemoryStoreStats":
        """What happened since the snapshot ``earlier``."""
        names = [counter.name for counter in dataclasses.fields(self)]
        return MemoryStoreStats(
            **{name: getattr(self, name) - getattr(earlier, name) for name in names}
        )


@dataclass
class _SharedStore:
    """The state every store opened under one name shares."""

    objects: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stats: MemoryStoreStats = field(default_factory=MemoryStoreStats)
    faults: dict[str, deque[BaseException]] = field(default_factory=dict)


class MemoryObjectStore(ObjectStore):
    """Objects in a dict, shared by every store of the same name in this process."""

    name = "memory"
    # not ``local``: the engine then exercises its remote-store path (block cache, readahead)
    capabilities = ObjectStoreCapabilities(conditional_put=True, range_reads=True, local=False)

    _shared: ClassVar[dict[str, _SharedStore]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str) -> None:
        """Open the store called ``name`` (created empty on first use)."""
        if not name or "\0" in name:
            raise VolumeValidationError(
                f"memory store name {name!r} is not valid; give a non-empty name without NUL"
            )
        self._name = name
        with MemoryObjectStore._shared_lock:
            self._state = MemoryObjectStore._shared.setdefault(name, _SharedStore())

    @classmethod
    def from_uri(
        cls, uri: str, *, region: str | None = None, **options: object
    ) -> "MemoryObjectStore":
        """Open ``memory://<name>`` (a trailing ``/`` is ignored). Takes no options."""
        if options:
            raise VolumeValidationError(
                f"the memory object store takes no options (got {', '.join(sorted(options))})"
            )
        if not isinstance(uri, str) or not uri.startswith(_SCHEME):
            raise VolumeValidationError(
                f"{uri!r} is not a memory store URI; write memory://<name>"
            )
        return cls(uri[len(_SCHEME) :].rstrip("/"))

    @classmethod
    def reset(cls, name: str | None = None) -> None:
        """Forget the store called ``name`` (every store when None): its objects, stats and
        faults. Stores already open keep the old state; open them again."""
        with cls._shared_lock:
            if name is None:
                cls._shared.clear()
            else:
                cls._shared.pop(name, None)

    @property
    def uri(self) -> str:
        """``memory://<name>/``."""
        return f"{_SCHEME}{self._name}/"

    @property
    def stats(self) -> MemoryStoreStats:
        """The live counters of this named store (``stats.copy()`` takes a snapshot)."""
        return self._state.stats

    def fail_next(self, operation: str, exc: BaseException, count: int = 1) -> None:
        """Make the next ``count`` calls of ``operation`` (one of ``OPERATIONS``) raise ``exc``
        after their arguments are checked and before they change or count anything."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {', '.join(OPERATIONS)}")
        with self._state.lock:
            self._state.faults.setdefault(operation, deque()).extend([exc] * count)

    def clear_faults(self) -> None:
        """Drop every failure still queued by :meth:`fail_next`."""
        with self._state.lock:
            self._state.faults.clear()

    # ------------------------------------------------------------------ object operations

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object."""
        validate_key(key)
        validate_range(start, end)
        with self._state.lock:
            self._raise_fault("get")
            data = self._object(key)[start:end]
            self._state.stats.gets += 1
            self._state.stats.get_bytes += len(data)
        return data

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False) -> None:
        """Store a copy of ``data`` (later changes to a buffer do not reach the object)."""
        validate_key(key)
        data = bytes(data)
        with self._state.lock:
            self._raise_fault("put")
            if if_absent and key in self._state.objects:
                raise ObjectExists(f"object {key!r} already exists in {self.uri}")
            self._state.objects[key] = data
            self._state.stats.puts += 1
            self._state.stats.put_bytes += len(data)

    def head(self, key: str) -> ObjectInfo:
        """Size of the object."""
        validate_key(key)
        with self._state.lock:
            self._raise_fault("head")
            size = len(self._object(key))
            self._state.stats.heads += 1
        return ObjectInfo(key, size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose keys start with ``prefix``, sorted by key (as they were at the call)."""
        validate_prefix(prefix)
        with self._state.lock:
            self._raise_fault("list")
            found = [
                ObjectInfo(key, len(data))
                for key, data in self._state.objects.items()
                if key.startswith(prefix)
            ]
            self._state.stats.lists += 1
        found.sort(key=lambda info: info.key)
        return iter(found)

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is fine."""
        validate_key(key)
        with self._state.lock:
            self._raise_fault("delete")
            self._state.objects.pop(key, None)
            self._state.stats.deletes += 1

    # ------------------------------------------------------------------ internals

    def _object(self, key: str) -> bytes:
        try:
            return self._state.objects[key]
        except KeyError:
            raise ObjectNotFound(f"no object {key!r} in {self.uri}") from None

    def _raise_fault(self, operation: str) -> None:
        pending = self._state.faults.get(operation)
        if pending:
            raise pending.popleft()
