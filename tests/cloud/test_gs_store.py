"""The ``gs`` plugin against fake-gcs-server: the conformance kit, URIs, errors."""

from __future__ import annotations

import functools

import pytest
from volume_gs import GCSObjectStore

from volume.testing import ObjectStoreTests

from .conftest import GCS_BUCKET


class TestGCSObjectStore(ObjectStoreTests):
    @pytest.fixture
    def store(self, gcs_env, unique_prefix):
        store = GCSObjectStore.from_uri(f"gs://{GCS_BUCKET}/{unique_prefix}/root")
        yield store
        store.close()

    @pytest.fixture
    def store_factory(self, store, gcs_env):
        return functools.partial(GCSObjectStore.from_uri, store.uri, endpoint=gcs_env.url)
