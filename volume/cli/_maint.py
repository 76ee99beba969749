"""Bucket maintenance: gc and fsck."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from ..errors import VolumeUsageError
from ._common import (
    EXIT_PROBLEMS,
    common,
    emit,
    examples,
    human_bytes,
    load,
    progress,
    table,
    version_argument,
)

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise VolumeUsageError(f"grace period {text!r} is not a duration such as 90s, 30m, 1h, 2d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{max(seconds, 0):.0f} s"


@click.command("gc")
@click.argument("bucket")
@click.option(
    "--grace",
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="Keep blocks of sessions claimed or marked live within this period (90s, 30m, 1h).",
)
@click.option(
    "--delete", is_flag=True, help="Delete the garbage (default: a dry run that reports)."
)
@click.option(
    "--forget-kept",
    "forget",
    multiple=True,
    metavar="FAMILY/DOMAIN",
    help="Give up the kept working copy of that domain (its meta_dir is lost): its blocks that "
    "no version references become garbage. Repeatable.",
)
@common
@examples(
    "volume gc ./bucket",
    "volume gc s3://my-bucket/volumes --delete",
    "volume gc ./bucket --grace 2h --json",
    "volume gc ./bucket --forget-kept drafts/3",
)
def gc_cmd(bucket: str, grace: str, delete: bool, forget: tuple[str, ...]) -> int:
    """Find (and with --delete remove) blocks no version of any family references.

    Blocks referenced by any published version of any fork are kept, and so is every block of a
    session that may still be writing (slice domain claimed or marked live within the grace
    period) or of a working copy kept in a meta_dir for a resume (whatever its age; listed).
    Index snapshots without a version document are reported, never deleted.
    """
    from ..gc import collect, forget_kept
    from ..locations import object_store
    from ..model import Volume
    from ._versions import _bucket

    seconds = _duration(grace)
    local = bucket[len("file://") :] if bucket.startswith("file://") else bucket
    if "://" not in local and not Path(local).is_dir():
        raise VolumeUsageError(f"bucket directory {local} does not exist")
    objects = object_store(Volume.parse({"name": "gc-bucket", "bucket": _bucket(bucket)}))
    try:
        for item in forget:
            family, _, domain = item.rpartition("/")
            if not family or not domain.isdigit():
                raise VolumeUsageError(f"--forget-kept {item!r}: expected FAMILY/DOMAIN, as gc "
                                       f"lists kept working copies (drafts/3)")  # fmt: skip
            forget_kept(objects, family, int(domain))
        with progress("gc: listing", None, unit="keys") as bar:
            report = collect(objects, grace=seconds, delete=delete, progress=bar.advance)
    finally:
        objects.close()
    totals = report.totals()

    def human(out: Any) -> None:
        t = table("family", "versions", "blocks", "reachable", "protected", "garbage", "deleted")
        for f in report.families:
            t.add_row(
                f.name, str(f.versions), f"{f.blocks} ({human_bytes(f.bytes)})",
                f"{f.reachable_blocks} ({human_bytes(f.reachable_bytes)})",
                f"{f.protected_blocks} ({human_bytes(f.protected_bytes)})",
                f"{f.garbage_blocks} ({human_bytes(f.garbage_bytes)})",
                f"{f.deleted_blocks} ({human_bytes(f.deleted_bytes)})",
            )  # fmt: skip
        out.print(t)
        for f in report.families:
            for key in f.abandoned_indexes:
                out.print(f"{f.name}: index without a version document (kept): {key}", markup=False)
            for why in f.unreadable:
                out.print(f"{f.name}: unreadable version, nothing deleted: {why}", markup=False)
            for k in f.kept:
                out.print(
                    f"{f.name}: kept working copy: domain {k['domain']} of volume {k['volume']}, "
                    f"meta_dir {k['meta_dir']} on {k['host']}, {_age(k['age_seconds'])} old "
                    f"(kept until it is finalized or discarded; if its meta_dir is lost: --forget-kept "
                    f"{f.name}/{k['domain']})", markup=False,
                )  # fmt: skip
        verb = "deleted" if delete else "would delete (dry run; --delete to act)"
        n, b = (totals["deleted_blocks"], totals["deleted_bytes"]) if delete else (
            totals["garbage_blocks"], totals["garbage_bytes"])  # fmt: skip
        out.print(f"{verb}: {n} blocks, {human_bytes(b)}", markup=False)

    emit(report.as_dict(), human)
    return EXIT_PROBLEMS if any(f.unreadable for f in report.families) else 0


@click.command("fsck")
@version_argument()
@click.option("--workers", type=int, default=32, show_default=True, help="Parallel HEAD requests.")
@common
@examples("volume fsck $LOCATOR", "volume fsck ./volume.json --json")
def fsck_cmd(version: str, workers: int) -> int:
    """Check a version: every block it references exists with its size, and its index is sound.

    Exit status 1 when anything is broken; broken files are named by path.
    """
    from ..gc import fsck

    v = load(version)
    with progress("fsck: blocks", None, unit="blocks") as bar:
        report = fsck(v, workers=workers, progress=bar.advance, total=bar.set_total)

    def human(out: Any) -> None:
        out.print(f"{report.name}: {report.blocks} blocks ({human_bytes(report.bytes)}) checked",
                  markup=False)  # fmt: skip
        if report.missing or report.wrong_size:
            t = table("problem", "block")
            for key in report.missing:
                t.add_row("missing", key)
            for w in report.wrong_size:
                t.add_row(f"size {w['actual']} != {w['expected']}", w["key"])
            out.print(t)
        for path in report.broken_files:
            out.print(f"broken file: {path}", markup=False)
        for problem in report.metadata_problems:
            out.print(f"metadata: {problem}", markup=False)
        out.print("OK" if report.ok else "BROKEN", markup=False)

    emit(report.as_dict(), human)
    return 0 if report.ok else EXIT_PROBLEMS


COMMANDS = [gc_cmd, fsck_cmd]
