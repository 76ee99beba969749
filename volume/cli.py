"""The ``volume`` command: a thin layer over the library.

Every command prints for people by default and JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import stat
import sys
import time
import warnings
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from . import plugins
from .errors import VolumeError


def _emit(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2) if args.json else text(data))


# --------------------------------------------------------------------------- plugins


def cmd_plugins(args: argparse.Namespace) -> int:
    """List the installed store plugins with their versions."""
    rows = [dataclasses.asdict(p) for p in plugins.report()]

    def text(rows: list[dict]) -> str:
        lines = [f"{'group':<22} {'name':<8} {'version':<9} provided by"]
        for r in rows:
            lines.append(f"{r['group']:<22} {r['name']:<8} {r['version']:<9} {r['value']}")
        return "\n".join(lines)

    _emit(args, rows, text)
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


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded defaults: a local bucket and SQLite metadata.

    Create a volume, write a tree, commit; fork the commit, change the fork, finalize it; mount
    both versions read-only and check what each holds; walk the lineage.
    """
    from .lineage import walk
    from .model import Volume

    bucket = Path(args.bucket).resolve()
    name = args.name or f"demo-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # in-process mounts: said in the output
        rw = Volume.new(name, bucket=str(bucket)).mount(transport="none")
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
    expected_changed = {"/docs/notes/todo.txt"}
    a, b = contents[first.name], contents[second.name]
    verified = (
        "/data.bin" in a
        and "/data.bin" not in b
        and {p for p in b if a.get(p) != b[p]} == expected_changed
    )
    result = {
        "bucket": str(bucket),
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

    def text(r: dict) -> str:
        lines = [f"bucket {r['bucket']} (local), metadata in SQLite, mounted in-process"]
        for v in r["versions"]:
            lines.append(
                f"version {v['name']}: {v['files']} files, {v['used_bytes']} bytes, "
                f"{v['inodes']} inodes, index {v['index_bytes']} bytes: {v['message']}"
            )
        lines.append(f"lineage of {r['versions'][1]['name']}: {' <- '.join(r['lineage'])}")
        lines.append(f"read back {'OK' if r['verified'] else 'MISMATCH'} in {r['seconds']} s")
        return "\n".join(lines)

    _emit(args, result, text)
    return 0 if verified else 1


# --------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure the file system holding a directory as ``juicefs bench`` does."""
    from .bench import run_bench

    result = run_bench(
        args.path, big_file_mb=args.big_file_size, small_file_kb=args.small_file_size,
        small_files=args.small_file_count, threads=args.threads, block_size_mb=args.block_size,
    )  # fmt: skip
    _emit(args, result.as_dict(), lambda _: result.summary())
    return 0


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``volume`` command."""
    parser = argparse.ArgumentParser(
        prog="volume", description="Immutable, versioned, forkable volumes on object storage."
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list installed store plugins")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("demo", help="create, commit, fork and read back a volume in a local bucket")
    p.add_argument("bucket", nargs="?", default="volume-demo-bucket", help="local bucket dir")
    p.add_argument("--name", help="volume name (default: demo-<8 hex>)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="measure a directory's file system as juicefs bench does")
    p.add_argument("path", help="a directory on the file system to measure")
    p.add_argument("--big-file-size", type=int, default=1024, metavar="MB", help="0 skips")
    p.add_argument("--small-file-size", type=int, default=128, metavar="KB")
    p.add_argument("--small-file-count", type=int, default=100, metavar="N", help="per thread")
    p.add_argument("--threads", "-p", type=int, default=1, metavar="N", help="each its own files")
    p.add_argument("--block-size", type=int, default=1, metavar="MB", help="size of each I/O")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``volume`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VolumeError as exc:
        print(f"volume: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
