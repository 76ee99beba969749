"""The ``wasb`` plugin against Azurite: the conformance kit, URIs, errors."""

from __future__ import annotations

import pytest

from volume.testing import ObjectStoreTests
from volume_wasb import AzureObjectStore

from .conftest import AZURE_CONTAINER


class TestAzureObjectStore(ObjectStoreTests):
    @pytest.fixture
    def store(self, azure_env, unique_prefix):
        # the account and endpoint come from AZURE_STORAGE_CONNECTION_STRING (inherited by the
        # race's other processes)
        store = AzureObjectStore.from_uri(f"abfss://{AZURE_CONTAINER}/{unique_prefix}/root")
        yield store
        store.close()
