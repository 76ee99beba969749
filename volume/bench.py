"""``volume bench``: what ``juicefs bench`` measures, for any directory.

Big files are written then read sequentially in ``block_size`` I/Os, small files are written,
read and stat'ed; each thread works on its own files. Values are aggregate throughput, costs are
the phase's wall time per file of one thread (``juicefs bench``'s definitions). Kernel caches are
dropped before each read or stat phase when the process may write ``/proc/sys/vm/drop_caches``
(as root); otherwise reads may be served by the page cache, which the result says.

The target must be an empty directory this process may write into; everything the benchmark
writes goes into one work directory below it, removed afterwards even when the run is interrupted
(SIGINT or SIGTERM). Given the process id of the file system's server (``server_pid``), each row
also carries the CPU seconds that process spent in the phase. The metadata workload lives in
:mod:`volume.benchmeta`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import VolumeUsageError

__all__ = [
    "BenchResult", "BenchRow", "check_target", "cpu_seconds", "drop_caches", "run_bench",
    "work_directory",
]  # fmt: skip

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
    server_cpu: float | None = None  # CPU seconds of the serving process in the phase

    def cells(self) -> tuple[str, ...]:
        """The row as ``juicefs bench`` prints it (plus the server's CPU seconds when known)."""
        precision = 2 if self.unit == "MiB/s" else 1
        value = f"{self.value:.{precision}f} {self.unit}"
        cells = (self.item, value, f"{self.cost:.2f} {self.cost_unit}")
        return cells if self.server_cpu is None else (*cells, f"{self.server_cpu:.2f} s")


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
        return render_table(("ITEM", "VALUE", "COST", "SERVER CPU"), [r.cells() for r in self.rows])


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


def render_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A ``juicefs bench`` table: centred headers, right-aligned cells; as many columns as the
    longest row has."""
    columns = max((len(r) for r in rows), default=1)
    lines = [header[:columns], *rows]
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(columns)]
    divider = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: tuple[str, ...], align: str) -> str:
        padded = [*cells, *("" for _ in range(columns - len(cells)))]
        return "|" + "|".join(f" {c:{align}{w}} " for c, w in zip(padded, widths)) + "|"

    body = [line(r, ">") for r in rows]
    return "\n".join([divider, line(lines[0], "^"), divider, *body, divider])


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds process ``pid`` and its descendants have used so far (all
    threads, and the children it has reaped), from ``/proc``; None without a pid or when the
    process cannot be read. A server that runs its work in a child process (the JuiceFS client
    does) is counted whole."""
    if pid is None:
        return None
    stats = _proc_stats()
    if pid not in stats:
        return None
    children: dict[int, list[int]] = {}
    for child, (parent, _) in stats.items():
        children.setdefault(parent, []).append(child)
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += stats[current][1]
        todo += children.get(current, [])
    return total / os.sysconf("SC_CLK_TCK")


def _proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, clock ticks of user + system time incl. reaped children)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after the command: state [0], ppid [1]; utime, stime, cutime, cstime [11:15]
        out[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    return out


def check_target(path: str | os.PathLike) -> Path:
    """The resolved ``path`` when it is an empty directory this process may write into; raises
    :class:`VolumeUsageError` saying what is wrong otherwise."""
    target = Path(path)
    if not target.exists():
        raise VolumeUsageError(f"{path} does not exist; pass an empty directory to measure")
    if not target.is_dir():
        raise VolumeUsageError(f"{path} is not a directory; pass an empty directory to measure")
    try:
        entries = os.listdir(target)
    except OSError as exc:
        raise VolumeUsageError(f"{path} cannot be listed ({exc.strerror})") from exc
    if entries:
        raise VolumeUsageError(
            f"{path} is not empty ({len(entries)} entries); the benchmark writes and removes "
            f"files only in an empty directory"
        )
    if not os.access(target, os.W_OK | os.X_OK):
        raise VolumeUsageError(f"{path} is not writable by this process")
    return target.resolve()


@contextlib.contextmanager
def work_directory(root: Path) -> Iterator[Path]:
    """A new work directory below ``root``, removed on the way out, also when the run is
    interrupted: SIGTERM is turned into KeyboardInterrupt (like SIGINT) for the duration."""
    work = root / f"__volume_bench_{time.time_ns()}__"
    try:
        work.mkdir()
    except OSError as exc:
        raise VolumeUsageError(f"{root} is not writable ({exc.strerror})") from exc
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield work
    finally:
        try:
            _remove(work)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _remove(work: Path) -> None:
    """Remove ``work`` and what is in it; a second SIGINT while removing does not stop it."""
    while True:
        try:
            shutil.rmtree(work, ignore_errors=True)
            return
        except KeyboardInterrupt:
            continue


def drop_caches() -> bool:
    """Write back dirty pages and drop the page, dentry and inode caches; whether it worked."""
    os.sync()
    try:
        with open(DROP_CACHES, "w") as f:
            f.write("3")
    except OSError:
        return False
    return True


class _Stopped(Exception):
    """A worker thread saw the stop flag (the run was interrupted)."""


def _in_threads(threads: int, work: Callable[[int, threading.Event], None]) -> float:
    """Run ``work(index, stop)`` in ``threads`` threads at once; the wall time in seconds. An
    interrupt sets ``stop`` and waits for the workers to notice before it propagates, so that
    nothing is still writing when the caller cleans up."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def run(index: int) -> None:
        try:
            work(index, stop)
        except _Stopped:
            pass
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    try:
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    except BaseException:
        stop.set()
        for t in pool:
            while t.is_alive():
                try:
                    t.join()
                except KeyboardInterrupt:
                    continue
        raise
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

    def write(self, thread: int, stop: threading.Event) -> None:
        for i in range(self.files):
            if stop.is_set():
                raise _Stopped
            fd = os.open(self._path(thread, i), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            try:
                block = os.urandom(self.block_size)
                for _ in range(self.blocks):
                    if stop.is_set():
                        raise _Stopped
                    if os.write(fd, block) != len(block):
                        raise OSError(f"short write to {self._path(thread, i)}")
            finally:
                os.close(fd)

    def read(self, thread: int, stop: threading.Event) -> None:
        for i in range(self.files):
            if stop.is_set():
                raise _Stopped
            fd = os.open(self._path(thread, i), os.O_RDONLY)
            try:
                for _ in range(self.blocks):
                    if stop.is_set():
                        raise _Stopped
                    if len(os.read(fd, self.block_size)) != self.block_size:
                        raise OSError(f"short read from {self._path(thread, i)}")
            finally:
                os.close(fd)

    def stat(self, thread: int, stop: threading.Event) -> None:
        for i in range(self.files):
            if stop.is_set():
                raise _Stopped
            os.stat(self._path(thread, i))


def _row(item: str, case: _Case, threads: int, seconds: float, cpu: float | None) -> BenchRow:
    """A phase's row: MiB/s and s/file for big files, files/s and ms/file for small ones."""
    if case.name == "bigfile":
        mib = case.file_size / (1 << 20) * case.files * threads
        return BenchRow(item, mib / seconds, "MiB/s", seconds / case.files, "s/file", seconds, cpu)
    per_second = case.files * threads / seconds
    cost = seconds * 1000 / case.files
    return BenchRow(item, per_second, "files/s", cost, "ms/file", seconds, cpu)


def run_bench(
    path: str | os.PathLike,
    *,
    big_file_mb: int = 1024,
    small_file_kb: int = 128,
    small_files: int = 100,
    threads: int = 1,
    block_size_mb: int = 1,
    drop_kernel_caches: bool = True,
    server_pid: int | None = None,
) -> BenchResult:
    """Benchmark the file system holding directory ``path`` as ``juicefs bench`` does.

    ``path`` must be an empty directory; the run works in a new ``__volume_bench_<ns>__``
    directory below it and removes it after (also when interrupted). ``big_file_mb=0`` skips the
    big-file phases, ``small_files=0`` the small-file ones. With ``drop_kernel_caches`` (and the
    right to), caches are dropped system-wide between phases. ``server_pid``: the process serving
    the file system, whose CPU seconds each row then reports.
    """
    if threads < 1 or block_size_mb < 1 or min(big_file_mb, small_file_kb, small_files) < 0:
        raise VolumeUsageError(
            "threads and the block size must be at least 1, sizes and counts at least 0"
        )
    root = check_target(path)
    block = block_size_mb << 20
    with work_directory(root) as work:
        dropped, rows = _run_phases(
            work, big_file_mb, small_file_kb, small_files, threads, block,
            drop_kernel_caches, server_pid,
        )  # fmt: skip
    return BenchResult(
        str(root), block, big_file_mb << 20, small_file_kb << 10, small_files, threads, dropped,
        rows,
    )  # fmt: skip


def _run_phases(
    work: Path, big_file_mb: int, small_file_kb: int, small_files: int, threads: int, block: int,
    drop_kernel_caches: bool, server_pid: int | None,
) -> tuple[bool, list[BenchRow]]:  # fmt: skip
    phases: list[tuple[str, _Case, Callable[[int, threading.Event], None]]] = []
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
    for item, case, phase in phases:
        before = cpu_seconds(server_pid)
        seconds = _in_threads(threads, phase)
        after = cpu_seconds(server_pid)
        cpu = None if before is None or after is None else after - before
        rows.append(_row(item, case, threads, seconds, cpu))
        if dropped:
            drop_caches()
    return dropped, rows
