"""A long-lived mount's own garbage: bucket bytes after rewriting 128 MiB of live data until
2 GiB were written, with the reclaimer (the default) and without it (the baseline, same run).

Sizes: ``VOLUME_BENCH_RECLAIM_MIB`` (written, default 2048) over ``VOLUME_BENCH_RECLAIM_LIVE_MIB``
(live, default 128), in 8 files rewritten whole (``O_TRUNC``) on a local bucket.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from volume import Volume

WRITTEN = int(os.environ.get("VOLUME_BENCH_RECLAIM_MIB", 2048)) << 20
LIVE = int(os.environ.get("VOLUME_BENCH_RECLAIM_LIVE_MIB", 128)) << 20
FILES = 8

pytestmark = [
    pytest.mark.bench,
    pytest.mark.filterwarnings("ignore:kernel \\(FUSE\\) mounts:RuntimeWarning"),
]


def _chunk_bytes(bucket: Path) -> int:
    return sum(f.stat().st_size for f in bucket.rglob("*") if f.is_file() and "chunks" in f.parts)


def _rewrite(bucket: Path, reclaim: bool) -> tuple[int, int]:
    """(bucket bytes with the mount live, bucket bytes after finalize)."""
    rw = Volume.new(f"reclaim-{'on' if reclaim else 'off'}", bucket=str(bucket)).mount(
        transport="none"
    )
    m = rw._mount
    if not reclaim:
        m.reclaimer.stop()
        m.reclaimer = None
    fs, block, written, r = m.pathfs, os.urandom(1 << 20), 0, 0
    size = LIVE // FILES
    while written < WRITTEN:
        for i in range(FILES):
            fd = fs.open(f"/f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            for off in range(0, size, 1 << 20):
                fs.write(fd, block[r % 7 :] + block[: r % 7], off)
            fs.close(fd)
            written += size
        r += 1
    m.engine.drain()
    if m.reclaimer is not None:
        assert m.reclaimer.wait_idle(300)
    live = _chunk_bytes(bucket)
    rw.finalize("end")
    return live, _chunk_bytes(bucket)


def test_reclaim_bucket_bytes(tmp_path: Path):
    off_live, off_end = _rewrite(tmp_path / "off", reclaim=False)
    on_live, on_end = _rewrite(tmp_path / "on", reclaim=True)
    mib = 1 << 20
    print(
        f"\nwrote {WRITTEN // mib} MiB over {LIVE // mib} MiB live: bucket without reclaim "
        f"{off_live / mib:.1f} MiB (after finalize {off_end / mib:.1f}), with reclaim "
        f"{on_live / mib:.1f} MiB (after finalize {on_end / mib:.1f}); ratio "
        f"{off_live / max(on_live, 1):.1f}x"
    )
    assert off_live >= WRITTEN
    assert on_live == LIVE and on_end == LIVE
