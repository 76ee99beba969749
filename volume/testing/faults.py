"""Object-store wrappers for lifecycle tests: one that records, one that injects faults.

Both wrap any :class:`~volume.stores.ObjectStore` and pass every call through.

* :class:`RecordingObjectStore` writes every ``put``, ``get`` and ``delete`` into a shared
  :class:`Recorder`, tagged with the session that made it, so a test can prove that every block
  key is written exactly once and that nothing published is overwritten or deleted.
* :class:`FaultyObjectStore` follows a :class:`FaultPlan`: it fails, delays (which reorders
  concurrent uploads) or stops ``put`` calls whose key matches a pattern, after a chosen number
  of matching calls. "Stop" makes this and every later put fail, as if the writer had died there.

:func:`wrap_lifecycle_stores` makes the lifecycle verbs (mount, fork, migrate) open their object
stores through such a wrapper::

    plan = FaultPlan([Fault(r"/volume\\.json$", "stop")])   # die between index and document
    with wrap_lifecycle_stores(lambda store: FaultyObjectStore(store, plan)):
        rw.commit()  # raises; nothing is published
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ObjectStoreError
from ..stores import ObjectInfo, ObjectStore

__all__ = [
    "Fault",
    "FaultPlan",
    "FaultyObjectStore",
    "InjectedFault",
    "Recorder",
    "RecordingObjectStore",
    "StoreEvent",
    "wrap_lifecycle_stores",
]


class InjectedFault(ObjectStoreError):
    """The failure a :class:`FaultyObjectStore` raises (an ``ObjectStoreError``, errno EIO)."""


class WrappedObjectStore(ObjectStore):
    """An object store that passes every call to ``inner``."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        # blocks go through put (where the wrappers act), never staged past them
        self.capabilities = dataclasses.replace(  # type: ignore[misc]
            inner.capabilities, staging=False
        )
        self.name = inner.name  # type: ignore[misc]

    @classmethod
    def from_uri(cls, uri: str, *, region: str | None = None, **options: object) -> ObjectStore:
        raise TypeError(f"{cls.__name__} wraps an open store; it is not opened from a URI")

    @property
    def uri(self) -> str:
        return self.inner.uri

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        return self.inner.get(key, start, end)

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False) -> None:
        self.inner.put(key, data, if_absent=if_absent)

    def head(self, key: str) -> ObjectInfo:
        return self.inner.head(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()


# =========================================================================== recording


@dataclass(frozen=True)
class StoreEvent:
    """One completed or failed store call."""

    op: Literal["put", "get", "delete"]
    key: str
    tag: str
    ok: bool
    size: int = 0
    if_absent: bool = False
    digest: str = ""
    existed: bool = False  # put: the key was already there before the call


@dataclass
class Recorder:
    """Every store call of a test, in order; ``tag`` names the session now opening stores."""

    tag: str = ""
    events: list[StoreEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, event: StoreEvent) -> None:
        with self.lock:
            self.events.append(event)

    def since(self, start: int) -> list[StoreEvent]:
        with self.lock:
            return self.events[start:]

    def __len__(self) -> int:
        with self.lock:
            return len(self.events)


class RecordingObjectStore(WrappedObjectStore):
    """Writes every put, get and delete into ``recorder`` under the tag current at opening."""

    def __init__(self, inner: ObjectStore, recorder: Recorder) -> None:
        super().__init__(inner)
        self.recorder = recorder
        self.tag = recorder.tag

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False) -> None:
        data = bytes(data)
        existed = self.inner.exists(key)
        digest = hashlib.sha256(data).hexdigest()
        try:
            self.inner.put(key, data, if_absent=if_absent)
        except BaseException:
            self.recorder.add(
                StoreEvent("put", key, self.tag, False, len(data), if_absent, digest, existed)
            )
            raise
        self.recorder.add(
            StoreEvent("put", key, self.tag, True, len(data), if_absent, digest, existed)
        )

    def put_file(self, key, path, *, if_absent: bool = False) -> int:  # type: ignore[no-untyped-def]
        with open(path, "rb") as f:
            data = f.read()
        self.put(key, data, if_absent=if_absent)
        return len(data)

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        data = self.inner.get(key, start, end)
        self.recorder.add(StoreEvent("get", key, self.tag, True, len(data)))
        return data

    def delete(self, key: str) -> None:
        self.recorder.add(StoreEvent("delete", key, self.tag, True))
        self.inner.delete(key)


# =========================================================================== faults


@dataclass
class Fault:
    """What to do to puts whose key matches ``pattern`` (a regular expression, ``re.search``).

    The first ``after`` matching puts pass; the next ``times`` get ``action``: ``"fail"`` raises
    :class:`InjectedFault` (nothing stored), ``"delay"`` sleeps ``seconds`` first (concurrent
    uploads then land out of order), ``"stop"`` fails it and every later put of any key.
    """

    pattern: str
    action: Literal["fail", "delay", "stop"]
    after: int = 0
    times: int = 1
    seconds: float = 0.0
    seen: int = 0


@dataclass
class FaultPlan:
    """The faults shared by every :class:`FaultyObjectStore` of a test."""

    faults: list[Fault] = field(default_factory=list)
    stopped: bool = False
    injected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, key: str) -> tuple[str, float]:
        """The action for a put of ``key`` now: ("pass" | "fail" | "delay" | "stop", seconds)."""
        with self.lock:
            if self.stopped:
                self.injected += 1
                return "stop", 0.0
            for fault in self.faults:
                if not re.search(fault.pattern, key):
                    continue
                fault.seen += 1
                if fault.after < fault.seen <= fault.after + fault.times:
                    self.injected += 1
                    if fault.action == "stop":
                        self.stopped = True
                    return fault.action, fault.seconds
            return "pass", 0.0

    def resume(self) -> None:
        """Let puts through again (the faults stay, but their counts are used up or not)."""
        with self.lock:
            self.stopped = False
            self.faults.clear()


class FaultyObjectStore(WrappedObjectStore):
    """Applies ``plan`` to every put (reads, lists and deletes pass through)."""

    def __init__(self, inner: ObjectStore, plan: FaultPlan) -> None:
        super().__init__(inner)
        self.plan = plan

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False) -> None:
        action, seconds = self.plan.decide(key)
        if action in ("fail", "stop"):
            raise InjectedFault(errno.EIO, f"injected {action} of the put of {key!r}")
        if action == "delay":
            time.sleep(seconds)
        self.inner.put(key, data, if_absent=if_absent)

    def put_file(self, key, path, *, if_absent: bool = False) -> int:  # type: ignore[no-untyped-def]
        with open(path, "rb") as f:
            data = f.read()
        self.put(key, data, if_absent=if_absent)
        return len(data)


# =========================================================================== hooking the lifecycle


@contextlib.contextmanager
def wrap_lifecycle_stores(wrap: Callable[[ObjectStore], ObjectStore]) -> Iterator[None]:
    """Make every object store the lifecycle verbs open pass through ``wrap`` (nests)."""
    from .. import locations

    original = locations.object_store

    def opened(volume):  # type: ignore[no-untyped-def]
        return wrap(original(volume))

    locations.object_store = opened  # type: ignore[assignment]
    try:
        yield
    finally:
        locations.object_store = original  # type: ignore[assignment]
