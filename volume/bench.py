"""``volume bench``: what ``juicefs bench`` measures, for any directory.

Big files are written then read sequentially in ``block_size`` I/Os, small files are written,
read and stat'ed; each thread works on its own files. Values are aggregate throughput, costs are
the phase's wall time per file of one thread (``juicefs bench``'s definitions). Kernel caches are
dropped before each read or stat phase when the process may write ``/proc/sys/vm/drop_caches``
(as root); otherwise reads may be served by the page cache, which the result says.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .errors import VolumeUsageError

__all__ = ["BenchResult", "BenchRow", "drop_caches", "run_bench"]

DROP_CACHES = "/proc/sys/vm/drop_caches"


@dataclass(frozen=True)
class BenchRow:
    """One line of the table: throughput (``value`` in ``unit``) and cost per file."""

    item: str
    value: float
    unit: str  # "MiB/s" or "files/s"
    cost: float
    cost_unit: str  # "s/file" or "ms/file"
    seconds: float  # wall time of the phase

    def cells(self) -> tuple[str, str, str]:
        """The row as ``juicefs bench`` prints it."""
        precision = 2 if self.unit == "MiB/s" else 1
        value = f"{self.value:.{precision}f} {self.unit}"
        return self.item, value, f"{self.cost:.2f} {self.cost_unit}"


@dataclass(frozen=True)
class BenchResult:
    """A finished benchmark: its parameters, its rows, and whether caches were dropped."""

    path: str
    block_size: int
    big_file_size: int
    small_file_size: int
    small_file_count: int
    threads: int
    caches_dropped: bool
    rows: list[BenchRow] = field(default_factory=list)

    def row(self, item: str) -> BenchRow:
        """The row named ``item`` (e.g. ``"Write big file"``)."""
        return next(r for r in self.rows if r.item == item)

    def table(self) -> str:
        """The ``juicefs bench`` table: centred headers, right-aligned cells."""
        lines = [("ITEM", "VALUE", "COST"), *(r.cells() for r in self.rows)]
        widths = [max(len(line[i]) for line in lines) for i in range(3)]
        divider = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
        header = "|" + "|".join(f" {h:^{w}} " for h, w in zip(lines[0], widths)) + "|"
        body = [
            "|" + "|".join(f" {cell:>{w}} " for cell, w in zip(line, widths)) + "|"
            for line in lines[1:]
        ]
        return "\n".join([divider, header, divider, *body, divider])

    def summary(self) -> str:
        """Parameters and cache state, one line each, then the table."""
        mib = 1 << 20
        caches = (
            "kernel caches dropped before each read and stat phase"
            if self.caches_dropped
            else f"kernel caches not dropped (that takes root and {DROP_CACHES}): reads may come "
            f"from the page cache"
        )
        return "\n".join(
            [
                f"BlockSize: {self.block_size // mib} MiB, "
                f"BigFileSize: {self.big_file_size // mib} MiB, "
                f"SmallFileSize: {self.small_file_size // 1024} KiB, "
                f"SmallFileCount: {self.small_file_count}, NumThreads: {self.threads}",
                caches,
                self.table(),
            ]
        )

    def as_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)


def drop_caches() -> bool:
    """Write back dirty pages and drop the page, dentry and inode caches; whether it worked."""
    os.sync()
    try:
        with open(DROP_CACHES, "w") as f:
            f.write("3")
    except OSError:
        return False
    return True


def _in_threads(threads: int, work: Callable[[int], None]) -> float:
    """Run ``work(index)`` in ``threads`` threads at once; the wall time in seconds."""
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            work(index)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


class _Case:
    """Files of one size written, read and stat'ed by every thread (``juicefs bench``'s case)."""

    def __init__(self, directory: Path, name: str, file_size: int, files: int, block_size: int):
        self.directory = directory
        self.name = name
        self.files = files
        if file_size <= block_size:
            self.block_size, self.blocks = file_size, 1
        else:
            self.block_size, self.blocks = block_size, (file_size - 1) // block_size + 1
        self.file_size = self.block_size * self.blocks

    def _path(self, thread: int, index: int) -> str:
        return str(self.directory / f"{self.name}.{thread}.{index}")

    def write(self, thread: int) -> None:
        for i in range(self.files):
            fd = os.open(self._path(thread, i), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            try:
                block = os.urandom(self.block_size)
                for _ in range(self.blocks):
                    if os.write(fd, block) != len(block):
                        raise OSError(f"short write to {self._path(thread, i)}")
            finally:
                os.close(fd)

    def read(self, thread: int) -> None:
        for i in range(self.files):
            fd = os.open(self._path(thread, i), os.O_RDONLY)
            try:
                for _ in range(self.blocks):
                    if len(os.read(fd, self.block_size)) != self.block_size:
                        raise OSError(f"short read from {self._path(thread, i)}")
            finally:
                os.close(fd)

    def stat(self, thread: int) -> None:
        for i in range(self.files):
            os.stat(self._path(thread, i))


def _row(item: str, case: _Case, threads: int, seconds: float) -> BenchRow:
    """A phase's row: MiB/s and s/file for big files, files/s and ms/file for small ones."""
    if case.name == "bigfile":
        mib = case.file_size / (1 << 20) * case.files * threads
        return BenchRow(item, mib / seconds, "MiB/s", seconds / case.files, "s/file", seconds)
    per_second = case.files * threads / seconds
    return BenchRow(item, per_second, "files/s", seconds * 1000 / case.files, "ms/file", seconds)


def run_bench(
    path: str | os.PathLike,
    *,
    big_file_mb: int = 1024,
    small_file_kb: int = 128,
    small_files: int = 100,
    threads: int = 1,
    block_size_mb: int = 1,
    drop_kernel_caches: bool = True,
) -> BenchResult:
    """Benchmark the file system holding directory ``path`` as ``juicefs bench`` does.

    Works in a new ``__volume_bench_<ns>__`` directory below ``path`` and removes it after.
    ``big_file_mb=0`` skips the big-file phases, ``small_files=0`` the small-file ones. With
    ``drop_kernel_caches`` (and the right to), caches are dropped system-wide between phases.
    """
    if threads < 1 or block_size_mb < 1 or min(big_file_mb, small_file_kb, small_files) < 0:
        raise VolumeUsageError(
            "threads and the block size must be at least 1, sizes and counts at least 0"
        )
    if not Path(path).is_dir():
        raise VolumeUsageError(f"{path} is not a directory; pass a directory to measure")
    root = Path(path).resolve()
    work = root / f"__volume_bench_{time.time_ns()}__"
    work.mkdir()
    block = block_size_mb << 20
    phases: list[tuple[str, _Case, Callable[[int], None]]] = []
    if big_file_mb > 0:
        big = _Case(work, "bigfile", big_file_mb << 20, 1, block)
        phases += [("Write big file", big, big.write), ("Read big file", big, big.read)]
    if small_file_kb > 0 and small_files > 0:
        small = _Case(work, "smallfile", small_file_kb << 10, small_files, block)
        phases += [
            ("Write small file", small, small.write),
            ("Read small file", small, small.read),
            ("Stat file", small, small.stat),
        ]
    dropped = drop_kernel_caches and drop_caches()
    rows = []
    try:
        for item, case, phase in phases:
            rows.append(_row(item, case, threads, _in_threads(threads, phase)))
            if dropped:
                drop_caches()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BenchResult(
        str(root), block, big_file_mb << 20, small_file_kb << 10, small_files, threads, dropped,
        rows,
    )  # fmt: skip
