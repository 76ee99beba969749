"""Benchmarks: never part of the default run (``python -m pytest -m bench tests/bench``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


BENCH_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # this hook sees every collected test, not only this directory's: mark ours alone
    for item in items:
        if BENCH_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.bench)


def bench_bytes(default: int) -> int:
    """Size knob shared by the benchmarks (``VOLUME_BENCH_BYTES``)."""
    return int(os.environ.get("VOLUME_BENCH_BYTES", default))
