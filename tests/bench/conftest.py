"""Benchmarks: never part of the default run (``python -m pytest -m bench tests/bench``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from ._memory import steady_memory


BENCH_DIR = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # this hook sees every collected test, not only this directory's: mark ours alone
    for item in items:
        if BENCH_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.bench)


def bench_bytes(default: int) -> int:
    """Size knob shared by the benchmarks (``VOLUME_BENCH_BYTES``)."""
    return int(os.environ.get("VOLUME_BENCH_BYTES", default))


@pytest.fixture(scope="session", autouse=True)
def memory_state() -> Iterator[str]:
    """Free page reporting held off and the free memory touched for the whole benchmark session
    (see ``_memory``), unless ``VOLUME_BENCH_STEADY_MEMORY=0``; the value says what was done."""
    if os.environ.get("VOLUME_BENCH_STEADY_MEMORY", "1") == "0":
        yield "memory left as it was (VOLUME_BENCH_STEADY_MEMORY=0)"
        return
    with steady_memory() as state:
        print(f"\nbenchmark memory: {state}")
        yield state
