"""Fixtures: moto (S3), fake-gcs-server (GCS) and Azurite (Azure Blob) on 127.0.0.1, one of each
per test session, started on first use and stopped by process id; each test gets its own prefix
and the environment variables the store's SDKs honour."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from . import servers

S3_BUCKET = "volume-test"
GCS_BUCKET = "volume-test"
AZURE_CONTAINER = "volume-test"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cloud/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[servers.Server]:
    server = servers.start_moto()
    try:
        servers.create_s3_bucket(server, S3_BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[servers.Server]:
    server = servers.start_fake_gcs()
    try:
        servers.create_gcs_bucket(server, GCS_BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Server]:
    server = servers.start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        servers.create_azure_container(server, AZURE_CONTAINER)
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_server: servers.Server, monkeypatch: pytest.MonkeyPatch) -> servers.Server:
    for name in ("AWS_REGION", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in moto_server.env.items():
        monkeypatch.setenv(name, value)
    return moto_server


@pytest.fixture
def gcs_env(gcs_server: servers.Server, monkeypatch: pytest.MonkeyPatch) -> servers.Server:
    for name, value in gcs_server.env.items():
        monkeypatch.setenv(name, value)
    return gcs_server


@pytest.fixture
def azure_env(azurite_server: servers.Server, monkeypatch: pytest.MonkeyPatch) -> servers.Server:
    for name, value in azurite_server.env.items():
        monkeypatch.setenv(name, value)
    return azurite_server


@pytest.fixture
def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
