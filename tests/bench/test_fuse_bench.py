"""``volume bench`` on a plain directory and on a volume's FUSE mount, in the same run.

Run: ``python -m pytest -m bench tests/bench/test_fuse_bench.py -s``
Sizes: ``VOLUME_BENCH_BYTES`` (big file, default 512 MiB), ``VOLUME_BENCH_SMALL_FILES`` (128 KiB
files, default 200). Reference, same machine kind, one thread: the Go JuiceFS 1.5 client over
SQLite and a local bucket.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from volume.bench import BenchResult, run_bench
from volume.mount.fuse import fuse_usable

from ..integration.conftest import MountedVolume
from .conftest import bench_bytes

BIG_FILE_MB = bench_bytes(512 << 20) >> 20
SMALL_FILES = int(os.environ.get("VOLUME_BENCH_SMALL_FILES", 200))
JUICEFS_GO = {  # value per row, juicefs bench, 1 thread, 1 GiB big file, 100 x 128 KiB files
    "Write big file": 349.0,
    "Read big file": 484.0,
    "Write small file": 282.0,
    "Read small file": 1055.0,
    "Stat file": 5218.0,
}


def _bench(path: Path) -> BenchResult:
    return run_bench(path, big_file_mb=BIG_FILE_MB, small_file_kb=128, small_files=SMALL_FILES)


@pytest.mark.skipif(not fuse_usable()[0], reason=f"FUSE is not usable here: {fuse_usable()[1]}")
def test_volume_mount_against_a_plain_directory(tmp_path: Path):
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    plain = _bench(plain_dir)
    volume = MountedVolume(tmp_path / "volume", name="bench")
    try:
        mounted = _bench(volume.start())
    finally:
        volume.stop()
    print(f"\nplain directory {plain_dir}\n{plain.summary()}")
    print(f"\nvolume FUSE mount (local bucket, SQLite)\n{mounted.summary()}")
    print(f"\n{'ITEM':>18} {'mount/plain':>12} {'mount/JuiceFS Go':>17}")
    for row in mounted.rows:
        print(
            f"{row.item:>18} {row.value / plain.row(row.item).value:>12.2f} "
            f"{row.value / JUICEFS_GO[row.item]:>17.2f}"
        )
    assert [r.item for r in mounted.rows] == list(JUICEFS_GO)
