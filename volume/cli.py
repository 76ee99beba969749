"""The ``volume`` command: a thin layer over the library.

Every command prints for people by default and JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
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


def _demo_tree(fs: Any) -> dict[str, str]:
    """Write a small tree with a multi-block file, a hard link and a symlink; return hashes."""
    fs.makedirs("/docs/notes", exist_ok=True)
    fs.write_bytes("/docs/readme.txt", b"versioned, forkable volumes\n")
    fs.write_bytes("/docs/notes/todo.txt", b"commit, fork, migrate\n")
    big = hashlib.sha256(b"seed").digest() * (10 * (1 << 20) // 32)  # 10 MiB, not all zeros
    fs.write_bytes("/data.bin", big)
    fs.link("/docs/readme.txt", "/readme-link.txt")
    fs.symlink("docs/readme.txt", "/readme-symlink")
    fs.setxattr("/data.bin", "user.origin", b"volume demo")
    return {
        p: hashlib.sha256(fs.read_bytes(p)).hexdigest()
        for p in ("/docs/readme.txt", "/docs/notes/todo.txt", "/data.bin", "/readme-symlink")
    }


def cmd_demo(args: argparse.Namespace) -> int:
    """Format a volume in a local bucket with SQLite metadata, write a tree, read it back."""
    from .engine import Engine, PathFS, format_volume, new_format

    bucket = Path(args.bucket).resolve()
    meta_dir = Path(args.meta_dir or tempfile.mkdtemp(prefix="volume-demo-meta-")).resolve()
    name = args.name or f"demo-{uuid.uuid4().hex[:8]}"
    objects = plugins.object_store_class("file").from_uri(str(bucket))
    meta = plugins.meta_store_class("sqlite").open(meta_dir)
    started = time.perf_counter()
    format_volume(meta, objects, new_format(name, storage="file", bucket=f"{bucket}/"))
    engine = Engine(meta, objects)
    try:
        fs = PathFS(engine)
        hashes = _demo_tree(fs)
        engine.drain()
        reread = {p: hashlib.sha256(fs.read_bytes(p)).hexdigest() for p in hashes}
        st = fs.statvfs()
        tree = sorted(fs.listdir("/"))
    finally:
        engine.close()
        meta.close()
    blocks = list(objects.list(f"{name}/chunks/"))
    result = {
        "volume": name,
        "bucket": str(bucket),
        "metadata": str(meta_dir / "meta.db"),
        "root": tree,
        "verified": reread == hashes,
        "used_bytes": (st.blocks - st.bfree) * st.bsize,
        "blocks": len(blocks),
        "block_bytes": sum(b.size for b in blocks),
        "seconds": round(time.perf_counter() - started, 3),
    }

    def text(r: dict) -> str:
        return "\n".join(
            [
                f"volume {r['volume']} formatted in {r['bucket']} (metadata: {r['metadata']})",
                f"root: {' '.join(r['root'])}",
                f"read back {'OK' if r['verified'] else 'MISMATCH'}; used {r['used_bytes']} bytes",
                f"{r['blocks']} blocks, {r['block_bytes']} bytes under {r['volume']}/chunks/",
                f"done in {r['seconds']} s",
            ]
        )

    _emit(args, result, text)
    return 0 if result["verified"] else 1


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

    p = sub.add_parser("demo", help="format a volume in a local bucket, write and read it back")
    p.add_argument("bucket", nargs="?", default="volume-demo-bucket", help="local bucket dir")
    p.add_argument("--name", help="volume name (default: demo-<8 hex>)")
    p.add_argument("--meta-dir", help="metadata directory (default: a new temporary dir)")
    p.set_defaults(func=cmd_demo)
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
