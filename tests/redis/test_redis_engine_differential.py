"""The engine's differential state machine (engine vs a real directory) on the Redis store.

The same machine as ``tests/property/test_engine_differential.py`` runs on SQLite; here only the
metadata store differs, so any divergence is the Redis store's. ``-m slow`` runs a longer budget.
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, settings
from volume_redis import RedisMetaStore

from volume.engine import CompactionPolicy
from volume.stores import MetaStore, ObjectStore
from volume.testing.fsmachine import EngineMachine
from volume.testing.memory import MemoryObjectStore
from volume_local import LocalObjectStore

pytestmark = pytest.mark.server

QUICK = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(
    QUICK,
    max_examples=int(os.environ.get("VOLUME_FSMACHINE_EXAMPLES", 400)),
    stateful_step_count=80,
)


class RedisLocalMachine(EngineMachine):
    """Redis metadata, blocks as files; chunks compacted at 3 records, in the writing thread."""

    compaction = CompactionPolicy(at_records=3, large_piece=96 << 10, background=False)

    def open_stores(self, workdir: str) -> tuple[MetaStore, ObjectStore]:
        return (
            RedisMetaStore.open(os.path.join(workdir, "meta")),
            LocalObjectStore.from_uri(os.path.join(workdir, "bucket")),
        )


class RedisMemoryMachine(EngineMachine):
    """Redis metadata, blocks in memory; compaction by the background worker at 4 records."""

    compaction = CompactionPolicy(at_records=4, large_piece=64 << 10)

    def open_stores(self, workdir: str) -> tuple[MetaStore, ObjectStore]:
        self.bucket_name = f"fsmachine-redis-{uuid.uuid4().hex}"
        return (
            RedisMetaStore.open(os.path.join(workdir, "meta")),
            MemoryObjectStore.from_uri(f"memory://{self.bucket_name}"),
        )

    def close_subject(self) -> None:
        try:
            super().close_subject()
        finally:
            MemoryObjectStore.reset(self.bucket_name)


TestEngineRedisLocal = RedisLocalMachine.TestCase
TestEngineRedisLocal.settings = QUICK

TestEngineRedisMemory = RedisMemoryMachine.TestCase
TestEngineRedisMemory.settings = settings(QUICK, max_examples=20)


@pytest.mark.slow
@pytest.mark.timeout(0)  # the budget is the number of examples
class TestEngineRedisLocalSlow(RedisLocalMachine.TestCase):
    settings = SLOW
