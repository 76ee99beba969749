"""The ``wasb`` plugin against Azurite: the conformance kit, URIs, errors."""

from __future__ import annotations

import functools
import os

import pytest
from volume_wasb import AzureObjectStore

from volume.testing import ObjectStoreTests

from .conftest import AZURE_CONTAINER


class TestAzureObjectStore(ObjectStoreTests):
    @pytest.fixture
    def store(self, azure_env, unique_prefix):
        # the account and endpoint come from AZURE_STORAGE_CONNECTION_STRING (inherited by the
        # race's other processes)
        store = AzureObjectStore.from_uri(f"abfss://{AZURE_CONTAINER}/{unique_prefix}/root")
        yield store
        store.close()

    @pytest.fixture
    def store_factory(self, store, azure_env):
        # the race's processes may come from a fork server started before this test's env
        return functools.partial(_open_with_env, dict(azure_env.env), store.uri)


def _open_with_env(env: dict[str, str], uri: str) -> AzureObjectStore:
    os.environ.update(env)
    return AzureObjectStore.from_uri(uri)
