"""The verbs: declare, commit, finalize, fork, migrate, and loading versions back. Mounting is
``volume.mounts``; where a volume's stores and index are, ``volume.locations``; meta dirs,
``volume.metadir``; progress reports, ``volume.progress``.

Bucket layout (``spec/bucket-layout.md``; every key is built in ``volume.keys``), below the
volume family's Format ``Name``:

* ``chunks/...`` and ``juicefs_uuid``: JuiceFS's own objects;
* ``_volume/domains/<d>``: the slice-domain ledger (``volume.allocator``);
* ``_volume/kept/<d>`` and ``_volume/live/<d>``: domains gc must keep (``volume.gc``);
* ``_volume/versions/<version>/<index file>``: a committed index (metadata snapshot);
* ``_volume/versions/<version>/volume.json``: its version document, the ``locator``.

Publishing follows DESIGN §4: flush -> drain -> snapshot -> drain what the snapshot references
-> upload the index (put-if-absent) -> write the version document -> return the ``ROVolume``.
Nothing is published before every block it references exists.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from . import keys, locations, plugins, workcopy
from .allocator import advance_counters, claim_domain, enter_domain
from .errors import (
    ObjectNotFound,
    VolumeCommitError,
    VolumeIndexCorrupt,
    VolumeMigrateNoop,
    VolumeNoIndex,
    VolumeNotForkable,
    VolumeNotMounted,
    VolumeReadOnly,
    VolumeSystemError,
    VolumeUsageError,
)
from .juicefs import COUNTER_TOTAL_INODES, COUNTER_USED_SPACE
from .lineage import current_action
from .locations import DEFAULT_METADATA_STORE, digest, key_uri, location, meta_class
from .metadir import MetaDir, stage_index
from .mounts import Mount
from .pins import pin_snapshot
from .progress import Meter, Progress, unstored_bytes
from .stores import MetaStore, ObjectStore

if TYPE_CHECKING:
    from .model import ActionRef, ROVolume, RWVolume, Volume

log = logging.getLogger("volume.lifecycle")

ENV_BUCKET = "UNION_VOLUME_BUCKET"
ENV_METADATA_STORE = "UNION_VOLUME_METADATA_STORE"
VERSION_DOCUMENT = "volume.json"

V = TypeVar("V", bound="Volume")


# =========================================================================== declaring


def declare(
    cls: type[V],
    name: str,
    bucket: Optional[str],
    storage: Optional[str],
    region: Optional[str],
    metadata_store_type: Optional[str],
) -> V:
    """A volume handle with the defaults filled in; no I/O."""
    bucket = bucket or os.environ.get(ENV_BUCKET)
    if not bucket:
        raise VolumeUsageError(
            f"no bucket for volume {name!r}: pass bucket=... (a directory, s3://..., gs://..., "
            f"abfs://...) or set ${ENV_BUCKET}"
        )
    store_type = metadata_store_type or os.environ.get(ENV_METADATA_STORE) or DEFAULT_METADATA_STORE
    volume = cls.parse(
        {
            "name": name,
            "bucket": bucket,
            "storage": storage,
            "region": region,
            "metadata_store_type": store_type,
        }
    )
    if volume.storage == "file":  # a relative directory would name another one elsewhere
        volume.bucket = _absolute_local(volume.bucket)
    return volume


def _absolute_local(bucket: str) -> str:
    """A ``file`` bucket in the same form (plain path or ``file://``), made absolute."""
    if bucket.lower().startswith("file://"):
        rest = bucket[len("file://") :]
        return bucket if rest.startswith("/") else "file://" + os.path.abspath(rest)
    return os.path.abspath(os.path.expanduser(bucket))


def auto_name() -> str:
    """A fresh volume name: ``vol-<8 hex>``."""
    return f"vol-{secrets.token_hex(4)}"


# =========================================================================== publishing


def _version_id(name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{name}-{secrets.token_hex(4)}"


def publish(
    volume: "Volume",
    objects: ObjectStore,
    meta: MetaStore,
    *,
    message: Optional[str],
    parent: Optional["ActionRef"],
    before_snapshot: Any = None,
    after_snapshot: Any = None,
    snapshot: Any = None,
    meter: Optional[Meter] = None,
) -> "ROVolume":
    """Snapshot ``meta`` and publish it as a new version of ``volume`` (index, then document).

    ``before_snapshot`` / ``after_snapshot`` are called around the snapshot (the commit drains
    there); a failure in either publishes nothing. With ``meter`` in bytes, the index upload is
    counted.
    """
    from .model import File, ROVolume

    fs_name = meta.load_format().Name
    vid = _version_id(volume.name)
    prefix = keys.version_prefix(fs_name, vid)
    store_cls = type(meta)
    with tempfile.TemporaryDirectory(prefix="volume-snapshot-") as tmp:
        snap = Path(tmp) / store_cls.index_filename
        if before_snapshot is not None:
            before_snapshot()
        size = (snapshot or meta.snapshot)(snap)
        if after_snapshot is not None:
            after_snapshot()
        size = pin_snapshot(meta, snap)  # foreign writers cannot hurt it (pins.py)
        with meta.transaction() as tx:
            used = tx.get_counter(COUNTER_USED_SPACE)
            inodes = tx.get_counter(COUNTER_TOTAL_INODES)
        index_key = prefix + store_cls.index_filename
        counted = meter is not None and meter.unit == "bytes"
        if counted:
            meter.update(add_total=size)  # type: ignore[union-attr]
        objects.put_file(index_key, snap, if_absent=True)
        if counted:
            meter.update(done=meter.done + size)  # type: ignore[union-attr]
        index = File(
            path=key_uri(objects, index_key),
            name=store_cls.index_filename,
            format=store_cls.name,
            hash=digest(snap, "sha256:"),
        )
    produced_by = current_action().model_copy(
        update={"locator": key_uri(objects, prefix + VERSION_DOCUMENT)}
    )
    version = ROVolume(
        name=volume.name,
        bucket=volume.bucket,
        storage=volume.storage,
        region=volume.region,
        index=index,
        metadata_store_type=store_cls.name,
        used_bytes=max(used, 0),
        inode_count=max(inodes, 0),
        index_bytes=size,
        message=message,
        produced_by=produced_by,
        parent_produced_by=parent,
    )
    objects.put(
        prefix + VERSION_DOCUMENT,
        version.model_dump_json(indent=2).encode(),
        if_absent=True,
    )
    return version


def _mount_of(volume: "Volume", verb: str) -> Mount:
    m: Optional[Mount] = getattr(volume, "_mount", None)
    if m is None:
        raise VolumeNotMounted(
            f"cannot {verb} volume {volume.name!r}: it is not mounted (already finalized or "
            f"unmounted); mount() it first"
        )
    return m


def commit(
    volume: "RWVolume",
    message: Optional[str],
    timeout: Optional[float] = None,
    progress: Optional[Progress] = None,
) -> "ROVolume":
    """Publish the mounted working copy as a new version; it stays mounted and writable.

    ``progress`` (:data:`Progress`) counts bytes: the buffered writes and pending block uploads
    (known up front), then the index upload."""
    m = _mount_of(volume, "commit")
    engine = m.engine

    def drain() -> None:
        try:
            with meter.sampling(lambda: unstored_bytes(engine)):
                engine.drain(timeout)  # publishes every buffered write, stores every block
        except VolumeCommitError:
            raise
        except (VolumeSystemError, TimeoutError) as exc:
            raise VolumeCommitError(
                f"cannot commit volume {volume.name!r}: {exc}; nothing was published and the "
                f"mount is intact (retry the commit)"
            ) from exc

    if not m.writable:
        raise VolumeReadOnly(
            f"the mount of volume {volume.name!r} is read-only, so there is nothing to commit; "
            f"fork the version (volume.fork(new_name)) to get a writable copy"
        )
    parent = volume.produced_by  # the previous version of this handle (lineage, spec/volume.md)
    meter = Meter(progress, "bytes", unstored_bytes(engine))
    engine.modified = False  # changes from now on are the next commit's
    try:
        version = publish(
            volume, m.objects, m.meta, message=message, parent=parent,
            before_snapshot=drain, after_snapshot=drain, snapshot=engine.snapshot, meter=meter,
        )  # fmt: skip
    except BaseException:
        engine.modified = True
        raise
    m.meta_dir.set_marker(**{**(m.meta_dir.marker() or {}), "base": version.index.path})
    m.last_commit = version.produced_by
    volume.produced_by, volume.parent_produced_by = version.produced_by, parent
    volume.index = version.index
    volume.used_bytes, volume.inode_count = version.used_bytes, version.inode_count
    volume.index_bytes = version.index_bytes
    meter.finish()
    return version


def finalize(
    volume: "RWVolume", message: Optional[str], timeout: float, progress: Optional[Progress] = None
) -> "ROVolume":
    """Freeze the mount (later modifications fail with ``EROFS``), commit, then unmount.

    A busy kernel mount stays mounted read-only until its users leave or the rest of
    ``timeout`` passes. When the commit fails (:class:`VolumeCommitError`, for example on
    ``timeout``) the mount is thawed and left intact. ``progress``: as for :func:`commit`.
    """
    m = _mount_of(volume, "finalize")
    deadline = time.monotonic() + timeout
    m.engine.freeze()
    try:
        version = commit(volume, message, timeout, progress)
    except BaseException:
        m.engine.thaw()
        raise
    volume._mount = None
    # the version holds every block the frozen copy reads: its kept marks may go (first, so a
    # crash in between leaves a resumable copy that marks them again, never a copy without them)
    workcopy.unkeep(m.meta_dir, m.objects)
    m.meta_dir.set_state(workcopy.PUBLISHED)
    m.close(drain=True, timeout=max(deadline - time.monotonic(), 1.0))
    return version


# =========================================================================== fork and migrate


def fork(
    volume: "Volume", name: str, meta_dir: Optional[os.PathLike | str], timeout: float
) -> "RWVolume":
    """A writable copy sharing every block: metadata only (no block is read or written)."""
    from .model import RWVolume

    if getattr(getattr(volume, "_mount", None), "writable", False):
        point = commit(volume, f"fork point of {name}", timeout)  # type: ignore[arg-type]
        return fork(point, name, meta_dir, timeout)
    if volume.index is None:
        raise VolumeNotForkable(
            f"volume {volume.name!r} has no committed index to fork from; commit or finalize it "
            f"first"
        )
    # the fork point: the source's index under the fork's name, produced by the current action
    child = RWVolume.parse(
        {
            **volume.model_dump(exclude={"kind"}),
            "name": name,
            "message": None,
            "produced_by": current_action().model_dump(),
            "parent_produced_by": volume.produced_by.model_dump() if volume.produced_by else None,
        }
    )
    objects = locations.object_store(volume)
    md = MetaDir.acquire(meta_dir, name)
    try:
        stage_index(volume, objects, md, purpose="write")
        md.set_marker(store=meta_class(volume).name, state="preparing")
        with meta_class(volume).open(md.path) as meta:
            fs_name = meta.load_format().Name
            domain = claim_domain(objects, fs_name, name)
            with meta.transaction(write=True) as tx:
                enter_domain(tx, domain)
                advance_counters(tx)
        md.set_marker(
            path=volume.index.path, store=meta_class(volume).name, state="forked", domain=domain
        )
        _publish_fork_point(child, objects, fs_name)
    except BaseException:
        md.owned = md.owned or meta_dir is None
        md.release()
        objects.close()
        raise
    objects.close()
    owned = md.owned
    md.owned = False  # keep the staged dir for the mount
    md.release()
    if owned:
        child._staged_meta_dir = md.path
        workcopy.remove_with(child, md.path)  # never mounted: it goes with the handle
    return child


def _publish_fork_point(child: "RWVolume", objects: ObjectStore, fs_name: str) -> None:
    """Write the fork point's version document (its own locator; the index stays the source's,
    so no index is uploaded and no block is touched) and stamp its locator on ``child``."""
    from .model import ROVolume

    prefix = keys.version_prefix(fs_name, _version_id(child.name))
    assert child.produced_by is not None
    child.produced_by = child.produced_by.model_copy(
        update={"locator": key_uri(objects, prefix + VERSION_DOCUMENT)}
    )
    point = ROVolume.model_validate(child.model_dump())
    objects.put(
        prefix + VERSION_DOCUMENT, point.model_dump_json(indent=2).encode(), if_absent=True
    )


def migrate(
    volume: "Volume",
    new_type: str,
    meta_dir: Optional[os.PathLike | str],
    new_meta_dir: Optional[os.PathLike | str],
    progress: Optional[Progress] = None,
) -> "ROVolume":
    """Re-host the version's metadata on ``new_type`` (dump, load, advance counters, publish).

    ``progress`` (:data:`Progress`) counts inodes: the version's inode count is the total, and an
    inode is done half when dumped and fully when loaded."""
    current = volume.metadata_store_type or DEFAULT_METADATA_STORE
    if new_type == current:
        raise VolumeMigrateNoop(
            f"volume {volume.name!r} already uses the {current!r} metadata store; nothing to do"
        )
    if volume.index is None:
        raise VolumeNoIndex(
            f"volume {volume.name!r} has never been committed, so it has no index to migrate; "
            f"commit it first, or declare it with metadata_store_type={new_type!r}"
        )
    from . import dump

    target_cls = plugins.meta_store_class(new_type)
    objects = locations.object_store(volume)
    src_dir = MetaDir.acquire(meta_dir, volume.name)
    dst_dir = MetaDir.acquire(new_meta_dir, f"{volume.name}-{new_type}")
    try:
        stage_index(volume, objects, src_dir, purpose="read")
        workcopy.refuse_unpublished(dst_dir)
        dst_dir.clear(target_cls)
        with meta_class(volume).open(src_dir.path, read_only=True) as src, target_cls.open(
            dst_dir.path
        ) as dst:
            with src.transaction() as tx:
                inodes = max(tx.get_counter(COUNTER_TOTAL_INODES), 1)
            meter = Meter(progress, "inodes", inodes)
            counts = {"dump": 0, "load": 0}

            def step(phase: str, n: int) -> None:
                counts[phase] = min(n, inodes)
                meter.update(done=(counts["dump"] + counts["load"]) // 2)

            dump.migrate(src, dst, tmp_dir=dst_dir.path, progress=step)
            with dst.transaction(write=True) as tx:
                advance_counters(tx)
            version = publish(
                volume.model_copy(update={"metadata_store_type": new_type}),
                objects,
                dst,
                message=volume.message,
                parent=volume.produced_by,
            )
            meter.finish()
            return version
    finally:
        if dst_dir.owned:
            dst_dir.clear(target_cls)
        dst_dir.release()
        src_dir.release()
        objects.close()


# =========================================================================== loading versions


def from_locator(uri: str) -> "ROVolume":
    """The version whose document is at ``uri``."""
    import fsspec

    from .model import ROVolume

    if not isinstance(uri, str) or not uri.strip():
        raise VolumeUsageError(
            f"locator {uri!r} is empty; pass the produced_by.locator of a published version"
        )
    try:
        with location(uri, None) as (store, name):
            if store is not None:
                data = store.get(name)
            else:
                with fsspec.open(uri, "rb") as f:
                    data = f.read()
    except (ObjectNotFound, FileNotFoundError) as exc:
        raise VolumeIndexCorrupt(f"no version document at {uri!r}") from exc
    except (ValueError, ImportError, OSError) as exc:
        raise VolumeIndexCorrupt(f"cannot read the version document at {uri!r}: {exc}") from exc
    return ROVolume.parse(data)

