"""Benchmarks: never part of the default run (``python -m pytest -m bench tests/bench``)."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.bench)


def bench_bytes(default: int) -> int:
    """Size knob shared by the benchmarks (``VOLUME_BENCH_BYTES``)."""
    return int(os.environ.get("VOLUME_BENCH_BYTES", default))
