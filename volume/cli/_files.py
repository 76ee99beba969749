"""Reading versions without a kernel mount: ls, cat, get, and diff of two versions."""

from __future__ import annotations

import datetime
import os
import stat
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import VolumeUsageError
from ._common import (
    common,
    emit,
    examples,
    human_bytes,
    load,
    note,
    progress,
    table,
    version_argument,
)


def _fs(ref: str) -> Any:
    from ..fsspec import VolumeFileSystem, open_version

    return VolumeFileSystem(open_version(load(ref)))


def _info(fs: Any, path: str) -> dict[str, Any]:
    try:
        return fs.info(path)
    except FileNotFoundError:
        raise VolumeUsageError(f"{path} does not exist in this version") from None


@click.command("ls")
@version_argument()
@click.argument("path", default="/")
@click.option("--long", "-l", is_flag=True, help="Mode, size and modification time too.")
@click.option("--recursive", "-R", is_flag=True, help="Every entry below PATH.")
@common
@examples("volume ls $LOCATOR", "volume ls $LOCATOR /docs -l", "volume ls ./volume.json -R --json")
def ls_cmd(version: str, path: str, long: bool, recursive: bool) -> int:
    """List a directory of a version (no mount needed)."""
    fs = _fs(version)
    top = _info(fs, path)
    if recursive and top["type"] == "directory":
        entries = [fs.info(p) for p in fs.find(path, withdirs=True)]
        entries = [e for e in entries if e["name"] != top["name"]]
    else:
        entries = fs.ls(path, detail=True)
    rows = [
        {
            "name": e["name"], "type": e["type"], "size": e["size"], "mode": oct(e["mode"]),
            "mtime": datetime.datetime.fromtimestamp(e["mtime"], datetime.timezone.utc).isoformat(),
            **({"destination": e["destination"]} if e.get("islink") else {}),
        }
        for e in entries
    ]  # fmt: skip

    def human(out: Any) -> None:
        if not long:
            for r in rows:
                suffix = "/" if r["type"] == "directory" else ""
                out.print(r["name"] + suffix, markup=False)
            return
        t = table("mode", "size", "modified", "name")
        for r, e in zip(rows, entries):
            name = r["name"] + (f" -> {r['destination']}" if "destination" in r else "")
            t.add_row(stat.filemode(e["mode"]), str(r["size"]), r["mtime"][:19], name)
        out.print(t)

    emit(rows, human)
    return 0


@click.command("cat")
@version_argument()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@common
@examples("volume cat $LOCATOR /docs/readme.txt", "volume cat ./volume.json /a.csv | head")
def cat_cmd(version: str, paths: tuple[str, ...]) -> int:
    """Write files of a version to standard output."""
    fs = _fs(version)
    out = sys.stdout.buffer
    for path in paths:
        if _info(fs, path)["type"] == "directory":
            raise VolumeUsageError(f"{path} is a directory; use volume ls or volume get")
        with fs.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                out.write(chunk)
    out.flush()
    return 0


def _copy_out(fs: Any, src: str, dst: Path, bar: Any) -> tuple[int, int]:
    """Copy one entry of the version to ``dst``; returns (files, bytes)."""
    info = fs.info(src)
    if info.get("islink"):
        os.symlink(info["destination"], dst)
        return 1, 0
    if info["type"] == "directory":
        dst.mkdir(exist_ok=True)
        return 0, 0
    if info["type"] != "file":
        note(f"skipped {src}: not a regular file, directory or link")
        return 0, 0
    done = 0
    with fs.open(src, "rb") as f, open(dst, "wb") as out:
        while chunk := f.read(4 << 20):
            out.write(chunk)
            done += len(chunk)
            bar.advance(len(chunk))
    os.chmod(dst, stat.S_IMODE(info["mode"]))
    os.utime(dst, (info["mtime"], info["mtime"]))
    return 1, done


@click.command("get")
@version_argument()
@click.argument("path")
@click.argument("dest", type=click.Path())
@common
@examples(
    "volume get $LOCATOR /docs ./docs-copy", "volume get ./volume.json /data.bin /tmp/data.bin"
)
def get_cmd(version: str, path: str, dest: str) -> int:
    """Copy a file or a tree out of a version to DEST (no mount needed).

    DEST must not exist, unless it is a directory: then the copy goes inside it.
    """
    fs = _fs(version)
    top = _info(fs, path)
    target = Path(dest)
    if target.is_dir():
        target = target / (Path(top["name"]).name or "root")
    if target.exists() or target.is_symlink():
        raise VolumeUsageError(f"{target} exists already; choose a new destination")
    if not target.parent.is_dir():
        raise VolumeUsageError(f"{target.parent} is not a directory")
    if top["type"] == "directory" and not top.get("islink"):
        names = fs.find(path, withdirs=True)
        sizes = {n: fs.info(n) for n in names}
        total = sum(
            i["size"] for i in sizes.values() if i["type"] == "file" and not i.get("islink")
        )
    else:
        names, total = [top["name"]], top["size"]
    files = copied = 0
    base = top["name"].rstrip("/")
    with progress(f"get {path}", total, unit="bytes") as bar:
        for name in sorted(names):
            rel = name[len(base) :].lstrip("/")
            dst = target / rel if rel else target
            f, b = _copy_out(fs, name, dst, bar)
            files, copied = files + f, copied + b
    result = {"source": path, "dest": str(target), "files": files, "bytes": copied}
    emit(result, f"copied {files} files ({human_bytes(copied)}) to {target}")
    return 0


@click.command("diff")
@version_argument("a")
@version_argument("b")
@common
@examples("volume diff $OLD $NEW", "volume diff ./v1/volume.json ./v2/volume.json --json")
def diff_cmd(a: str, b: str) -> int:
    """What changed from version A to version B, from their indexes alone (no block read).

    Added, removed, modified (size or content changed) and renamed (same inode) entries, with
    sizes. Versions of different families are compared as trees (by path, size and mtime).
    """
    from ..diff import diff_versions

    result = diff_versions(load(a), load(b))
    marks = {"added": "A", "removed": "D", "modified": "M", "renamed": "R"}

    def human(out: Any) -> None:
        t = table("", "path", "old size", "new size")
        for c in result.changes:
            path = c.path if c.old_path is None else f"{c.old_path} -> {c.path}"
            if c.type == "directory":
                path += "/"
            mark = marks[c.status] + ("M" if c.modified else "")
            t.add_row(mark, path, "" if c.old_size is None else str(c.old_size),
                      "" if c.new_size is None else str(c.new_size))  # fmt: skip
        if result.changes:
            out.print(t)
        counts = result.counts()
        out.print(", ".join(f"{n} {s}" for s, n in counts.items())
                  + ("" if result.same_family else " (different families: compared as trees)"),
                  markup=False)  # fmt: skip

    emit(result.as_dict(), human)
    return 0


COMMANDS = [ls_cmd, cat_cmd, get_cmd, diff_cmd]
