"""Fixtures for running real Flyte 2 tasks in local mode, with no network.

Every test here runs with a guard that refuses any socket connection or name lookup beyond this
machine and fails the test if one was attempted: local runs must not reach a control plane,
a telemetry endpoint or anything else.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest

if os.environ.get("CI") == "true":
    # CI installs the test extra: a missing SDK fails this tier instead of skipping it
    import flyte  # noqa: F401

PROJECT = "demo"
DOMAIN = "development"


def _local(host: Any) -> bool:
    if not isinstance(host, str):
        return True
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch):
    """Refuse (and record) every connection or lookup that would leave this machine."""
    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            attempts.append(f"connect {address!r}")
            raise OSError(f"network access refused in tests: {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _local(host):
            attempts.append(f"lookup {host!r}")
            raise socket.gaierror(f"name lookup refused in tests: {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    # the SDK's crash reporting is for its CLI, and off under pytest; say no explicitly anyway
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.delenv("UNION_VOLUME_BUCKET", raising=False)
    yield attempts
    assert attempts == [], f"the test tried to reach the network: {attempts}"


@pytest.fixture
def raw_data(tmp_path: Path) -> Path:
    """The local runs' raw data path (the root new volumes default under)."""
    path = tmp_path / "raw"
    path.mkdir()
    return path


@pytest.fixture
def run_local(raw_data: Path) -> Callable[..., Any]:
    """Run a task in local mode, as project/domain demo/development; returns its output (a
    tuple when it has several)."""

    flyte = pytest.importorskip("flyte", reason="the flyte extra is not installed")

    def run(task: Any, *args: Any, project: str | None = PROJECT, **kwargs: Any) -> Any:
        flyte.init(project=project, domain=DOMAIN if project else None)
        runner = flyte.with_runcontext(mode="local", raw_data_path=str(raw_data))
        outputs = tuple(runner.run(task, *args, **kwargs).outputs())
        return outputs[0] if len(outputs) == 1 else outputs

    return run


@pytest.fixture
def volumes_bucket(raw_data: Path) -> Path:
    """Where volumes made in the tasks of ``run_local`` land by default."""
    return raw_data / PROJECT / DOMAIN / "volumes"


@pytest.fixture(autouse=True)
def unmount_left_behind() -> Any:
    """Unmount the working copies that failing tasks left mounted (abandoning their writes)."""
    yield
    tasks = sys.modules.get(f"{__package__}.tasks")
    left = getattr(tasks, "LEFT_MOUNTED", [])
    while left:
        handle = left.pop()
        if handle.mounted:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                handle.unmount()
