"""The lifecycle state machine on every installed object store and metadata store type.

The default run is the fast profile; ``VOLUME_LIFECYCLE_STEPS=<n>`` (with ``-m slow``) runs the
long profile: at least ``n`` steps per machine.
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, settings

from volume import plugins
from volume.testing.lifecycle_machine import LifecycleMachine

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

FAST = settings(
    max_examples=6,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
LONG_STEPS = int(os.environ.get("VOLUME_LIFECYCLE_STEPS", "10000"))
LONG = settings(FAST, max_examples=50, stateful_step_count=50, database=None)

META_TYPES = plugins.names(plugins.META_STORES)


class MemoryBucket(LifecycleMachine):
    def make_bucket(self) -> str:
        return f"memory://lifecycle-{uuid.uuid4().hex}"


class LocalBucket(LifecycleMachine):
    pass  # a fresh temporary directory (the default)


BUCKETS = {"memory": MemoryBucket, "file": LocalBucket}


def machine(bucket: str, meta: str) -> type[LifecycleMachine]:
    return type(f"{BUCKETS[bucket].__name__}_{meta}", (BUCKETS[bucket],), {"meta_store_type": meta})


@pytest.mark.parametrize("meta", META_TYPES)
@pytest.mark.parametrize("bucket", sorted(BUCKETS))
def test_lifecycle_machine(bucket: str, meta: str) -> None:
    case = machine(bucket, meta).TestCase
    case.settings = FAST
    case("runTest").runTest()


@pytest.mark.slow
@pytest.mark.timeout(0)
@pytest.mark.parametrize("meta", META_TYPES)
@pytest.mark.parametrize("bucket", sorted(BUCKETS))
def test_lifecycle_machine_long(bucket: str, meta: str) -> None:
    """At least ``VOLUME_LIFECYCLE_STEPS`` (10,000) steps; prints what the rules did."""
    cls = machine(bucket, meta)
    case = cls.TestCase
    case.settings = LONG
    while cls.totals["steps"] < LONG_STEPS:
        case("runTest").runTest()
    print(f"\nlifecycle machine {bucket}/{meta}: {dict(cls.totals)}")
