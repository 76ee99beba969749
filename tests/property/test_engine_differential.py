"""The engine against Linux: random POSIX call sequences on PathFS and on a real directory.

The default run takes well under a minute on two cores. ``-m slow`` runs about five minutes
(``VOLUME_FSMACHINE_EXAMPLES`` sets its number of examples).
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, settings

from volume.engine import CompactionPolicy
from volume.stores import MetaStore, ObjectStore
from volume.testing.fsmachine import EngineMachine
from volume.testing.memory import MemoryObjectStore
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

QUICK = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(
    QUICK,
    max_examples=int(os.environ.get("VOLUME_FSMACHINE_EXAMPLES", 600)),
    stateful_step_count=80,
)


class SQLiteLocalMachine(EngineMachine):
    """SQLite metadata, blocks as files; chunks compacted at 3 records, in the writing thread."""

    compaction = CompactionPolicy(at_records=3, large_piece=96 << 10, background=False)

    def open_stores(self, workdir: str) -> tuple[MetaStore, ObjectStore]:
        return (
            SQLiteMetaStore.open(os.path.join(workdir, "meta")),
            LocalObjectStore.from_uri(os.path.join(workdir, "bucket")),
        )


class SQLiteMemoryMachine(EngineMachine):
    """SQLite metadata, blocks in memory (so object-store behaviour hides nothing); chunks
    compacted at 4 records, by the background worker (racing the machine's next steps)."""

    compaction = CompactionPolicy(at_records=4, large_piece=64 << 10)

    def open_stores(self, workdir: str) -> tuple[MetaStore, ObjectStore]:
        self.bucket_name = f"fsmachine-{uuid.uuid4().hex}"
        return (
            SQLiteMetaStore.open(os.path.join(workdir, "meta")),
            MemoryObjectStore.from_uri(f"memory://{self.bucket_name}"),
        )

    def close_subject(self) -> None:
        try:
            super().close_subject()
        finally:
            MemoryObjectStore.reset(self.bucket_name)


TestEngineSQLiteLocal = SQLiteLocalMachine.TestCase
TestEngineSQLiteLocal.settings = QUICK

TestEngineSQLiteMemory = SQLiteMemoryMachine.TestCase
TestEngineSQLiteMemory.settings = settings(QUICK, max_examples=30)


@pytest.mark.slow
@pytest.mark.timeout(0)  # the budget is the number of examples
class TestEngineSQLiteLocalSlow(SQLiteLocalMachine.TestCase):
    settings = SLOW
