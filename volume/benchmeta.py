"""``volume bench --meta``: a metadata-heavy workload with the ordinary tools, for any directory.

A generated tree (directories, files of skewed small sizes, symbolic links; at least 15,000
files) is packed once, deterministically, into an uncompressed tarball in a cache directory. The
run then times, one after the other: ``tar -x`` of it, ``find``, ``ls -lR``, ``du -s``, reading
every file (``find -exec cat``), ``cp -a`` of the tree and ``rm -rf`` of both copies. Kernel caches
are written back and dropped before each phase when the process may (root); the result says when
it may not. Each phase reports its wall time, the CPU seconds of the tools it ran and, given the
serving process's id, that process's CPU seconds. The outputs are checked (entry count, bytes
read), so a file system that loses entries does not look fast.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .bench import check_target, cpu_seconds, drop_caches, render_table, work_directory
from .errors import VolumeSystemError, VolumeUsageError

__all__ = ["MetaPhase", "MetaResult", "meta_tarball", "run_meta_bench"]

TREE_VERSION = 1  # change when the generated tree changes: it names the cached tarball
TREE = "tree"  # the tree's top directory inside the tarball and the work directory
MTIME = 1_700_000_000
MIN_FILES = 15_000


@dataclass(frozen=True)
class MetaPhase:
    """One phase: wall seconds, the tools' CPU seconds, the server's (None when unknown)."""

    name: str
    seconds: float
    tools_cpu: float
    server_cpu: float | None = None

    def cells(self) -> tuple[str, ...]:
        cells = (self.name, f"{self.seconds:.2f} s", f"{self.tools_cpu:.2f} s")
        return cells if self.server_cpu is None else (*cells, f"{self.server_cpu:.2f} s")


@dataclass(frozen=True)
class MetaResult:
    """A finished metadata benchmark."""

    path: str
    files: int
    directories: int
    symlinks: int
    bytes: int
    caches_dropped: bool
    phases: list[MetaPhase] = field(default_factory=list)

    def phase(self, name: str) -> MetaPhase:
        """The phase called ``name`` (e.g. ``"ls -lR"``)."""
        return next(p for p in self.phases if p.name == name)

    def table(self) -> str:
        header = ("PHASE", "TIME", "TOOLS CPU", "SERVER CPU")
        return render_table(header, [p.cells() for p in self.phases])

    def summary(self) -> str:
        caches = (
            "kernel caches dropped before each phase"
            if self.caches_dropped
            else "kernel caches not dropped (that takes root and /proc/sys/vm/drop_caches): "
            "phases after the first may be served from the kernel's caches"
        )
        return "\n".join(
            [
                f"Tree: {self.files} files, {self.directories} directories, {self.symlinks} "
                f"symbolic links, {self.bytes / (1 << 20):.1f} MiB",
                caches,
                self.table(),
            ]
        )

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Tree:
    files: int
    directories: int
    symlinks: int
    bytes: int


def _shape(files: int) -> tuple[int, int, int]:
    """(top directories, subdirectories each, files per subdirectory) for at least ``files``."""
    top, sub = 20, 10
    return top, sub, -(-files // (top * sub))


def default_cache_dir() -> Path:
    """Where the tarball is kept: ``$VOLUME_BENCH_CACHE``, else ``$XDG_CACHE_HOME/volume``, else
    ``~/.cache/volume``."""
    if os.environ.get("VOLUME_BENCH_CACHE"):
        return Path(os.environ["VOLUME_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "volume"


def meta_tarball(files: int = MIN_FILES, cache_dir: str | os.PathLike | None = None) -> Path:
    """The tarball of the generated tree with ``files`` files, built once (same bytes every time:
    seeded contents, fixed owners and times) and then taken from ``cache_dir``."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    top, sub, per_dir = _shape(files)
    path = cache / f"bench-tree-v{TREE_VERSION}-{top * sub * per_dir}.tar"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
            _pack(tar, top, sub, per_dir)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _entry(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _pack(tar: tarfile.TarFile, top: int, sub: int, per_dir: int) -> None:
    import io

    rnd = random.Random(16)
    tar.addfile(_entry(TREE, tarfile.DIRTYPE, 0o755))
    for t in range(top):
        tdir = f"{TREE}/pkg{t:02d}"
        tar.addfile(_entry(tdir, tarfile.DIRTYPE, 0o755))
        for s in range(sub):
            sdir = f"{tdir}/mod{s:02d}"
            tar.addfile(_entry(sdir, tarfile.DIRTYPE, 0o755))
            for f in range(per_dir):
                # mostly small files, a few larger ones (mean about 3 KiB)
                size = min(int(rnd.expovariate(1 / 3072)), 256 << 10)
                mode = 0o755 if f % 17 == 0 else 0o644
                info = _entry(f"{sdir}/file{f:03d}.dat", tarfile.REGTYPE, mode, size)
                tar.addfile(info, io.BytesIO(rnd.randbytes(size)))
            link = _entry(f"{sdir}/latest", tarfile.SYMTYPE, 0o777)
            link.linkname = f"file{per_dir - 1:03d}.dat"
            tar.addfile(link)


def _describe(tarball: Path) -> _Tree:
    files = directories = symlinks = size = 0
    with tarfile.open(tarball) as tar:
        for info in tar:
            files += info.isfile()
            directories += info.isdir()
            symlinks += info.issym()
            size += info.size if info.isfile() else 0
    return _Tree(files, directories, symlinks, size)


def _tool(args: list[str], cwd: Path) -> tuple[int, int]:
    """Run a tool in ``cwd``; (lines, bytes) it wrote to stdout. Killed when interrupted."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = total = 0
    try:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 20):
            total += len(chunk)
            lines += chunk.count(b"\n")
        err = proc.stderr.read() if proc.stderr is not None else b""
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    if code != 0:
        message = err.decode(errors="replace").strip().splitlines()[:3]
        raise VolumeSystemError(f"{' '.join(args)} failed with status {code}: {message}")
    return lines, total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_meta_bench(
    path: str | os.PathLike,
    *,
    files: int = MIN_FILES,
    cache_dir: str | os.PathLike | None = None,
    drop_kernel_caches: bool = True,
    server_pid: int | None = None,
) -> MetaResult:
    """Run the metadata workload in the empty directory ``path`` (see the module's text).

    ``files``: files in the generated tree (rounded up to fill its directories; the workload the
    issue asks for has :data:`MIN_FILES`, fewer make a quick check). ``server_pid``: the process serving the file system, whose CPU seconds each phase
    then reports. Everything written goes into one work directory below ``path``, removed after,
    also when interrupted.
    """
    if files < 1:
        raise VolumeUsageError("the tree needs at least one file")
    root = check_target(path)
    tarball = meta_tarball(files, cache_dir)
    tree = _describe(tarball)
    entries = tree.files + tree.directories + tree.symlinks
    copy = f"{TREE}.copy"
    steps: list[tuple[str, list[str], str, int | None]] = [
        # phase, command, what its stdout must match ("lines"/"bytes"), the expected value
        ("untar", ["tar", "-xf", str(tarball)], "", None),
        ("find", ["find", TREE], "lines", entries),
        ("ls -lR", ["ls", "-lR", TREE], "", None),
        ("du -s", ["du", "-s", TREE], "lines", 1),
        ("read all", ["find", TREE, "-type", "f", "-exec", "cat", "{}", "+"], "bytes", tree.bytes),
        ("cp -a", ["cp", "-a", TREE, copy], "", None),
        ("rm -rf", ["rm", "-rf", TREE, copy], "", None),
    ]
    phases = []
    with work_directory(root) as work:
        dropped = drop_kernel_caches and drop_caches()
        for name, args, check, expected in steps:
            if dropped:
                drop_caches()
            server_before, tools_before = cpu_seconds(server_pid), _children_cpu()
            start = time.perf_counter()
            lines, size = _tool(args, work)
            seconds = time.perf_counter() - start
            server_after = cpu_seconds(server_pid)
            got = {"lines": lines, "bytes": size}.get(check)
            if expected is not None and got != expected:
                raise VolumeSystemError(
                    f"{name} in {root} gave {got} {check}, expected {expected}: the file system "
                    f"lost or changed what was written"
                )
            server = None
            if server_before is not None and server_after is not None:
                server = server_after - server_before
            phases.append(MetaPhase(name, seconds, _children_cpu() - tools_before, server))
        if os.listdir(work):
            raise VolumeSystemError(f"rm -rf left entries behind in {work}")
    return MetaResult(
        str(root), tree.files, tree.directories, tree.symlinks, tree.bytes, dropped, phases
    )
