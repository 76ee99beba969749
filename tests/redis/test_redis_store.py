"""The metadata-store conformance kit, run against the Redis store (a real private redis-server)."""

from __future__ import annotations

import pytest
from volume_redis import RedisMetaStore

from volume.testing.metastore import MetaStoreTests, StoreFactory

pytestmark = pytest.mark.server


class TestRedisMetaStore(MetaStoreTests):
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        return RedisMetaStore.open
