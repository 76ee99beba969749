"""The ``s3`` plugin against moto server: the conformance kit, URIs, configuration, errors."""

from __future__ import annotations

import functools
import os

import pytest
from volume_s3 import S3ObjectStore

from volume.testing import ObjectStoreTests

from .conftest import S3_BUCKET


class TestS3ObjectStore(ObjectStoreTests):
    @pytest.fixture
    def store(self, s3_env, unique_prefix):
        store = S3ObjectStore.from_uri(f"s3://{S3_BUCKET}/{unique_prefix}/root")
        yield store
        store.close()

    @pytest.fixture
    def store_factory(self, store, s3_env):
        # the endpoint and credentials travel explicitly: the race's processes may come from a
        # fork server started before this test's environment
        return functools.partial(_open_with_env, dict(s3_env.env), store.uri)


def _open_with_env(env: dict[str, str], uri: str) -> S3ObjectStore:
    os.environ.update(env)
    return S3ObjectStore.from_uri(uri)
