"""Listing past one page (1,000 keys) on each cloud server, in key order, prefix-filtered."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from volume_gs import GCSObjectStore
from volume_s3 import S3ObjectStore
from volume_wasb import AzureObjectStore

from .conftest import AZURE_CONTAINER, GCS_BUCKET, S3_BUCKET

COUNT = 1010


@pytest.fixture(params=["s3", "gs", "wasb"])
def store(request, unique_prefix):
    if request.param == "s3":
        request.getfixturevalue("s3_env")
        store = S3ObjectStore.from_uri(f"s3://{S3_BUCKET}/{unique_prefix}")
    elif request.param == "gs":
        request.getfixturevalue("gcs_env")
        store = GCSObjectStore.from_uri(f"gs://{GCS_BUCKET}/{unique_prefix}")
    else:
        request.getfixturevalue("azure_env")
        store = AzureObjectStore.from_uri(f"abfss://{AZURE_CONTAINER}/{unique_prefix}")
    yield store
    store.close()


def test_listing_past_one_page(store) -> None:
    keys = [f"many/{n:05d}" for n in range(COUNT)] + ["many-sibling", "other/x"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: store.put(key, key.encode()), keys))
    listed = [info.key for info in store.list("many/")]
    assert listed == sorted(k for k in keys if k.startswith("many/"))
    assert len(listed) == COUNT
    assert next(info.key for info in store.list("many")) == "many-sibling"  # '-' sorts before '/'
    assert len(list(store.list("many"))) == COUNT + 1  # the string prefix also matches the sibling
    assert [i.size for i in store.list("many/0000")] == [len("many/00000")] * 10
