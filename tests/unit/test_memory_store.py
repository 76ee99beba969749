"""MemoryObjectStore: the conformance kit, plus shared names, stats and injected faults."""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from volume.errors import ObjectNotFound, ObjectStoreError, VolumeValidationError
from volume.testing import ObjectStoreTests
from volume.testing.memory import MemoryObjectStore, MemoryStoreStats


@pytest.fixture
def store_name() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex}"
    yield name
    MemoryObjectStore.reset(name)


@pytest.fixture
def memory_store(store_name: str) -> MemoryObjectStore:
    return MemoryObjectStore.from_uri(f"memory://{store_name}")


class TestMemoryObjectStore(ObjectStoreTests):
    shared_across_processes = False  # its objects live in this process

    @pytest.fixture
    def store(self, memory_store: MemoryObjectStore) -> MemoryObjectStore:
        return memory_store


def test_stores_of_one_name_share_objects_and_stats(memory_store: MemoryObjectStore) -> None:
    memory_store.put("k", b"v")
    again = MemoryObjectStore.from_uri(memory_store.uri)  # "memory://<name>/": the slash is ignored
    assert again.get("k") == b"v"
    assert again.stats is memory_store.stats
    other = MemoryObjectStore.from_uri(f"memory://other-{uuid.uuid4().hex}")
    assert list(other.list()) == []


def test_reset_forgets_a_named_store(memory_store: MemoryObjectStore, store_name: str) -> None:
    memory_store.put("k", b"v")
    MemoryObjectStore.reset(store_name)
    reopened = MemoryObjectStore.from_uri(f"memory://{store_name}")
    assert reopened.stats == MemoryStoreStats()
    assert not reopened.exists("k")


def test_stats_count_operations_and_bytes(memory_store: MemoryObjectStore) -> None:
    before = memory_store.stats.copy()
    memory_store.put("a", b"12345")
    memory_store.put("b", b"678")
    memory_store.get("a")
    memory_store.get("a", 1, 3)
    memory_store.head("b")
    memory_store.exists("b")  # a head
    list(memory_store.list(""))
    memory_store.delete("a")
    with pytest.raises(ObjectNotFound):
        memory_store.get("a")  # failed: moves nothing, counts nothing
    assert memory_store.stats - before == MemoryStoreStats(
        gets=2, get_bytes=7, puts=2, put_bytes=8, heads=2, lists=1, deletes=1
    )
    assert before == MemoryStoreStats()  # the snapshot did not move


def test_fail_next_raises_then_recovers(memory_store: MemoryObjectStore) -> None:
    memory_store.put("k", b"v")
    boom = ObjectStoreError("injected")
    memory_store.fail_next("get", boom, count=2)
    for _ in range(2):
        with pytest.raises(ObjectStoreError, match="injected"):
            memory_store.get("k")
    assert memory_store.get("k") == b"v"
    assert memory_store.stats.gets == 1


def test_fail_next_put_changes_nothing(memory_store: MemoryObjectStore) -> None:
    memory_store.fail_next("put", ObjectStoreError("disk on fire"))
    with pytest.raises(ObjectStoreError):
        memory_store.put("k", b"v")
    assert not memory_store.exists("k")
    assert memory_store.stats.puts == 0


def test_fail_next_refuses_unknown_operations(memory_store: MemoryObjectStore) -> None:
    with pytest.raises(ValueError, match="copy"):
        memory_store.fail_next("copy", ObjectStoreError("x"))


@pytest.mark.parametrize("uri", ["", "memory://", "memory:///", "s3://bucket", "memory:x"])
def test_bad_uris_are_refused(uri: str) -> None:
    with pytest.raises(VolumeValidationError):
        MemoryObjectStore.from_uri(uri)


def test_options_are_refused() -> None:
    with pytest.raises(VolumeValidationError, match="fsync"):
        MemoryObjectStore.from_uri("memory://x", fsync=True)
