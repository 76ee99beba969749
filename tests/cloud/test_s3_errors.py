"""The ``s3`` plugin's configuration, typed errors, timeouts and retries, on moto server (a
second moto with IAM checks for credential errors) and through a fault-injecting proxy."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
from volume_s3 import (
    AccessDenied,
    BucketNotFound,
    CredentialsRejected,
    S3ObjectStore,
    StoreUnreachable,
)

from volume import Volume
from volume.errors import ObjectExists, VolumeMountError, VolumeValidationError

from . import servers
from .conftest import S3_BUCKET
from .proxy import CountingProxy

FAST = {"connect_timeout": 1, "read_timeout": 1, "max_retries": 1, "retry_timeout": 3}


@pytest.mark.parametrize(
    "uri",
    ["", "s3://", "s3:///prefix", "gs://bucket", "s3://Bad_Bucket/x", "s3://b/x", "s3://bkt/a/../b",
     "s3://key:secret@bucket/x", "s3://bucket/x?versionId=1"],
)  # fmt: skip
def test_bad_uris_are_refused(uri: str) -> None:
    with pytest.raises(VolumeValidationError):
        S3ObjectStore.from_uri(uri)


def test_unknown_options_and_bad_values_are_refused() -> None:
    with pytest.raises(VolumeValidationError, match="unknown option"):
        S3ObjectStore.from_uri("s3://bucket/x", colour="red")
    with pytest.raises(VolumeValidationError, match="read_timeout"):
        S3ObjectStore.from_uri("s3://bucket/x", read_timeout="soon")
    with pytest.raises(VolumeValidationError, match="endpoint"):
        S3ObjectStore.from_uri("s3://bucket/x", endpoint="ftp://host")


def test_uri_keeps_the_prefix_and_no_credentials(s3_env) -> None:
    with pytest.raises(VolumeValidationError, match="empty segment"):
        S3ObjectStore.from_uri(f"s3://{S3_BUCKET}/some//prefix/")
    store = S3ObjectStore.from_uri(f"s3://{S3_BUCKET}/some/prefix")
    assert store.uri == f"s3://{S3_BUCKET}/some/prefix/"
    store.put("k", b"v")
    assert store.list() and [i.key for i in store.list()] == ["k"]
    root = S3ObjectStore.from_uri(f"s3://{S3_BUCKET}")
    assert root.get("some/prefix/k") == b"v"  # the prefix is a key prefix in the bucket
    assert servers.S3_SECRET not in store.uri + store.format_bucket


def test_region_and_endpoint_precedence(monkeypatch) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    assert S3ObjectStore.from_uri("s3://bucket").region == "us-east-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert S3ObjectStore.from_uri("s3://bucket").region == "eu-west-1"
    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    assert S3ObjectStore.from_uri("s3://bucket").region == "eu-west-2"
    pinned = S3ObjectStore.from_uri("s3://bucket", region="ap-south-1")
    assert pinned.region == "ap-south-1"
    assert pinned.format_bucket == "https://bucket.s3.ap-south-1.amazonaws.com"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert S3ObjectStore.from_uri("s3://bucket").endpoint == "http://127.0.0.1:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2/")
    store = S3ObjectStore.from_uri("s3://bucket/p")
    assert store.endpoint == "http://127.0.0.1:2"
    assert store.format_bucket == "http://127.0.0.1:2/bucket/p/"


def test_missing_bucket(s3_env) -> None:
    store = S3ObjectStore.from_uri("s3://no-such-bucket-here/x")
    for operation in (lambda: store.get("k"), lambda: store.head("k"),
                      lambda: store.put("k", b"v"), lambda: list(store.list())):  # fmt: skip
        with pytest.raises(BucketNotFound, match="no-such-bucket-here") as caught:
            operation()
        assert caught.value.status == 404 and "create the bucket" in str(caught.value)


@pytest.fixture(scope="module")
def iam_moto():
    """A moto server that checks credentials and IAM policies (after 3 setup calls)."""
    binary = servers.moto_binary()
    servers.require(binary is not None, "moto_server is not installed")
    port = servers.free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    process = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    server = servers.Server("moto-iam", process, f"http://127.0.0.1:{port}", port)
    try:
        servers._wait_http(server, "/moto-api/")
        import boto3

        kw = {
            "endpoint_url": server.url,
            "region_name": "us-east-1",
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        boto3.client("s3", **kw).create_bucket(Bucket="guarded")
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="nobody")
        key = iam.create_access_key(UserName="nobody")["AccessKey"]
        yield server, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        server.stop()


def test_bad_credentials_and_access_denied(iam_moto, monkeypatch) -> None:
    server, key_id, secret = iam_moto
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    store = S3ObjectStore.from_uri("s3://guarded/x", **FAST)
    with pytest.raises(CredentialsRejected, match="guarded") as caught:
        store.get("k")
    assert caught.value.status == 403 and "AWS_ACCESS_KEY_ID" in str(caught.value)
    assert "wrong" not in str(caught.value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    store = S3ObjectStore.from_uri("s3://guarded/x", **FAST)
    with pytest.raises(AccessDenied, match="guarded") as caught:
        store.put("k", b"v")
    assert caught.value.status == 403 and "policy" in str(caught.value)
    assert secret not in str(caught.value)


def test_an_endpoint_that_does_not_answer_times_out(s3_env, monkeypatch) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        store = S3ObjectStore.from_uri("s3://bucket/x", **FAST)
        started = time.monotonic()
        with pytest.raises(StoreUnreachable, match="did not answer") as caught:
            store.get("k")
        assert time.monotonic() - started < 20
        assert caught.value.status is None


def test_retries_on_5xx_throttling_and_resets_but_not_on_a_failed_precondition(s3_env) -> None:
    proxy = CountingProxy(s3_env.url)
    try:
        store = S3ObjectStore.from_uri(f"s3://{S3_BUCKET}/retry", endpoint=proxy.url)
        proxy.inject(503, 429, 500, methods={"PUT"})  # 429 and 503 SlowDown: throttling
        store.put("a", b"1")
        assert [f for _, f in proxy.seen_faults] == [503, 429, 500]
        assert store.get("a") == b"1"
        proxy.inject("reset", 503, methods={"GET"})
        assert store.get("a") == b"1"
        assert len(proxy.seen_faults) == 2
        proxy.reset_counts()
        with pytest.raises(ObjectExists):
            store.put("a", b"2", if_absent=True)
        assert proxy.requests[("PUT", False)] == 1  # the 412 was not retried
        assert store.get("a") == b"1"
        proxy.inject(*([503] * 50), methods={"GET"})
        quick = S3ObjectStore.from_uri(f"s3://{S3_BUCKET}/retry", endpoint=proxy.url, **FAST)
        with pytest.raises(Exception) as caught:
            quick.get("a")
        assert getattr(caught.value, "status", None) == 503
    finally:
        proxy.close()


def test_a_store_without_create_only_puts_refuses_writable_mounts(
    s3_env, monkeypatch, unique_prefix, tmp_path
) -> None:
    monkeypatch.setenv("VOLUME_S3_CONDITIONAL_PUT", "false")
    monkeypatch.delenv("UNION_VOLUME_SINGLE_WRITER", raising=False)
    assert not S3ObjectStore.from_uri(f"s3://{S3_BUCKET}/x").capabilities.conditional_put
    volume = Volume.new("single", bucket=f"s3://{S3_BUCKET}/{unique_prefix}")
    with pytest.raises(VolumeMountError, match="UNION_VOLUME_SINGLE_WRITER"):
        volume.mount(meta_dir=tmp_path / "m1", transport="none")
    monkeypatch.setenv("UNION_VOLUME_SINGLE_WRITER", "1")
    volume.mount(meta_dir=tmp_path / "m2", transport="none")
    volume._mount.pathfs.write_bytes("/f", b"data")
    version = volume.finalize("single writer")
    assert version.index is not None
