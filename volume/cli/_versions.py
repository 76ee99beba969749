"""Verbs on versions: create, mount, commit, fork, migrate, info, log."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

import click

from ..errors import VolumeCommitError, VolumeUsageError
from ._common import (
    common,
    emit,
    examples,
    human_bytes,
    load,
    note,
    progress,
    version_argument,
    version_row,
)


def _print_version(v: Any, verb: str) -> None:
    row = version_row(v)
    emit(row, lambda out: out.print(f"{verb} {v.name}: {row['locator']}", markup=False))


# --------------------------------------------------------------------------- create


@click.command("create")
@click.argument("name")
@click.option(
    "--bucket",
    "-b",
    envvar="UNION_VOLUME_BUCKET",
    metavar="BUCKET",
    help="Local directory or object-store URI (default: $UNION_VOLUME_BUCKET).",
)
@click.option("--metadata-store", metavar="TYPE", help="sqlite (default) or an installed plugin.")
@click.option("--message", "-m", default="created", show_default=True)
@common
@examples("volume create training-data --bucket ./bucket",
          "volume create logs -b s3://my-bucket/volumes --json")  # fmt: skip
def create_cmd(name: str, bucket: str | None, metadata_store: str | None, message: str) -> int:
    """Create a volume and publish its first (empty) version; prints its locator."""
    from ..model import Volume

    if bucket is not None and not bucket.strip():
        raise VolumeUsageError("--bucket is empty; give a local directory or an object-store URI")
    rw = Volume.new(name, bucket=_bucket(bucket), metadata_store_type=metadata_store)
    rw.mount(transport="none")
    _print_version(rw.finalize(message), "created")
    return 0


def _bucket(bucket: str | None) -> str | None:
    import re

    if bucket is None or re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", bucket):
        return bucket
    return str(Path(bucket).resolve())


# --------------------------------------------------------------------------- mount


@contextlib.contextmanager
def _reported(description: str, unit: str) -> Iterator[None]:
    """A bar fed by the library's progress reports (``volume.progress.reporting_progress``)."""
    from ..progress import reporting_progress

    with progress(description, None, unit=unit) as bar, reporting_progress(bar.report):
        yield


def _continuation(version: Any) -> Any:
    """A writable working copy that continues ``version`` under its own name."""
    from ..model import RWVolume

    return RWVolume.parse(
        {
            **version.model_dump(exclude={"kind"}),
            "message": None,
            "parent_produced_by": version.produced_by.model_dump() if version.produced_by else None,
        }
    )


@click.command("mount")
@version_argument()
@click.argument("mount_path", metavar="PATH", type=click.Path())
@click.option("--read-only", is_flag=True, help="Mount the version read-only.")
@click.option("--fork", "fork_name", metavar="NAME", help="Mount a writable fork named NAME.")
@click.option(
    "--no-commit", is_flag=True, help="On exit, discard the changes instead of committing."
)
@click.option("--message", "-m", help="Message of the version published on exit.")
@click.option(
    "--no-xattrs", is_flag=True,
    help="Serve no extended attributes (the JuiceFS client's default): ls -l asks nothing per "
    "file, and getfattr/setfattr say 'Operation not supported'.",
)  # fmt: skip
@common
@examples("volume mount ./bucket/vol/_volume/versions/<id>/volume.json ~/volumes/vol",
          "volume mount $LOCATOR /mnt/ro --read-only",
          "volume mount $LOCATOR /mnt/exp --fork experiment -m 'tried a thing'")  # fmt: skip
def mount_cmd(version: str, mount_path: str, read_only: bool, fork_name: str | None,
              no_commit: bool, message: str | None, no_xattrs: bool) -> int:  # fmt: skip
    """Mount a version at PATH in the foreground (FUSE).

    Writable by default: the mount continues the version under its name (or as a fork with
    --fork). Ctrl-C or SIGTERM commits the changes as a new version, prints its locator and
    unmounts (--no-commit discards them), also when it comes while the mount is still starting
    (a second one then gives up on the mount). `volume commit PATH` commits while it stays
    mounted.
    """
    from ..errors import VolumeMountError
    from ..mount.fuse import fuse_usable, prepare_mount_point
    from ._control import ControlServer

    if read_only and (fork_name or no_commit or message):
        raise VolumeUsageError("--read-only mounts publish nothing: drop --fork/--no-commit/-m")
    base = load(version)
    usable, why = fuse_usable()
    if not usable:
        raise VolumeMountError(f"cannot mount with FUSE: {why}")
    path = prepare_mount_point(mount_path)  # a busy path is refused before anything changes
    stop = threading.Event()
    lock = threading.Lock()
    handle: Any = None

    def serve(req: dict[str, Any], send: Any) -> dict[str, Any]:
        from ..progress import reporting_progress

        if req.get("verb") == "ping" or handle is None:
            return {"name": getattr(handle, "name", None), "writable": not read_only}
        if req.get("verb") != "commit":
            return {"error": f"unknown request {req.get('verb')!r}"}
        if read_only:
            raise VolumeUsageError(f"{path} is mounted read-only: there is nothing to commit")
        with lock:
            if stop.is_set():
                raise VolumeCommitError(f"{path} is being unmounted")
            with reporting_progress(lambda *done_total_unit: send({"progress": done_total_unit})):
                return version_row(handle.commit(req.get("message")))

    control = ControlServer(path, serve)
    try:
        source = base if read_only else base.fork(fork_name) if fork_name else _continuation(base)

        def finish(*_: Any) -> None:
            if stop.is_set() and handle is None:  # a second one while the mount still starts
                raise KeyboardInterrupt
            stop.set()

        # From here Ctrl-C and SIGTERM mean "finish": programs may write as soon as the mount
        # appears, which is before mount() returns, so a signal then must not abandon them.

        previous = {s: signal.signal(s, finish) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            # a writable mount marks its session live
            handle = source.mount(mount_path=path, transport="fuse", xattrs=not no_xattrs)
            mode = "read-only" if read_only else "read-write"
            note(f"mounted {handle.name} at {path} ({mode}); Ctrl-C to "
                 f"{'unmount' if read_only or no_commit else 'commit and unmount'}")  # fmt: skip
            final = _serve_until_done(handle, path, stop, lock, read_only or no_commit, message)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        control.close()
        if final is None:
            emit({"name": handle.name, "unmounted": str(path)}, f"unmounted {path}")
            return 0
    except BaseException:
        control.close()
        if handle is not None and handle.mounted:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                handle.unmount()
        raise
    _print_version(final, "committed")
    return 0


def _serve_until_done(
    handle: Any,
    path: Path,
    stop: threading.Event,
    lock: threading.Lock,
    discard: bool,
    message: str | None,
) -> Any:
    """Wait for Ctrl-C, SIGTERM or an unmount from outside; then unmount (``discard``) or
    publish. A failed commit leaves the mount as it was: Ctrl-C tries again."""
    from ..errors import VolumeError

    while True:
        outside = False
        while not stop.wait(0.5):
            if not os.path.ismount(path):  # fusermount -u from outside: finish as for Ctrl-C
                note(f"{path} was unmounted from outside")
                outside = True
                break
        with lock:
            stop.set()  # commits through the control socket are refused from here on
            if discard:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    handle.unmount()
                return None
            try:
                with _reported("committing", "bytes"):
                    return handle.finalize(message)
            except VolumeError as exc:
                if outside or not handle.mounted:
                    raise
                note(f"volume: commit failed, {path} is still mounted: {exc} (Ctrl-C tries again)")
                stop.clear()


# --------------------------------------------------------------------------- commit


@click.command("commit")
@click.argument("mount_path", metavar="PATH", type=click.Path())
@click.option("--message", "-m", help="Commit message.")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait.")
@common
@examples("volume commit ~/volumes/vol -m 'nightly snapshot'")
def commit_cmd(mount_path: str, message: str | None, timeout: float) -> int:
    """Commit the volume that `volume mount` serves at PATH; it stays mounted and writable."""
    from ._control import request

    with progress("committing", None, unit="bytes") as bar:
        answer = request(mount_path, {"verb": "commit", "message": message}, timeout, bar.report)
    if "error" in answer:
        raise VolumeCommitError(answer["error"])
    emit(answer, lambda out: out.print(f"committed {answer['name']}: {answer['locator']}",
                                       markup=False))  # fmt: skip
    return 0


# --------------------------------------------------------------------------- fork, migrate


@click.command("fork")
@version_argument()
@click.argument("name")
@click.option("--message", "-m", help="Message of the fork's first version.")
@common
@examples("volume fork $LOCATOR experiment", "volume fork ./volume.json exp-2 -m 'branch' --json")
def fork_cmd(version: str, name: str, message: str | None) -> int:
    """Fork a version as NAME (metadata only: every block is shared) and publish it."""
    base = load(version)
    child = base.fork(name).mount(transport="none")
    _print_version(child.finalize(message or f"fork of {base.name}"), "forked")
    return 0


@click.command("migrate")
@version_argument()
@click.argument("store_type", metavar="STORE")
@common
@examples("volume migrate $LOCATOR redis")
def migrate_cmd(version: str, store_type: str) -> int:
    """Re-host a version's metadata on another store type (no block is touched)."""
    base = load(version)
    with _reported(f"migrating to {store_type}", "inodes"):
        moved = base.migrate_metadata_store_type(store_type)
    _print_version(moved, "migrated")
    return 0


# --------------------------------------------------------------------------- info, log


@click.command("info")
@version_argument()
@common
@examples("volume info $LOCATOR", "volume info ./volume.json --json")
def info_cmd(version: str) -> int:
    """Show what a version document says."""
    v = load(version)
    row = {**version_row(v), "index": v.index.model_dump() if v.index else None}

    def human(out: Any) -> None:
        for key, value in row.items():
            if key == "index":
                value = value and value["path"]
            elif key in ("used_bytes", "index_bytes") and value is not None:
                value = f"{value} ({human_bytes(value)})"
            out.print(f"{key + ':':<21}{'-' if value is None else value}", markup=False)

    emit(row, human)
    return 0


def _version_id(v: Any) -> str:
    loc = v.produced_by.locator if v.produced_by and v.produced_by.locator else ""
    parts = loc.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else "?"


@click.command("log")
@version_argument()
@click.option("--oneline", is_flag=True, help="One line per version.")
@click.option("--limit", "-n", type=int, default=10_000, show_default=True)
@common
@examples("volume log $LOCATOR", "volume log $LOCATOR --oneline")
def log_cmd(version: str, oneline: bool, limit: int) -> int:
    """The lineage of a version, newest first (the version, then its ancestors)."""
    from ..lineage import walk

    first = load(version)
    versions = [first, *walk(first, limit=max(limit - 1, 0))][:limit]
    rows = [{**version_row(v), "version": _version_id(v)} for v in versions]

    def human(out: Any) -> None:
        for r in rows:
            if oneline:
                out.print(f"{r['version']}  {r['message'] or ''}", markup=False)
                continue
            out.print(f"[yellow]version {r['version']}[/]")
            out.print(f"Name:     {r['name']}", markup=False)
            out.print(f"Locator:  {r['locator']}", markup=False)
            out.print(f"By:       {r['produced_by']}", markup=False)
            out.print(f"Size:     {human_bytes(r['used_bytes'])}, {r['inode_count']} inodes",
                      markup=False)  # fmt: skip
            out.print(f"\n    {r['message'] or '(no message)'}\n", markup=False)

    emit(rows, human)
    return 0


COMMANDS = [create_cmd, mount_cmd, commit_cmd, fork_cmd, migrate_cmd, info_cmd, log_cmd]
