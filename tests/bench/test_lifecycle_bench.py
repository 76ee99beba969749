"""Commit, fork and cold read-only mount of a volume of many small files.

Run: ``python -m pytest -m bench tests/bench/test_lifecycle_bench.py -s``
Goals (issue: the lifecycle): for 100,000 small files, commit <= 3 s, fork <= 3 s with zero block
traffic, read-only mount from a cold local cache <= 3 s. ``VOLUME_BENCH_FILES`` sets the count.
"""

from __future__ import annotations

import os
import secrets
import time
import warnings
from pathlib import Path

from volume import Volume
from volume.testing.memory import MemoryObjectStore

FILES = int(os.environ.get("VOLUME_BENCH_FILES", 100_000))
GOAL_S = 3.0


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def test_commit_fork_mount(tmp_path: Path) -> None:
    warnings.simplefilter("ignore", RuntimeWarning)
    bucket = str(tmp_path / "bucket")
    rw = Volume.new("many", bucket=bucket).mount(transport="none")
    fs = rw._mount.pathfs
    payload = b"x" * 100
    start = time.perf_counter()
    for d in range(FILES // 1000 + 1):
        fs.mkdir(f"/d{d:03d}")
    for i in range(FILES):
        fs.write_bytes(f"/d{i // 1000:03d}/f{i:06d}", payload)
    build = time.perf_counter() - start

    version, t_commit = _timed(lambda: rw.commit("many files"))
    rw.unmount()

    # fork against an in-memory copy of the bucket, to count every byte the fork moves
    mem = f"memory://bench-{secrets.token_hex(4)}"
    store = MemoryObjectStore.from_uri(mem)
    prefix = f"{bucket}/"
    for p in Path(bucket).rglob("*"):
        if p.is_file():
            store.put(str(p)[len(prefix) :], p.read_bytes())
    index_uri = version.index.path.replace(f"file://{bucket}", mem)
    in_memory = version.model_copy(
        update={"bucket": mem, "storage": "memory",
                "index": version.index.model_copy(update={"path": index_uri})}
    )  # fmt: skip
    before = store.stats.copy()
    child, t_fork = _timed(lambda: in_memory.fork("many-fork"))
    moved = store.stats - before
    block_bytes = moved.get_bytes - version.index_bytes + moved.put_bytes

    ro, t_mount = _timed(lambda: version.mount(transport="none"))
    assert ro._mount.pathfs.read_bytes(f"/d000/f{0:06d}") == payload
    ro.unmount()

    print(
        f"\n{FILES} files (built in {build:.1f} s, index {version.index_bytes / 1e6:.1f} MB)\n"
        f"commit {t_commit:.2f} s | fork {t_fork:.2f} s ({block_bytes} non-index bytes moved) | "
        f"cold RO mount {t_mount:.2f} s   (goal <= {GOAL_S} s each)"
    )
    assert block_bytes < 1024  # the domain record only: no block read or written
    assert t_commit <= GOAL_S and t_fork <= GOAL_S and t_mount <= GOAL_S
