"""``volume demo``, ``volume bench`` and ``volume plugins``."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import stat
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import click

from .. import plugins
from ._common import common, emit, examples, table

DEFAULT_DEMO_BUCKET = "volume-demo-bucket"


# --------------------------------------------------------------------------- plugins


@click.command("plugins")
@common
@examples("volume plugins", "volume plugins --json")
def plugins_cmd() -> int:
    """List the installed store plugins with their versions."""
    rows = [dataclasses.asdict(p) for p in plugins.report()]

    def human(out: Any) -> None:
        t = table("group", "name", "version", "provided by")
        for r in rows:
            t.add_row(r["group"], r["name"], r["version"], r["value"])
        out.print(t)

    emit(rows, human)
    return 0


# --------------------------------------------------------------------------- demo


def _demo_tree(fs: Any) -> None:
    """Write a small tree with a multi-block file, a hard link, a symlink and an xattr."""
    fs.makedirs("/docs/notes", exist_ok=True)
    fs.write_bytes("/docs/readme.txt", b"versioned, forkable volumes\n")
    fs.write_bytes("/docs/notes/todo.txt", b"commit, fork, migrate\n")
    big = hashlib.sha256(b"seed").digest() * (10 * (1 << 20) // 32)  # 10 MiB, not all zeros
    fs.write_bytes("/data.bin", big)
    fs.link("/docs/readme.txt", "/readme-link.txt")
    fs.symlink("docs/readme.txt", "/readme-symlink")
    fs.setxattr("/data.bin", "user.origin", b"volume demo")


def _digests(fs: Any) -> dict[str, str]:
    out = {}
    stack = ["/"]
    while stack:
        path = stack.pop()
        for name, _ino, st in fs.scandir(path):
            full = f"{path.rstrip('/')}/{name}"
            if stat.S_ISDIR(st.st_mode):
                stack.append(full)
            elif stat.S_ISREG(st.st_mode):
                out[full] = hashlib.sha256(fs.read_bytes(full)).hexdigest()
    return out


def _demo_bucket(bucket: str) -> str:
    """A plain path becomes absolute; a URI is kept as given (its store plugin must exist)."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", bucket):
        return bucket
    return str(Path(bucket).resolve())


@click.command("demo")
@click.argument("bucket", default=DEFAULT_DEMO_BUCKET, metavar="[BUCKET]")
@click.option("--name", help="Volume name (default: demo-<8 hex>).")
@common
@examples("volume demo", "volume demo --name demo-vol ./bucket", "volume demo s3://my-bucket/demo")
def demo_cmd(bucket: str, name: str | None) -> int:
    """Create, commit, fork and read back a volume.

    BUCKET is a local directory (default ./volume-demo-bucket) or an object-store URI of an
    installed store plugin. The demo creates a volume, writes a tree, commits; forks the commit,
    changes the fork, finalizes it; mounts both versions read-only (in-process) and checks what
    each holds; walks the lineage.
    """
    from ..lineage import walk
    from ..model import Volume

    bucket = _demo_bucket(bucket)
    name = name or f"demo-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # in-process mounts: said in the output
        rw = Volume.new(name, bucket=bucket).mount(transport="none")
        _demo_tree(rw._mount.pathfs)
        first = rw.finalize("a tree with a big file, links and an xattr")
        fork = first.fork(f"{name}-fork").mount(transport="none")
        fork._mount.pathfs.write_bytes("/docs/notes/todo.txt", b"forked and changed\n")
        fork._mount.pathfs.unlink("/data.bin")
        second = fork.finalize("changed a note, removed the big file")
        contents = {}
        for version in (first, second):
            with version.mount(transport="none") as ro:
                contents[version.name] = _digests(ro._mount.pathfs)
    a, b = contents[first.name], contents[second.name]
    verified = (
        "/data.bin" in a
        and "/data.bin" not in b
        and {p for p in b if a.get(p) != b[p]} == {"/docs/notes/todo.txt"}
    )
    result = {
        "bucket": bucket,
        "storage": first.storage,
        "versions": [
            {
                "name": v.name,
                "message": v.message,
                "files": len(contents[v.name]),
                "used_bytes": v.used_bytes,
                "inodes": v.inode_count,
                "index_bytes": v.index_bytes,
                "locator": v.produced_by.locator if v.produced_by else None,
            }
            for v in (first, second)
        ],
        "lineage": [v.name for v in walk(second)],
        "verified": verified,
        "seconds": round(time.perf_counter() - started, 3),
    }

    def human(out: Any) -> None:
        r = result
        where = "local" if r["storage"] == "file" else r["storage"]
        lines = [f"bucket {r['bucket']} ({where}), metadata in SQLite, mounted in-process"]
        for v in r["versions"]:
            lines.append(
                f"version {v['name']}: {v['files']} files, {v['used_bytes']} bytes, "
                f"{v['inodes']} inodes, index {v['index_bytes']} bytes: {v['message']}"
            )
        lines.append(f"lineage of {r['versions'][1]['name']}: {' <- '.join(r['lineage'])}")
        lines.append(f"locator of {r['versions'][1]['name']}: {r['versions'][1]['locator']}")
        lines.append(f"read back {'OK' if r['verified'] else 'MISMATCH'} in {r['seconds']} s")
        out.print("\n".join(lines), markup=False)

    emit(result, human)
    return 0 if verified else 1


# --------------------------------------------------------------------------- bench


@click.command("bench")
@click.argument("path", type=click.Path())
@click.option(
    "--big-file-size",
    type=int,
    default=1024,
    show_default=True,
    metavar="MB",
    help="Size of each big file; 0 skips.",
)
@click.option("--small-file-size", type=int, default=128, show_default=True, metavar="KB")
@click.option(
    "--small-file-count",
    type=int,
    default=100,
    show_default=True,
    metavar="N",
    help="Small files per thread.",
)
@click.option(
    "--threads",
    "-p",
    type=int,
    default=1,
    show_default=True,
    metavar="N",
    help="Threads, each on its own files.",
)
@click.option(
    "--block-size", type=int, default=1, show_default=True, metavar="MB", help="Size of each I/O."
)
@click.option(
    "--meta",
    is_flag=True,
    help="Run the metadata workload instead: untar a generated tree, find, ls -lR, "
    "du -s, read every file, cp -a, rm -rf.",
)
@click.option(
    "--files",
    type=int,
    default=15_000,
    show_default=True,
    metavar="N",
    help="Files in the --meta tree (its tarball is built once and cached).",
)
@click.option(
    "--server-pid",
    type=int,
    default=None,
    metavar="PID",
    help="Process serving the file system: report its CPU seconds per phase.",
)
@common
@examples(
    "volume bench ~/volumes/data",
    "volume bench /mnt/x --big-file-size 64 -p 4 --json",
    "volume bench /mnt/x/empty --meta --server-pid 1234",
)
def bench_cmd(path: str, big_file_size: int, small_file_size: int, small_file_count: int,
              threads: int, block_size: int, meta: bool, files: int,
              server_pid: int | None) -> int:  # fmt: skip
    """Measure the file system holding an empty directory as `juicefs bench` does."""
    from ..bench import run_bench

    if meta:
        from ..benchmeta import run_meta_bench

        found = run_meta_bench(path, files=files, server_pid=server_pid)
        emit(found.as_dict(), found.summary())
        return 0
    result = run_bench(
        path, big_file_mb=big_file_size, small_file_kb=small_file_size,
        small_files=small_file_count, threads=threads, block_size_mb=block_size,
        server_pid=server_pid,
    )  # fmt: skip
    emit(result.as_dict(), result.summary())
    return 0


COMMANDS = [plugins_cmd, demo_cmd, bench_cmd]
