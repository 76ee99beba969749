"""FUSE integration fixtures: volumes in a local bucket with SQLite metadata, mounted by the kernel.

Tests marked ``fuse`` are skipped, with the reason, only where FUSE cannot work at all
(:func:`volume.mount.fuse.fuse_usable`). On CI (``CI=true``) no test here may skip: a missing
``/dev/fuse``, ``fusermount3``, JuiceFS client or tool fails the run instead of hiding its tier.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from volume.engine import Engine, format_volume, new_format
from volume.mount.fuse import FuseMount, fuse_usable
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore


def on_ci() -> bool:
    """Whether this run is CI's, where every tier must run."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("fuse") is not None:
        usable, why = fuse_usable()
        if not usable:
            if on_ci():
                pytest.fail(f"CI=true and FUSE is not usable here: {why}", pytrace=False)
            pytest.skip(f"FUSE is not usable here: {why}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On CI a skip here (a skipif marker, a missing tool or client) is a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and on_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"CI=true: an integration tier may not be skipped ({reason})"


class MountedVolume:
    """A formatted volume (local bucket + SQLite meta dir) and at most one FUSE mount of it."""

    def __init__(self, root: Path, name: str = "fusevol", block_size_kib: int = 4096):
        self.root = root
        self.name = name
        self.bucket = root / "bucket"
        self.meta_dir = root / "meta"
        self.path = root / "mnt"
        self.objects = LocalObjectStore.from_uri(str(self.bucket))
        meta = SQLiteMetaStore.open(self.meta_dir)
        fmt = new_format(
            name, storage="file", bucket=f"{self.bucket}/", block_size_kib=block_size_kib
        )
        format_volume(meta, self.objects, fmt)
        meta.close()
        self.engine: Engine | None = None
        self.mount: FuseMount | None = None

    def start(
        self, *, read_only: bool = False, timeout: float = 10.0, cache: float = 1.0,
        xattrs: bool = True,
    ) -> Path:  # fmt: skip
        """Open an engine on the volume and mount it; returns the mount path."""
        assert self.mount is None, "already mounted"
        meta = SQLiteMetaStore.open(self.meta_dir, read_only=read_only)
        self.engine = Engine(meta, self.objects, read_only=read_only)
        try:
            self.mount = FuseMount.start(
                self.engine, self.path, read_only=read_only, attr_cache=cache, entry_cache=cache,
                dir_entry_cache=cache, timeout=timeout, fsname=f"volume:{self.name}",
                xattrs=xattrs,
            )  # fmt: skip
        except BaseException:
            self._close_engine()
            raise
        return self.path

    def stop(self) -> None:
        """Unmount and close the engine (its buffered writes are stored first)."""
        if self.mount is not None:
            self.mount.stop()
            self.mount = None
        self._close_engine()

    def restart(self, *, read_only: bool = False) -> Path:
        """Unmount and mount again: a fresh engine and empty kernel caches."""
        self.stop()
        return self.start(read_only=read_only)

    def _close_engine(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine.meta.close()
            self.engine = None

    def block_files(self) -> list[Path]:
        """The block objects in the bucket."""
        return sorted(p for p in (self.bucket / self.name / "chunks").rglob("*") if p.is_file())


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[MountedVolume]:
    """A volume, unmounted; whatever the test mounts is unmounted after it."""
    v = MountedVolume(tmp_path)
    try:
        yield v
    finally:
        v.stop()


@pytest.fixture
def mnt(volume: MountedVolume) -> Path:
    """The mount path of a writable mount of a fresh volume."""
    return volume.start()


def write_file(path: str | os.PathLike, data: bytes, chunk: int = 1 << 20) -> None:
    """Create or replace ``path`` with ``data``, in ``chunk``-sized writes."""
    with open(path, "wb", buffering=0) as f:
        view = memoryview(data)
        for off in range(0, len(view), chunk):
            f.write(view[off : off + chunk])
