"""The servers the JuiceFS comparison benchmark mounts start, serve and leave nothing behind.

The benchmark itself runs only on request (``-m bench``) and for many minutes; this checks its
moving parts in the default run, so that a broken server fails here and not late in a benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bench._servers import BucketFiles, NullServer, TmpfsVolumeServer, VolumeServer

pytestmark = pytest.mark.fuse

DATA = os.urandom(300_000)


@pytest.mark.parametrize("server_class", [VolumeServer, TmpfsVolumeServer])
def test_a_volume_server_keeps_what_is_written(tmp_path: Path, server_class: type) -> None:
    with server_class(tmp_path / "server") as server:
        assert os.path.ismount(server.mount)
        (server.mount / "f").write_bytes(DATA)
        assert (server.mount / "f").read_bytes() == DATA
        assert server.pid != os.getpid()
    assert not os.path.ismount(server.mount)
    assert server.proc.returncode is not None


def test_the_tmpfs_server_is_in_memory_and_removed_when_it_stops(tmp_path: Path) -> None:
    with TmpfsVolumeServer(tmp_path / "server") as server:
        assert server.mount.is_relative_to(TmpfsVolumeServer.TMPFS)
        (server.mount / "f").write_bytes(DATA)
        assert any(server.tmpfs_root.rglob("chunks/*/*/*"))  # its blocks are on tmpfs
    assert not server.tmpfs_root.exists()


def test_the_null_server_keeps_sizes_and_reads_zeros(tmp_path: Path) -> None:
    with NullServer(tmp_path / "server") as server:
        (server.mount / "f").write_bytes(DATA)
        assert (server.mount / "f").stat().st_size == len(DATA)
        with open(server.mount / "f", "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # not the pages written
            assert f.read() == bytes(len(DATA))
    assert not os.path.ismount(server.mount)


def test_the_bucket_baseline_measures_and_removes_its_files(tmp_path: Path) -> None:
    with BucketFiles(tmp_path / "bucket") as bucket:
        rates = bucket.measure(8 << 20)
        assert set(rates) == {"Write big file", "Read big file"}
        assert all(rate > 0 for rate in rates.values())
    assert not bucket.mount.exists()
