"""Redis against SQLite metadata, side by side in one run: engine metadata operations, the
``volume bench`` small-file rows on a FUSE mount of each, and commit / cold read-only mount of a
100,000-file version on each.

Run: ``python -m pytest -m bench tests/bench/test_redis_bench.py -s``
Goal (issue: the Redis store): redis >= 1.0x sqlite on every metadata row; commit and cold RO mount
of 100,000 files <= 3 s each. ``VOLUME_BENCH_META_FILES`` (10,000), ``VOLUME_BENCH_FILES``
(100,000) and ``VOLUME_BENCH_ROUNDS`` (3) set the sizes. The two stores run back to back in each
round, in alternating order; ratios are medians of the per-round ratios.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import pytest
from volume_redis import RedisMetaStore

from volume import Volume
from volume.bench import run_bench
from volume.engine import Engine, PathFS, format_volume, new_format
from volume.mount.fuse import FuseMount, fuse_usable
from volume.stores import MetaStore
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

FILES = int(os.environ.get("VOLUME_BENCH_META_FILES", 10_000))
RENAMES = FILES // 10
LISTINGS = 10  # one listing of 10,000 entries is too short to time alone
ROUNDS = int(os.environ.get("VOLUME_BENCH_ROUNDS", 3))
BIG_VOLUME_FILES = int(os.environ.get("VOLUME_BENCH_FILES", 100_000))
SMALL_FILES = int(os.environ.get("VOLUME_BENCH_SMALL_FILES", 200))
GOAL_S = 3.0
STORES: dict[str, type[MetaStore]] = {"sqlite": SQLiteMetaStore, "redis": RedisMetaStore}
PHASES = ("create", "stat", "list", "rename", "delete")


def _engine(root: Path, store: type[MetaStore]) -> tuple[Engine, PathFS]:
    objects = LocalObjectStore.from_uri(str(root / "bucket"))
    meta = store.open(root / "meta")
    format_volume(meta, objects, new_format("bench", storage="file", bucket=f"{root}/bucket/"))
    engine = Engine(meta, objects)
    return engine, PathFS(engine)


def _phases(fs: PathFS) -> dict[str, float]:
    """Seconds per phase: create FILES empty files in one directory, stat each, list it
    LISTINGS times, rename RENAMES of them, delete all."""
    names = [f"/d/f{i:06d}" for i in range(FILES)]
    fs.mkdir("/d")
    out = {}

    def timed(phase: str, work: Callable[[], None]) -> None:
        start = time.perf_counter()
        work()
        out[phase] = time.perf_counter() - start

    def create() -> None:
        for name in names:
            fs.close(fs.open(name, os.O_WRONLY | os.O_CREAT))

    def stat() -> None:
        for name in names:
            fs.stat(name)

    def listing() -> None:
        for _ in range(LISTINGS):
            assert len(fs.listdir("/d")) == FILES

    def rename() -> None:
        for i in range(RENAMES):
            fs.rename(names[i], names[i] + "-renamed")
            names[i] += "-renamed"

    def delete() -> None:
        for name in names:
            fs.unlink(name)

    for phase, work in zip(PHASES, (create, stat, listing, rename, delete)):
        timed(phase, work)
    return out


def test_engine_metadata_operations(tmp_path: Path) -> None:
    results: dict[str, list[dict[str, float]]] = {name: [] for name in STORES}
    for rnd in range(ROUNDS):
        order = list(STORES) if rnd % 2 == 0 else list(reversed(STORES))
        for name in order:
            engine, fs = _engine(tmp_path / f"{name}-{rnd}", STORES[name])
            try:
                results[name].append(_phases(fs))
            finally:
                engine.close()
                engine.meta.close()
    counts = {
        "create": FILES, "stat": FILES, "list": FILES * LISTINGS, "rename": RENAMES,
        "delete": FILES,
    }  # fmt: skip
    print(f"\nengine metadata operations, {FILES} files, {ROUNDS} rounds (median ops/s)")
    print(f"{'PHASE':>8} {'sqlite':>10} {'redis':>10} {'redis/sqlite':>13}")
    ratios = {}
    for phase in PHASES:
        ops = {n: statistics.median(counts[phase] / r[phase] for r in results[n]) for n in STORES}
        ratios[phase] = statistics.median(
            s[phase] / r[phase] for s, r in zip(results["sqlite"], results["redis"])
        )
        print(f"{phase:>8} {ops['sqlite']:>10.0f} {ops['redis']:>10.0f} {ratios[phase]:>13.2f}")
    assert set(ratios) == set(PHASES)


class _Mounted:
    def __init__(self, root: Path, store: type[MetaStore]):
        self.engine, _ = _engine(root, store)
        self.mount = FuseMount.start(
            self.engine, root / "mnt", read_only=False, attr_cache=1.0, entry_cache=1.0,
            dir_entry_cache=1.0, timeout=30, fsname="volume:bench",
        )  # fmt: skip

    def stop(self) -> None:
        try:
            self.mount.stop()
        finally:
            self.engine.close()
            self.engine.meta.close()


@pytest.mark.skipif(not fuse_usable()[0], reason=f"FUSE is not usable here: {fuse_usable()[1]}")
def test_fuse_small_files(tmp_path: Path) -> None:
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in STORES}
    for rnd in range(ROUNDS):
        order = list(STORES) if rnd % 2 == 0 else list(reversed(STORES))
        for name in order:
            mounted = _Mounted(tmp_path / f"{name}-{rnd}", STORES[name])
            try:
                result = run_bench(
                    mounted.mount.mount_path, big_file_mb=0, small_file_kb=128,
                    small_files=SMALL_FILES,
                )  # fmt: skip
            finally:
                mounted.stop()
            rows[name].append({row.item: row.value for row in result.rows})
    print(f"\nvolume bench small-file rows, FUSE mount, {SMALL_FILES} x 128 KiB, {ROUNDS} rounds")
    print(f"{'ITEM':>18} {'sqlite':>10} {'redis':>10} {'redis/sqlite':>13}")
    for item in rows["sqlite"][0]:
        values = {n: statistics.median(r[item] for r in rows[n]) for n in STORES}
        ratio = statistics.median(r[item] / s[item] for s, r in zip(rows["sqlite"], rows["redis"]))
        print(f"{item:>18} {values['sqlite']:>10.1f} {values['redis']:>10.1f} {ratio:>13.2f}")


def _commit_and_cold_mount(root: Path, store: str) -> tuple[float, float, float, int]:
    """Seconds to build, commit and cold-mount read-only a BIG_VOLUME_FILES-file version on
    ``store``, and the index size."""
    rw = Volume.new("many", bucket=str(root / "bucket"), metadata_store_type=store).mount(
        transport="none"
    )
    fs = rw._mount.pathfs
    payload = b"x" * 100
    start = time.perf_counter()
    for d in range(BIG_VOLUME_FILES // 1000 + 1):
        fs.mkdir(f"/d{d:03d}")
    for i in range(BIG_VOLUME_FILES):
        fs.write_bytes(f"/d{i // 1000:03d}/f{i:06d}", payload)
    build = time.perf_counter() - start
    start = time.perf_counter()
    version = rw.commit("many files")
    t_commit = time.perf_counter() - start
    rw.unmount()
    start = time.perf_counter()
    ro = version.mount(transport="none")
    assert ro._mount.pathfs.read_bytes("/d000/f000000") == payload
    t_mount = time.perf_counter() - start
    ro.unmount()
    return build, t_commit, t_mount, version.index_bytes


def test_commit_and_cold_mount_of_a_large_redis_version(tmp_path: Path) -> None:
    """Commit (snapshot, pins, upload) and cold read-only mount of a BIG_VOLUME_FILES-file
    version, redis and sqlite in one run."""
    warnings.simplefilter("ignore", RuntimeWarning)
    rows = {name: _commit_and_cold_mount(tmp_path / name, name) for name in ("redis", "sqlite")}
    print(f"\n{BIG_VOLUME_FILES} files: commit and cold RO mount (goal <= {GOAL_S} s each)")
    print(f"{'STORE':>7} {'build s':>8} {'commit s':>9} {'mount s':>8} {'index MB':>9}")
    for name, (build, t_commit, t_mount, size) in rows.items():
        print(f"{name:>7} {build:>8.1f} {t_commit:>9.2f} {t_mount:>8.2f} {size / 1e6:>9.1f}")
    _, t_commit, t_mount, _ = rows["redis"]
    assert t_commit <= GOAL_S and t_mount <= GOAL_S
