"""The FUSE differential machine (kernel mount vs a real directory) with Redis metadata.

The machine is ``test_fuse_differential.FuseMachine``; only the metadata store differs.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings
from volume_redis import RedisMetaStore

from volume.stores import MetaStore, ObjectStore
from volume_local import LocalObjectStore

from .test_fuse_differential import QUICK, SLOW, FuseMachine

pytestmark = [pytest.mark.fuse, pytest.mark.server]


class RedisFuseMachine(FuseMachine):
    """The engine over a private redis-server and a local bucket, mounted by the kernel."""

    def open_stores(self, workdir: str) -> tuple[MetaStore, ObjectStore]:
        return (
            RedisMetaStore.open(os.path.join(workdir, "meta")),
            LocalObjectStore.from_uri(os.path.join(workdir, "bucket")),
        )


TestRedisFuseDifferential = RedisFuseMachine.TestCase
TestRedisFuseDifferential.settings = settings(QUICK, max_examples=30)


@pytest.mark.slow
@pytest.mark.timeout(0)  # the budget is the number of examples
class TestRedisFuseDifferentialSlow(RedisFuseMachine.TestCase):
    settings = SLOW
