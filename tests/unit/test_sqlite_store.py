"""The metadata-store conformance kit, run against the SQLite store."""

from __future__ import annotations

import pytest
from volume_sqlite import SQLiteMetaStore

from volume.testing.metastore import MetaStoreTests, StoreFactory


class TestSQLiteMetaStore(MetaStoreTests):
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        return SQLiteMetaStore.open
