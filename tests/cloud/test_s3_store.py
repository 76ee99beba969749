"""The ``s3`` plugin against moto server: the conformance kit, URIs, configuration, errors."""

from __future__ import annotations

import functools

import pytest

from volume.testing import ObjectStoreTests
from volume_s3 import S3ObjectStore

from .conftest import S3_BUCKET


class TestS3ObjectStore(ObjectStoreTests):
    @pytest.fixture
    def store(self, s3_env, unique_prefix):
        store = S3ObjectStore.from_uri(f"s3://{S3_BUCKET}/{unique_prefix}/root")
        yield store
        store.close()

    @pytest.fixture
    def store_factory(self, store, s3_env):
        # the endpoint travels explicitly: the other processes must not depend on our env
        return functools.partial(S3ObjectStore.from_uri, store.uri, endpoint=s3_env.url)
