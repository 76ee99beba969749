"""The ``gs`` and ``wasb`` plugins: URIs, missing buckets, retries (never on 412), timeouts."""

from __future__ import annotations

import socket
import time

import pytest
from volume_gs import GCSObjectStore
from volume_s3 import BucketNotFound, CredentialsRejected, StoreUnreachable
from volume_wasb import AzureObjectStore

from volume.errors import ObjectExists, VolumeValidationError

from . import servers
from .conftest import AZURE_CONTAINER, GCS_BUCKET
from .proxy import CountingProxy

FAST = {"connect_timeout": 1, "read_timeout": 1, "max_retries": 1, "retry_timeout": 3}


@pytest.mark.parametrize("uri", ["", "gs://", "gs:///p", "s3://b/p", "gs://b/a/../c",
                                 "gs://u:pw@b/p", "gs://b/p?x=1"])  # fmt: skip
def test_gs_bad_uris(uri: str) -> None:
    with pytest.raises(VolumeValidationError):
        GCSObjectStore.from_uri(uri)


@pytest.mark.parametrize("uri", ["", "abfss://", "abfss://@acct.dfs.core.windows.net/p",
                                 "abfss://c@/p", "s3://b", "wasb://c@acct/a//b"])  # fmt: skip
def test_azure_bad_uris(uri: str, monkeypatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    with pytest.raises(VolumeValidationError):
        AzureObjectStore.from_uri(uri)


def test_azure_uri_forms(monkeypatch) -> None:
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME",
                 "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_USE_EMULATOR"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for uri in (
        "abfss://c@acct.dfs.core.windows.net/p/q",
        "abfs://c@acct.dfs.core.windows.net/p/q",
        "wasbs://c@acct.blob.core.windows.net/p/q",
        "wasb://c@acct.blob.core.windows.net/p/q",
    ):
        store = AzureObjectStore.from_uri(uri)
        assert store.account == "acct" and store.bucket == "c" and store.prefix == "p/q/"
        assert store.uri == uri + "/"
        assert store.format_bucket == "https://c.blob.core.windows.net/p/q/"
    with pytest.raises(VolumeValidationError, match="no storage account"):
        AzureObjectStore.from_uri("abfss://c/p")


def test_gs_missing_bucket(gcs_env) -> None:
    store = GCSObjectStore.from_uri("gs://no-such-bucket-here/x")
    for operation in (lambda: store.get("k"), lambda: store.head("k"),
                      lambda: store.put("k", b"v"), lambda: list(store.list())):  # fmt: skip
        with pytest.raises(BucketNotFound, match="no-such-bucket-here") as caught:
            operation()
        assert caught.value.status == 404


def test_azure_missing_container(azure_env) -> None:
    store = AzureObjectStore.from_uri("abfss://no-such-container/x")
    for operation in (lambda: store.get("k"), lambda: store.head("k"),
                      lambda: store.put("k", b"v"), lambda: list(store.list())):  # fmt: skip
        with pytest.raises(BucketNotFound, match="no-such-container") as caught:
            operation()
        assert caught.value.status == 404


def test_azure_bad_key_is_a_credentials_error(azure_env, monkeypatch) -> None:
    conn = azure_env.env["AZURE_STORAGE_CONNECTION_STRING"].replace(
        servers.AZURITE_KEY, "d3JvbmcK" * 11
    )
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
    store = AzureObjectStore.from_uri(f"abfss://{AZURE_CONTAINER}/x", **FAST)
    with pytest.raises(CredentialsRejected, match=AZURE_CONTAINER) as caught:
        store.put("k", b"v")
    assert caught.value.status == 403 and "AZURE_STORAGE_CONNECTION_STRING" in str(caught.value)


def test_gs_retries_5xx_but_not_412(gcs_env) -> None:
    proxy = CountingProxy(gcs_env.url)
    try:
        store = GCSObjectStore.from_uri(f"gs://{GCS_BUCKET}/retry", endpoint=proxy.url)
        proxy.inject(503, 429, methods={"POST"})
        store.put("a", b"1")
        assert [f for _, f in proxy.seen_faults] == [503, 429]
        proxy.inject("reset", 500, methods={"GET"})
        assert store.get("a") == b"1"
        proxy.reset_counts()
        with pytest.raises(ObjectExists):
            store.put("a", b"2", if_absent=True)
        assert proxy.requests[("POST", False)] == 1  # the 412 was not retried
        assert store.get("a") == b"1"
    finally:
        proxy.close()


def test_azure_retries_5xx_but_not_412(azure_env, monkeypatch) -> None:
    proxy = CountingProxy(azure_env.url)
    conn = azure_env.env["AZURE_STORAGE_CONNECTION_STRING"].replace(azure_env.url, proxy.url)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
    try:
        store = AzureObjectStore.from_uri(f"abfss://{AZURE_CONTAINER}/retry")
        proxy.inject(503, 500, methods={"PUT"})
        store.put("a", b"1")
        assert [f for _, f in proxy.seen_faults] == [503, 500]
        proxy.reset_counts()
        with pytest.raises(ObjectExists):
            store.put("a", b"2", if_absent=True)
        assert proxy.requests[("PUT", False)] == 1
        assert store.get("a") == b"1"
    finally:
        proxy.close()


@pytest.mark.parametrize("kind", ["gs", "wasb"])
def test_an_endpoint_that_does_not_answer_times_out(kind, monkeypatch) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        if kind == "gs":
            store = GCSObjectStore.from_uri("gs://bucket/x", endpoint=url, **FAST)
        else:
            monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                               f"AccountName=a;AccountKey={servers.AZURITE_KEY};"
                               f"BlobEndpoint={url}/a")  # fmt: skip
            store = AzureObjectStore.from_uri("abfss://c/x", **FAST)
        started = time.monotonic()
        with pytest.raises(StoreUnreachable, match="did not answer"):
            store.get("k")
        assert time.monotonic() - started < 60
