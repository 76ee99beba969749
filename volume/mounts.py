"""Mounts: a committed version read-only, a working copy read-write (formatted on first use,
continued from its index otherwise), with a kernel (FUSE) mount or in-process only; and
unmounting."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from . import locations, workcopy
from .allocator import claim_domain, enter_domain
from .engine import Engine, PathFS, new_format
from .errors import (
    VolumeAlreadyMounted,
    VolumeMountError,
    VolumeNoIndex,
    VolumeNotMounted,
    VolumeStoreMismatch,
    VolumeUsageError,
)
from .locations import meta_class
from .metadir import MetaDir, stage_index
from .stores import MetaStore, ObjectStore

if TYPE_CHECKING:
    from .model import ActionRef, ROVolume, RWVolume, Volume

log = logging.getLogger("volume.lifecycle")

ENV_SINGLE_WRITER = "UNION_VOLUME_SINGLE_WRITER"
TRANSPORTS = ("auto", "fuse", "none")


@dataclass
class Mount:
    """A live mount owned by one handle."""

    volume_name: str
    writable: bool
    objects: ObjectStore
    meta: MetaStore
    engine: Engine
    meta_dir: MetaDir
    transport: str
    mount_path: Optional[Path] = None
    last_commit: Optional["ActionRef"] = None
    kernel: Any = None  # the FuseMount when the transport is FUSE
    _fs: Any = field(default=None, repr=False)
    #: writable mounts: the gc live marker of the session's slice domain, and its reclaimer
    live: Any = field(default=None, repr=False)
    reclaimer: Any = field(default=None, repr=False)

    @property
    def pathfs(self) -> PathFS:
        """``os``-style access to the mounted volume (coherent with its kernel mount, if any)."""
        if self.kernel is None:
            return PathFS(self.engine)
        from .mount.view import KernelCoherentEngine

        return PathFS(KernelCoherentEngine(self.engine, self.kernel.operations))

    @property
    def fs(self) -> Any:
        """The fsspec-compatible filesystem of the mount."""
        if self._fs is None:
            from .fsspec import VolumeFileSystem

            self._fs = VolumeFileSystem(self.pathfs, read_only=not self.writable)
        return self._fs

    def close(self, *, drain: bool, timeout: float = 30.0) -> None:
        """Unmount the kernel mount, stop the engine, release the stores and the meta dir.

        A writable engine is frozen first: a process still writing gets ``EROFS`` (never a
        silent loss), and a busy kernel mount stays mounted read-only until its users leave or
        ``timeout`` passes (it is never unmounted lazily: see :meth:`FuseMount.stop`).
        """
        workcopy.untrack_mount(self)
        try:
            if self.writable:
                self.engine.freeze()
            if self.kernel is not None:
                self.kernel.stop(timeout)
            self.engine.close(drain=drain)
        finally:
            if self.reclaimer is not None:
                self.reclaimer.stop(drain=drain)
            if self.live is not None:
                self.live.stop()
            self.meta.close()
            self.meta_dir.release()
            self.objects.close()


@dataclass(frozen=True)
class KernelOptions:
    """What a kernel (FUSE) mount is asked for."""

    mount_path: Optional[Path]
    timeout: float
    attr_cache: float
    entry_cache: float
    dir_entry_cache: float
    xattrs: bool = True  # False: the kernel mount serves no extended attributes


def _pick_transport(transport: str) -> str:
    """``"fuse"`` or ``"none"``; "auto" takes FUSE when it is usable and says why when not."""
    if transport not in TRANSPORTS:
        raise VolumeUsageError(
            f"unknown transport {transport!r}; use one of {', '.join(TRANSPORTS)}"
        )
    if transport == "none":
        return "none"
    from .mount.fuse import fuse_usable

    usable, why = fuse_usable()
    if usable:
        return "fuse"
    if transport == "fuse":
        raise VolumeMountError(f"cannot mount with FUSE: {why}")
    warnings.warn(
        f"FUSE is not usable here ({why}); the volume is mounted in-process only: use its .fs",
        RuntimeWarning,
        stacklevel=4,
    )
    return "none"


def _default_mount_path(volume_name: str) -> Path:
    return Path.home() / "volumes" / volume_name


def _kernel_path(volume_name: str, kernel: KernelOptions, transport: str) -> Optional[Path]:
    """The checked mount point of a FUSE mount (before anything is formatted or claimed, so a
    bad path changes nothing); None for in-process mounts."""
    if transport != "fuse":
        return None
    from .mount.fuse import prepare_mount_point

    path = kernel.mount_path or _default_mount_path(volume_name)
    prepare_mount_point(path)
    return path


def _attach(m: "Mount", kernel: KernelOptions, path: Optional[Path]) -> "Mount":
    """Start the kernel mount of ``m`` at ``path`` (FUSE only); release ``m`` on failure."""
    if path is None:
        workcopy.track_mount(m)
        return m
    from .mount.fuse import FuseMount

    try:
        m.kernel = FuseMount.start(
            m.engine, path, read_only=not m.writable, attr_cache=kernel.attr_cache,
            entry_cache=kernel.entry_cache, dir_entry_cache=kernel.dir_entry_cache,
            timeout=kernel.timeout, fsname=f"volume:{m.volume_name}", xattrs=kernel.xattrs,
        )  # fmt: skip
        m.mount_path = path
        workcopy.track_mount(m)  # (from here the exit hooks unmount it)
    except BaseException:  # a KeyboardInterrupt too: nothing stays mounted or marked live
        m.close(drain=False)
        raise
    return m


def mount_ro(
    volume: "ROVolume",
    kernel: KernelOptions,
    meta_dir: Optional[os.PathLike | str],
    cache_dir: Optional[os.PathLike | str],
    transport: str,
) -> Mount:
    """Mount a committed version read-only."""
    if volume._mount is not None:
        raise VolumeAlreadyMounted(f"volume {volume.name!r} is already mounted by this handle")
    if volume.index is None:
        raise VolumeNoIndex(
            f"volume {volume.name!r} has never been committed, so there is nothing to mount "
            f"read-only; mount it as an RWVolume (volume.as_rw().mount()) to create it"
        )
    chosen = _pick_transport(transport)
    path = _kernel_path(volume.name, kernel, chosen)
    objects = locations.object_store(volume)
    md = MetaDir.acquire(meta_dir, volume.name)
    try:
        stage_index(volume, objects, md, purpose="read")
        meta = meta_class(volume).open(md.path, read_only=True)
        try:
            engine = Engine(meta, objects, read_only=True, cache_dir=cache_dir)
        except BaseException:
            meta.close()
            raise
    except BaseException:
        md.release()
        objects.close()
        raise
    return _attach(Mount(volume.name, False, objects, meta, engine, md, chosen), kernel, path)


def mount_rw(
    volume: "RWVolume",
    kernel: KernelOptions,
    meta_dir: Optional[os.PathLike | str],
    cache_dir: Optional[os.PathLike | str],
    transport: str,
    *,
    upload_workers: int = 8,
    buffer_bytes: int = 300 << 20,
) -> Mount:
    """Mount a working copy: format it on first use, or continue from its index in a new domain."""
    if volume._mount is not None:
        raise VolumeAlreadyMounted(f"volume {volume.name!r} is already mounted by this handle")
    chosen = _pick_transport(transport)
    path = _kernel_path(volume.name, kernel, chosen)
    objects = locations.object_store(volume)
    if not objects.capabilities.conditional_put and os.environ.get(ENV_SINGLE_WRITER) != "1":
        objects.close()
        raise VolumeMountError(
            f"the {volume.storage!r} store cannot do conditional writes, so two writers could "
            f"overwrite each other's blocks; writable mounts are refused on it unless you set "
            f"{ENV_SINGLE_WRITER}=1 and guarantee a single writer"
        )
    staged = volume._staged_meta_dir
    md = MetaDir.acquire(meta_dir if meta_dir is not None else staged, volume.name)
    if meta_dir is None and staged is not None:
        md.owned = True  # the fork's temporary dir now belongs to this mount
        volume._staged_meta_dir = None
    store_cls = meta_class(volume)
    fmt = None  # the new volume's Format once its name is claimed (first mounts)
    try:
        marker = md.marker()
        resumed = workcopy.resumable(md, volume, objects, store_cls.name)
        if not resumed:
            workcopy.discard_unresumed(md, objects)
        if resumed:
            meta = store_cls.open(md.path)
            fmt_now = meta.load_format()
            if not workcopy.check_uuid(objects, fmt_now):
                raise VolumeStoreMismatch(
                    f"meta_dir {md.path} holds a working copy of {volume.name!r} from another "
                    f"bucket or an earlier volume of that name; pass another meta_dir"
                )
            if marker.get("domain") is not None:
                workcopy.repair_lost_blocks(meta, objects, int(marker["domain"]))
            domain = claim_domain(objects, fmt_now.Name, volume.name)
            log.warning("volume %s: resuming the unpublished working copy in %s", volume.name,
                        md.path)  # fmt: skip
        elif volume.index is None:
            md.clear(store_cls)
            meta = store_cls.open(md.path)
            try:
                fmt = workcopy.claim_name(
                    objects,
                    new_format(
                        volume.name,
                        storage=volume.storage,
                        # the JuiceFS client's own Bucket form where the store has one (S3:
                        # the endpoint URL), so that the real client can mount what we commit
                        bucket=getattr(objects, "format_bucket", objects.uri),
                    ),
                )
                meta.format(fmt, time.time_ns())
                fmt_now = meta.load_format()
            except BaseException:
                meta.close()
                md.clear(store_cls)
                raise
            domain = claim_domain(objects, fmt.Name, volume.name)
        elif (
            marker is not None
            and marker.get("state") == "forked"
            and marker.get("path") == volume.index.path
        ):
            meta = store_cls.open(md.path)
            fmt_now = meta.load_format()
            domain = int(marker["domain"])
        else:
            stage_index(volume, objects, md, purpose="write", replace_copy=True)
            meta = store_cls.open(md.path)
            fmt_now = meta.load_format()
            domain = claim_domain(objects, fmt_now.Name, volume.name)
        md.set_marker(
            **workcopy.working_copy_marker(
                volume, objects, store_cls.name, domain, fmt_now.UUID, family=fmt_now.Name,
                kept=workcopy.kept_domains(md, marker if resumed else None, domain),
            )
        )  # fmt: skip
        workcopy.keep(md, objects)  # before the first block: a SIGKILL leaves nothing unmarked
        with meta.transaction(write=True) as tx:
            enter_domain(tx, domain)
        engine = Engine(
            meta, objects, upload_workers=upload_workers, buffer_bytes=buffer_bytes,
            cache_dir=cache_dir, io_timeout=kernel.timeout,
        )  # fmt: skip
        if resumed:
            engine.modified = True  # a resumed working copy holds unpublished changes
        live, reclaimer = _start_session(objects, meta, engine, domain)
    except BaseException:
        if fmt is not None:
            workcopy.first_mount_failed(objects, fmt)
        with contextlib.suppress(Exception):
            meta.close()  # type: ignore[possibly-undefined]
        md.release()
        objects.close()
        raise
    try:
        m = _attach(
            Mount(volume.name, True, objects, meta, engine, md, chosen, live=live,
                  reclaimer=reclaimer), kernel, path,
        )  # fmt: skip
    except BaseException:
        if fmt is not None:
            workcopy.first_mount_failed(objects, fmt)
        raise
    if fmt is not None:
        workcopy.first_mount_done(objects, fmt)
    return m


def _start_session(objects: ObjectStore, meta: MetaStore, engine: Engine, domain: int) -> Any:
    """Mark the session's slice domain live for gc (``volume.gc.LiveMarker``) and start the
    reclaimer of its own garbage (``volume.engine.reclaim``)."""
    from . import gc
    from .engine.reclaim import Reclaimer

    live = gc.LiveMarker(objects, meta.load_format().Name, domain, gc.HEARTBEAT_SECONDS)
    try:
        return live, Reclaimer(engine, domain, io_timeout=engine.io_timeout)
    except BaseException:
        live.stop()
        raise


def unmount(volume: "Volume") -> None:
    """Release the handle's mount; a writable one abandons unpublished work, loudly."""
    m: Optional[Mount] = volume._mount
    if m is None:
        raise VolumeNotMounted(f"volume {volume.name!r} is not mounted")
    volume._mount = None
    if m.writable and workcopy.signalled() is not None:
        workcopy.close_at_exit(m)  # the process ends by a signal: keep the working copy
        return
    if m.writable and m.engine.modified:
        warnings.warn(
            f"unmounting RWVolume {volume.name!r} abandons the changes made since its last "
            f"commit; call commit() or finalize() to keep them",
            RuntimeWarning,
            stacklevel=3,
        )
        log.warning("volume %s: unmounted with unpublished changes (abandoned)", volume.name)
    if m.writable:
        m.meta_dir.set_state(workcopy.ABANDONED)
        workcopy.unkeep(m.meta_dir, m.objects)
    m.close(drain=False)


