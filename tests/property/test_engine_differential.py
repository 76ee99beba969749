"""The engine against Linux: random POSIX call sequences on PathFS and on a real directory, on each
metadata store (SQLite, Redis). Only the metadata store differs between the runs of one machine,
so a divergence seen on one store only is that store's.

The default run takes about half a minute per store on two cores (most of it comparing the two
trees after every step). ``-m slow`` runs about ten times the examples, minutes per store
(``VOLUME_FSMACHINE_EXAMPLES`` sets their number).
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from volume.engine import CompactionPolicy
from volume.stores import MetaStore, ObjectStore
from volume.testing.fsmachine import EngineMachine
from volume.testing.memory import MemoryObjectStore
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

QUICK = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(QUICK, stateful_step_count=80)
#: the metadata stores; Redis runs fewer examples (each one starts a redis-server)
STORES = ["sqlite", pytest.param("redis", marks=pytest.mark.server)]
LOCAL_EXAMPLES = {"sqlite": 60, "redis": 25}
MEMORY_EXAMPLES = {"sqlite": 20, "redis": 10}


def open_meta(store: str, workdir: str) -> MetaStore:
    if store == "redis":
        from volume_redis import RedisMetaStore

        return RedisMetaStore.open(os.path.join(workdir, "meta"))
    return SQLiteMetaStore.open(os.path.join(workdir, "meta"))


class LocalMachine(EngineMachine):
    """Blocks as files; chunks compacted at 3 records, in the writing thread."""

    store = "sqlite"
    compaction = CompactionPolicy(at_records=3, large_piece=96 << 10, background=False)

    def open_stores(self, workdir: str) -> tuple[MetaStore, ObjectStore]:
        return (
            open_meta(self.store, workdir),
            LocalObjectStore.from_uri(os.path.join(workdir, "bucket")),
        )


class MemoryMachine(EngineMachine):
    """Blocks in memory (so object-store behaviour hides nothing); chunks compacted at 4 records,
    by the background worker (racing the machine's next steps)."""

    store = "sqlite"
    compaction = CompactionPolicy(at_records=4, large_piece=64 << 10)

    def open_stores(self, workdir: str) -> tuple[MetaStore, ObjectStore]:
        self.bucket_name = f"fsmachine-{self.store}-{uuid.uuid4().hex}"
        return (
            open_meta(self.store, workdir),
            MemoryObjectStore.from_uri(f"memory://{self.bucket_name}"),
        )

    def close_subject(self) -> None:
        try:
            super().close_subject()
        finally:
            MemoryObjectStore.reset(self.bucket_name)


def on(machine: type[EngineMachine], store: str) -> type[EngineMachine]:
    """``machine`` with its metadata in ``store`` (named after both: Hypothesis keys its example
    database by the name)."""
    return type(f"{machine.__name__}On{store.title()}", (machine,), {"store": store})


@pytest.mark.parametrize("store", STORES)
def test_engine_with_blocks_as_files_behaves_like_linux(store: str) -> None:
    run_state_machine_as_test(
        on(LocalMachine, store), settings=settings(QUICK, max_examples=LOCAL_EXAMPLES[store])
    )


@pytest.mark.parametrize("store", STORES)
def test_engine_with_blocks_in_memory_behaves_like_linux(store: str) -> None:
    run_state_machine_as_test(
        on(MemoryMachine, store), settings=settings(QUICK, max_examples=MEMORY_EXAMPLES[store])
    )


@pytest.mark.slow
@pytest.mark.timeout(0)  # the budget is the number of examples
@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize(
    ("machine", "examples"),
    [(LocalMachine, {"sqlite": 600, "redis": 400}), (MemoryMachine, {"sqlite": 200, "redis": 100})],
    ids=["blocks-as-files", "blocks-in-memory"],
)
def test_engine_behaves_like_linux_long(
    machine: type[EngineMachine], examples: dict[str, int], store: str
) -> None:
    count = int(os.environ.get("VOLUME_FSMACHINE_EXAMPLES", examples[store]))
    run_state_machine_as_test(on(machine, store), settings=settings(SLOW, max_examples=count))
