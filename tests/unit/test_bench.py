"""``volume bench`` (the juicefs bench workload with N threads) and ``volume bench --meta`` on a
plain directory: bad targets are refused, runs leave nothing behind, also when interrupted."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from volume.bench import check_target, cpu_seconds, run_bench
from volume.benchmeta import meta_tarball, run_meta_bench
from volume.errors import VolumeUsageError


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_bad_targets_are_refused(tmp_path: Path, cache: Path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    (tmp_path / "file").write_text("a file")
    cases = {
        tmp_path / "missing": "does not exist",
        tmp_path / "file": "is not a directory",
        tmp_path / "full": "is not empty",
    }
    for target, message in cases.items():
        with pytest.raises(VolumeUsageError, match=message):
            run_bench(target, big_file_mb=1, small_files=1)
        with pytest.raises(VolumeUsageError, match=message):
            run_meta_bench(target, files=10, cache_dir=cache)
    assert (tmp_path / "full" / "x").read_text() == "mine"
    with pytest.raises(VolumeUsageError, match="at least"):
        run_bench(tmp_path, threads=0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_directory_is_refused(tmp_path: Path):
    target = tmp_path / "ro"
    target.mkdir(mode=0o555)
    with pytest.raises(VolumeUsageError, match="not writable"):
        check_target(target)


def test_threads_each_do_the_whole_workload(tmp_path: Path):
    result = run_bench(
        tmp_path, big_file_mb=2, small_file_kb=4, small_files=5, threads=3,
        drop_kernel_caches=False, server_pid=os.getpid(),
    )  # fmt: skip
    assert result.threads == 3 and os.listdir(tmp_path) == []
    assert [r.item for r in result.rows] == [
        "Write big file", "Read big file", "Write small file", "Read small file", "Stat file",
    ]  # fmt: skip
    assert all(r.value > 0 and r.server_cpu is not None for r in result.rows)
    # 3 threads x 5 files in the phase's time
    small = result.row("Write small file")
    assert small.value == pytest.approx(15 / small.seconds)
    assert "SERVER CPU" in result.table()


def test_cpu_seconds_reads_proc():
    assert cpu_seconds(None) is None
    assert cpu_seconds(os.getpid()) > 0
    assert cpu_seconds(2**22 + 12345) is None  # no such process


def test_the_tarball_is_built_once_and_the_same_every_time(tmp_path: Path):
    first = meta_tarball(400, tmp_path / "a")
    again = meta_tarball(400, tmp_path / "b")
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, again)]
    assert digest[0] == digest[1]
    mtime = first.stat().st_mtime_ns
    assert meta_tarball(400, tmp_path / "a") == first and first.stat().st_mtime_ns == mtime


def test_meta_workload_checks_and_cleans_up(tmp_path: Path, cache: Path):
    target = tmp_path / "t"
    target.mkdir()
    result = run_meta_bench(target, files=400, cache_dir=cache, drop_kernel_caches=False)
    assert [p.name for p in result.phases] == [
        "untar", "find", "ls -lR", "du -s", "read all", "cp -a", "rm -rf",
    ]  # fmt: skip
    assert result.files == 400 and result.symlinks == result.directories - 21
    assert all(p.seconds > 0 and p.server_cpu is None for p in result.phases)
    assert os.listdir(target) == []


INTERRUPTED = """
import sys
from volume.benchmeta import run_meta_bench
from volume.bench import run_bench
if sys.argv[1] == "meta":
    run_meta_bench(sys.argv[2], files=20000, cache_dir=sys.argv[3], drop_kernel_caches=False)
else:
    run_bench(sys.argv[2], big_file_mb=100000, threads=2, drop_kernel_caches=False)
"""


@pytest.mark.parametrize("workload", ["meta", "threads"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_removes_what_it_wrote(
    tmp_path: Path, cache: Path, workload: str, sig: int
):
    target = tmp_path / "t"
    target.mkdir()
    if workload == "meta":
        meta_tarball(20000, cache)  # built before: the interrupt lands in a phase
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, workload, str(target), str(cache)],
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any(p.is_file() for p in target.rglob("*")):  # it has written something
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err
    assert os.listdir(target) == []
