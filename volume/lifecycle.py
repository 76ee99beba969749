"""The verbs: declare, mount, commit, finalize, fork, migrate, and loading versions back.

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

import contextlib
import contextvars
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, TypeVar

from . import keys, plugins, workcopy
from .allocator import advance_counters, claim_domain, enter_domain
from .engine import Engine, PathFS, new_format
from .errors import (
    ObjectNotFound,
    VolumeAlreadyMounted,
    VolumeCommitError,
    VolumeIndexCorrupt,
    VolumeMigrateNoop,
    VolumeMountError,
    VolumeNoIndex,
    VolumeNotForkable,
    VolumeNotMounted,
    VolumeReadOnly,
    VolumeStoreMismatch,
    VolumeSystemError,
    VolumeUsageError,
)
from .juicefs import COUNTER_TOTAL_INODES, COUNTER_USED_SPACE
from .lineage import current_action
from .pins import pin_snapshot
from .stores import MetaStore, ObjectStore

if TYPE_CHECKING:
    from .model import ActionRef, File, ROVolume, RWVolume, Volume

log = logging.getLogger("volume.lifecycle")

ENV_BUCKET = "UNION_VOLUME_BUCKET"
ENV_METADATA_STORE = "UNION_VOLUME_METADATA_STORE"
ENV_SINGLE_WRITER = "UNION_VOLUME_SINGLE_WRITER"
DEFAULT_METADATA_STORE = "sqlite"
VERSION_DOCUMENT = "volume.json"
LOCK_FILE = ".volume.lock"
MARKER_FILE = ".volume-index.json"
TRANSPORTS = ("auto", "fuse", "none")

V = TypeVar("V", bound="Volume")

#: ``progress(done, total, unit)``: how far a long call (commit, finalize, migrate) has come.
#: ``done`` never decreases, ``total`` never decreases (it grows only when work appears that was
#: not known up front: writes arriving during a commit, the index once its size is known), and
#: the last call has ``done == total``. Called from the working thread or a sampler thread,
#: never two at a time. See :func:`reporting_progress`.
Progress = Callable[[int, int, str], None]
PROGRESS_INTERVAL = 0.1  # seconds between two samples of a commit's pending uploads
_progress: contextvars.ContextVar[Optional[Progress]] = contextvars.ContextVar(
    "volume_progress", default=None
)


@contextlib.contextmanager
def reporting_progress(progress: Optional[Progress]) -> Iterator[None]:
    """Report the progress of every commit, finalize and migrate this thread makes inside the
    ``with`` block to ``progress`` (a :data:`Progress`), leaving the handles' signatures alone::

        with reporting_progress(lambda done, total, unit: print(done, total, unit)):
            rw.finalize("nightly")

    Commit and finalize count bytes: the buffered writes and pending block uploads (known up
    front), then the index upload. Migrate counts inodes: the version's inode count is the
    total, and an inode is half done once dumped, done once loaded.
    """
    token = _progress.set(progress)
    try:
        yield
    finally:
        _progress.reset(token)


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


# =========================================================================== stores


def object_store(volume: "Volume") -> ObjectStore:
    """The object store holding the volume's bucket (region from the volume or AWS_* env)."""
    cls = plugins.object_store_class(volume.storage)
    region = volume.region
    if region is None and volume.storage == "s3":
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return cls.from_uri(volume.bucket, region=region)


def _meta_class(volume: "Volume") -> type[MetaStore]:
    return plugins.meta_store_class(volume.metadata_store_type or DEFAULT_METADATA_STORE)


def _uri(objects: ObjectStore, key: str) -> str:
    return f"{objects.uri.rstrip('/')}/{key}"


def _bucket_key(objects: ObjectStore, uri: str) -> Optional[str]:
    """The key of ``uri`` in ``objects``, or None when it lies outside the store's root.

    Besides the store's own URI form, a ``file`` store takes a plain path and a relative
    ``file://`` URI of its directory (relative to the working directory).
    """
    root = objects.uri.rstrip("/") + "/"
    plain = _SCHEME.match(uri) is None
    if (root.startswith("file://") and plain) or uri.startswith("file://"):
        local = uri[len("file://") :] if uri.startswith("file://") else uri
        uri = "file://" + os.path.normpath(os.path.abspath(os.path.expanduser(local)))
    return uri[len(root) :] if uri.startswith(root) else None


def _key_of(objects: ObjectStore, uri: str) -> str:
    key = _bucket_key(objects, uri)
    if key is None:
        raise VolumeIndexCorrupt(
            f"index {uri!r} is not inside the volume's bucket {objects.uri!r}; the volume document "
            f"is inconsistent"
        )
    return key


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def fetch_index(volume: "Volume", objects: ObjectStore, dest: Path) -> bool:
    """Download the volume's index to ``dest`` and verify it against ``index.hash``; whether it
    had a hash to match (then a store's restore may skip its own checks for damage).

    The index may be anywhere the volume's object store or fsspec can read: a key of the volume's
    own store (in the store's URI form, or as a plain path for ``file`` buckets), another
    location of an installed object store (same credentials and region rules), or any fsspec URL.
    Its hash is always checked; an index outside the bucket must carry one. Raises
    :class:`VolumeIndexCorrupt` (nothing is left at ``dest``) when it is missing, unreadable or
    does not match.
    """
    index = volume.index
    assert index is not None
    key = _bucket_key(objects, index.path)
    if key is None and not index.hash:
        raise VolumeIndexCorrupt(
            f"the index {index.path} of volume {volume.name!r} lies outside its bucket "
            f"{objects.uri!r} and has no hash to verify it by; record its hash (sha256:<hex>) in "
            f"the volume document"
        )
    try:
        try:
            if key is not None:
                objects.get_file(key, dest)
            else:
                _fetch_outside(volume, index.path, dest)
        except (ObjectNotFound, FileNotFoundError) as exc:
            raise VolumeIndexCorrupt(
                f"the index {index.path} of volume {volume.name!r} does not exist; the version "
                f"was never published completely or was deleted"
            ) from exc
        if index.hash:
            actual = _digest(dest, index.hash)
            if actual != index.hash:
                raise VolumeIndexCorrupt(
                    f"the index {index.path} does not match its recorded hash {index.hash} "
                    f"(it hashes to {actual}); it is corrupt or was replaced"
                )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return bool(index.hash)


def restore_index(
    volume: "Volume", objects: ObjectStore, store_cls: type[MetaStore], meta_dir: Path
) -> None:
    """Download the volume's index into ``meta_dir``, verify it (:func:`fetch_index`) and
    restore it there: verified when it matched its hash, and moved into place, never copied."""
    meta_dir.mkdir(parents=True, exist_ok=True)
    download = meta_dir / f".download-{secrets.token_hex(4)}"
    try:
        verified = fetch_index(volume, objects, download)
        store_cls.restore(download, meta_dir, verified=verified, move=True)
    finally:
        download.unlink(missing_ok=True)


def _digest(path: Path, recorded: str) -> str:
    """The hash of ``path`` in the form of ``recorded`` (``<algorithm>:<hex>``)."""
    algorithm, sep, _ = recorded.partition(":")
    if not sep or algorithm not in hashlib.algorithms_guaranteed:
        raise VolumeIndexCorrupt(
            f"the index hash {recorded!r} is not of the form <algorithm>:<hex> with a known "
            f"algorithm such as sha256"
        )
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{algorithm}:{h.hexdigest()}"


def _fetch_outside(volume: "Volume", uri: str, dest: Path) -> None:
    """Copy ``uri`` (outside the volume's bucket) to ``dest``."""
    region = volume.region if _location_storage(uri) == volume.storage else None
    with _location(uri, region) as (store, name):
        if store is not None:
            store.get_file(name, dest)
            return
    import fsspec

    try:
        with fsspec.open(uri, "rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except FileNotFoundError:
        raise
    except (ValueError, ImportError, OSError) as exc:
        raise VolumeIndexCorrupt(f"cannot read the index {uri!r}: {exc}") from exc


def _location_storage(uri: str) -> Optional[str]:
    """The installed object store that reads ``uri`` (a plain path is ``file``), or None."""
    from .errors import PluginNotFound, VolumeValidationError
    from .model import _scheme_storage

    if "::" in uri:  # an fsspec chained URL (simplecache::s3://...)
        return None
    try:
        storage = _scheme_storage(uri) or "file"
        plugins.object_store_class(storage)
    except (VolumeValidationError, PluginNotFound):
        return None
    return storage


@contextlib.contextmanager
def _location(uri: str, region: Optional[str]) -> Any:
    """``(store, key)`` of an installed object store opened on the directory of ``uri``, or
    ``(None, None)`` when no installed store reads it (the caller then tries fsspec)."""
    storage = _location_storage(uri)
    if storage == "file":  # the file's directory
        root, _, key = uri.rpartition("/")
    elif storage is not None:  # the bucket (container, store name) the URI begins with
        scheme, _, rest = uri.partition("://")
        bucket, _, key = rest.partition("/")
        root = f"{scheme}://{bucket}"
    if storage is None or not key or not root or root.endswith((":/", "://")):
        yield None, None
        return
    store = plugins.object_store_class(storage).from_uri(root, region=region)
    try:
        yield store, key
    finally:
        store.close()


# =========================================================================== meta dirs


@dataclass
class MetaDir:
    """A local metadata directory held exclusively (flock) while a mount or fork uses it."""

    path: Path
    owned: bool  # created here, removed on release
    lock_fd: int

    @classmethod
    def acquire(cls, meta_dir: Optional[os.PathLike | str], volume_name: str) -> "MetaDir":
        """Lock ``meta_dir`` (a new temporary directory when None)."""
        if meta_dir is None:
            path, owned = workcopy.make_temp(volume_name), True  # never outlives the process
        else:
            path, owned = Path(meta_dir).expanduser().resolve(), False
            if path.exists() and not path.is_dir():
                raise VolumeUsageError(f"meta_dir {path} is a file; pass a directory")
            path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise VolumeAlreadyMounted(
                f"meta_dir {path} is in use by another mount or fork; unmount that one first or "
                f"pass another meta_dir"
            ) from None
        return cls(path, owned, fd)

    def marker(self) -> dict[str, Any] | None:
        """What the directory holds, as recorded after the last complete preparation."""
        try:
            return json.loads((self.path / MARKER_FILE).read_text())
        except (OSError, ValueError):
            return None

    def set_marker(self, **fields: Any) -> None:
        tmp = self.path / f"{MARKER_FILE}.tmp"
        tmp.write_text(json.dumps(fields))
        tmp.replace(self.path / MARKER_FILE)

    def clear(self, store_cls: type[MetaStore]) -> None:
        """Forget the store kept here (the marker first, so a crash leaves nothing trusted)."""
        (self.path / MARKER_FILE).unlink(missing_ok=True)
        clear_dir = getattr(store_cls, "clear_meta_dir", None)
        if clear_dir is not None:  # a store with a server: stop a stale one, remove its files
            clear_dir(self.path)
        for suffix in ("", "-wal", "-shm", "-journal"):
            (self.path / f"{store_cls.index_filename}{suffix}").unlink(missing_ok=True)
        others = [p.name for p in self.path.iterdir() if p.name not in (LOCK_FILE,)]
        if others and not self.owned:
            raise VolumeStoreMismatch(
                f"meta_dir {self.path} holds files of another store or tool ({', '.join(others)}); "
                f"pass an empty directory"
            )

    def release(self) -> None:
        """Unlock (and remove the directory when it was created here)."""
        if self.lock_fd < 0:
            return
        os.close(self.lock_fd)
        self.lock_fd = -1
        if self.owned:
            workcopy.remove_temp(self.path)

    def set_state(self, state: str) -> None:
        """Record what became of the working copy kept here (see :mod:`volume.workcopy`)."""
        marker = self.marker()
        if marker is not None and marker.get("state") == workcopy.IN_USE:
            self.set_marker(**{**marker, "state": state})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def _stage_index(
    volume: "Volume", objects: ObjectStore, md: MetaDir, *, purpose: str, replace_copy: bool = False
) -> None:
    """Make ``md`` hold the volume's committed index, reusing a pristine local copy. An
    unpublished working copy kept there is refused unless ``replace_copy`` (a writable mount of
    another volume, which discards it)."""
    index = volume.index
    assert index is not None
    store_cls = _meta_class(volume)
    if index.format and index.format != store_cls.name:
        raise VolumeStoreMismatch(
            f"volume {volume.name!r} says metadata_store_type={store_cls.name!r} but its index "
            f"{index.path} is a {index.format!r} index; fix the volume document or migrate it"
        )
    local = md.path / store_cls.index_filename
    marker = md.marker()
    if (
        purpose == "read"
        and marker is not None
        and marker.get("state") == "pristine"
        and marker.get("path") == index.path
        and marker.get("hash") == index.hash
        and local.exists()
        and marker.get("size") == local.stat().st_size
    ):
        return
    if not replace_copy:
        workcopy.refuse_unpublished(md)
    if marker is not None and marker.get("store") not in (None, store_cls.name):
        raise VolumeStoreMismatch(
            f"meta_dir {md.path} holds a {marker.get('store')!r} store, but volume "
            f"{volume.name!r} uses {store_cls.name!r}; pass another meta_dir"
        )
    md.clear(store_cls)
    restore_index(volume, objects, store_cls, md.path)
    md.set_marker(
        path=index.path, size=local.stat().st_size, store=store_cls.name, state="pristine",
        hash=index.hash,
    )  # fmt: skip


# =========================================================================== mounts


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
    except BaseException:
        m.close(drain=False)
        raise
    m.mount_path = path
    workcopy.track_mount(m)
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
    objects = object_store(volume)
    md = MetaDir.acquire(meta_dir, volume.name)
    try:
        _stage_index(volume, objects, md, purpose="read")
        meta = _meta_class(volume).open(md.path, read_only=True)
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
    objects = object_store(volume)
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
    store_cls = _meta_class(volume)
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
            _stage_index(volume, objects, md, purpose="write", replace_copy=True)
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


# =========================================================================== progress


class _Meter:
    """Monotone ``(done, total, unit)`` reports to a :data:`Progress` callback (or nowhere)."""

    def __init__(self, callback: Optional[Progress], unit: str, total: int = 0):
        self.callback, self.unit = callback or _progress.get(), unit
        self.done, self.total = 0, max(total, 0)
        self._lock = threading.Lock()
        self._report()

    def _report(self) -> None:
        if self.callback is not None:
            try:
                self.callback(self.done, self.total, self.unit)
            except Exception:  # noqa: BLE001 - a display never fails the work it shows
                log.debug("progress callback failed", exc_info=True)

    def update(self, *, done: Optional[int] = None, remaining: Optional[int] = None,
               add_total: int = 0) -> None:  # fmt: skip
        """Raise the total by ``add_total``; then move ``done`` up to ``done``, or to what leaves
        ``remaining`` (the total grows when more than that remains)."""
        with self._lock:
            before = (self.done, self.total)
            self.total += max(add_total, 0)
            if remaining is not None:
                self.total = max(self.total, self.done + max(remaining, 0))
                done = self.total - max(remaining, 0)
            if done is not None:
                self.done = min(max(self.done, done), self.total)
            if (self.done, self.total) != before:
                self._report()

    def finish(self) -> None:
        self.update(done=self.total)

    @contextlib.contextmanager
    def sampling(self, remaining: Callable[[], int]) -> Iterator[None]:
        """Sample ``remaining()`` every :data:`PROGRESS_INTERVAL` while the block runs (and once
        more after it succeeded)."""
        if self.callback is None:
            yield
            return
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(PROGRESS_INTERVAL):
                with contextlib.suppress(Exception):  # only a display: never fails the work
                    self.update(remaining=remaining())

        sampler = threading.Thread(target=sample, name="volume-progress", daemon=True)
        sampler.start()
        try:
            yield
        finally:
            stop.set()
            sampler.join()
        self.update(remaining=remaining())


def _unstored_bytes(engine: Engine) -> int:
    """Bytes a drain of ``engine`` still has to store (buffered writes and pending uploads)."""
    blocks = engine.blocks
    return int(blocks.buffered_bytes) + int(blocks.pending_bytes)


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
    meter: Optional[_Meter] = None,
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
            path=_uri(objects, index_key),
            name=store_cls.index_filename,
            format=store_cls.name,
            hash=_sha256(snap),
        )
    produced_by = current_action().model_copy(
        update={"locator": _uri(objects, prefix + VERSION_DOCUMENT)}
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
            with meter.sampling(lambda: _unstored_bytes(engine)):
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
    meter = _Meter(progress, "bytes", _unstored_bytes(engine))
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
    objects = object_store(volume)
    md = MetaDir.acquire(meta_dir, name)
    try:
        _stage_index(volume, objects, md, purpose="write")
        md.set_marker(store=_meta_class(volume).name, state="preparing")
        with _meta_class(volume).open(md.path) as meta:
            fs_name = meta.load_format().Name
            domain = claim_domain(objects, fs_name, name)
            with meta.transaction(write=True) as tx:
                enter_domain(tx, domain)
                advance_counters(tx)
        md.set_marker(
            path=volume.index.path, store=_meta_class(volume).name, state="forked", domain=domain
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
        update={"locator": _uri(objects, prefix + VERSION_DOCUMENT)}
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
    objects = object_store(volume)
    src_dir = MetaDir.acquire(meta_dir, volume.name)
    dst_dir = MetaDir.acquire(new_meta_dir, f"{volume.name}-{new_type}")
    try:
        _stage_index(volume, objects, src_dir, purpose="read")
        workcopy.refuse_unpublished(dst_dir)
        dst_dir.clear(target_cls)
        with _meta_class(volume).open(src_dir.path, read_only=True) as src, target_cls.open(
            dst_dir.path
        ) as dst:
            with src.transaction() as tx:
                inodes = max(tx.get_counter(COUNTER_TOTAL_INODES), 1)
            meter = _Meter(progress, "inodes", inodes)
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
        with _location(uri, None) as (store, name):
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
