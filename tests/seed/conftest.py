"""Fixtures of the seed-compatibility tests: a local bucket, a second metadata-store type, FUSE.

Tests marked ``fuse`` are skipped, with the reason, only where FUSE cannot work at all; on CI
(``CI=true``) they fail instead, so the kernel-mount tier is never hidden.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Iterator

import pytest

from volume import plugins
from volume.mount.fuse import fuse_usable
from volume_sqlite import SQLiteMetaStore


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("fuse") is not None:
        usable, why = fuse_usable()
        if not usable:
            if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
                pytest.fail(f"CI=true and FUSE is not usable here: {why}", pytrace=False)
            pytest.skip(f"FUSE is not usable here: {why}")


@pytest.fixture
def bucket(tmp_path: Path) -> str:
    return str(tmp_path / "bucket")


class TwinSQLiteStore(SQLiteMetaStore):
    """A second metadata-store type with SQLite underneath, so migration needs no server."""

    name = "sqlite-twin"


@pytest.fixture
def twin_store_type(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    original = plugins._entry_points
    real = original(plugins.META_STORES)
    twin = metadata.EntryPoint("sqlite-twin", f"{__name__}:TwinSQLiteStore", plugins.META_STORES)

    def entry_points(group: str) -> dict:
        return {**real, "sqlite-twin": twin} if group == plugins.META_STORES else original(group)

    plugins.load.cache_clear()
    monkeypatch.setattr(plugins, "_entry_points", entry_points)
    yield "sqlite-twin"
    plugins.load.cache_clear()
