"""The lifecycle state machine on every installed object store and metadata store type.

The default run is the fast profile; ``VOLUME_LIFECYCLE_STEPS=<n>`` (with ``-m slow``) runs the
long profile: at least ``n`` steps per machine.
"""

from __future__ import annotations

import os
import time
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
# the long run reports its progress after each batch of about 500 steps
LONG = settings(FAST, max_examples=10, stateful_step_count=50, database=None)

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


# --------------------------------------------------------------------------- cloud stores

CLOUD = {  # storage -> (server starter, bucket maker, URI of a prefix in the bucket)
    "s3": ("start_moto", "create_s3_bucket", "s3://lifecycle"),
    "gs": ("start_fake_gcs", "create_gcs_bucket", "gs://lifecycle"),
    "wasb": ("start_azurite", "create_azure_container", "abfs://lifecycle"),
}


@pytest.fixture(scope="module", params=sorted(CLOUD))
def cloud_bucket(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A real server of one cloud store on 127.0.0.1 (skipped, or failed under CI=true, when
    its plugin or server is missing), its environment set for the store's SDK."""
    kind = request.param
    if kind not in plugins.names(plugins.OBJECT_STORES):
        from tests.cloud.servers import require

        require(False, f"the {kind} object-store plugin is not installed")
    from tests.cloud import servers

    start, create, uri = CLOUD[kind]
    args = (tmp_path_factory.mktemp("azurite"),) if kind == "wasb" else ()
    server = getattr(servers, start)(*args)
    saved = {name: os.environ.get(name) for name in server.env}
    try:
        os.environ.update(server.env)
        getattr(servers, create)(server, "lifecycle")
        yield uri
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@pytest.mark.server
def test_lifecycle_machine_on_cloud_stores(cloud_bucket: str) -> None:
    """The machine (sqlite metadata) on S3 (moto), GCS (fake-gcs-server), Azure (Azurite)."""

    class Cloud(LifecycleMachine):
        meta_store_type = "sqlite"

        def make_bucket(self) -> str:
            return f"{cloud_bucket}/m-{uuid.uuid4().hex[:12]}"

    case = Cloud.TestCase
    case.settings = settings(FAST, max_examples=2, stateful_step_count=15)
    case("runTest").runTest()
    assert Cloud.totals["commit"] > 0


@pytest.mark.slow
@pytest.mark.timeout(0)
@pytest.mark.parametrize("meta", META_TYPES)
@pytest.mark.parametrize("bucket", sorted(BUCKETS))
def test_lifecycle_machine_long(bucket: str, meta: str) -> None:
    """At least ``VOLUME_LIFECYCLE_STEPS`` (10,000) steps; prints what the rules did."""
    cls = machine(bucket, meta)
    case = cls.TestCase
    case.settings = LONG
    start = time.monotonic()
    while cls.totals["steps"] < LONG_STEPS:
        case("runTest").runTest()
        elapsed = time.monotonic() - start
        print(f"\n{bucket}/{meta}: {cls.totals['steps']} steps in {elapsed:.0f} s", flush=True)
    print(f"\nlifecycle machine {bucket}/{meta}: {dict(cls.totals)}")
