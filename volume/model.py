"""The public data model: the Volume handle and the JSON document it serialises to.

A :class:`Volume` is a small pydantic model; its JSON (kind ``flyte.volume/v1``) is all another
process or machine needs to mount that exact version. ``spec/volume.md`` is the normative
description and ``spec/volume.schema.json`` is generated from :class:`Volume` (regenerate with
``python -m volume._schema``).

Validation errors. Building a model (``Volume(...)``, ``model_validate``, ``model_validate_json``,
attribute assignment) raises :class:`pydantic.ValidationError`, as every pydantic user expects.
:meth:`Volume.parse` takes a dict or JSON text and raises
:class:`~volume.errors.VolumeValidationError` instead, with the same messages, for callers that
handle the project's typed errors. The validators themselves raise ``VolumeValidationError``, which
is a ``ValueError`` and so is reported by pydantic like any other value error.

The verbs (new, mount, commit, fork, ...) are declared here with their final signatures; their
behaviour lives in the lifecycle and mount layers.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
import re
import threading
import warnings
from typing import TYPE_CHECKING, Annotated, Any, Literal, Mapping, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic.json_schema import WithJsonSchema
from pydantic_core import ErrorDetails
from typing_extensions import Self

from . import plugins
from .errors import (
    VolumeError,
    VolumeNotMounted,
    VolumeReadOnly,
    VolumeUsageError,
    VolumeValidationError,
)
from .juicefs import VOLUME_NAME_RULE, is_valid_volume_name

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = ["ActionRef", "File", "Volume", "ROVolume", "RWVolume", "VOLUME_KIND"]

VOLUME_KIND = "flyte.volume/v1"

PathArg = Optional[Union[str, os.PathLike]]

# Storages every volume may name, installed or not: a handle written on another machine must still
# load here (using it then needs the plugin).
_BUILTIN_STORAGES = ("file", "gs", "s3", "wasb")
_STORAGE_BY_SCHEME = {
    "s3": "s3",
    "gs": "gs",
    "gcs": "gs",
    "abfs": "wasb",
    "abfss": "wasb",
    "wasb": "wasb",
    "wasbs": "wasb",
    "file": "file",
}
# Storages whose URIs begin with a bucket/container name, so "s3:///x" names no bucket.
_NAMED_BUCKET_STORAGES = frozenset({"s3", "gs", "wasb"})
# Redis arrives as a plugin later, but volumes made elsewhere may already name it.
_BUILTIN_META_STORES = ("redis",)

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


# --------------------------------------------------------------------------- value checks


def _accepted_storages() -> list[str]:
    return sorted(set(_BUILTIN_STORAGES) | set(plugins.names(plugins.OBJECT_STORES)))


def _accepted_meta_stores() -> list[str]:
    return sorted(set(_BUILTIN_META_STORES) | set(plugins.names(plugins.META_STORES)))


def _storage_by_scheme() -> dict[str, str]:
    # an installed object-store plugin owns the URI scheme of its own name (memory://...)
    plugin_schemes = {name: name for name in plugins.names(plugins.OBJECT_STORES)}
    return {**plugin_schemes, **_STORAGE_BY_SCHEME}


def _check_name(name: str) -> str:
    if not is_valid_volume_name(name):
        raise VolumeValidationError(
            f"volume name {name!r} does not follow the JuiceFS rule {VOLUME_NAME_RULE}: "
            f"3 to 63 characters of lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit"
        )
    return name


def _check_storage(storage: str) -> str:
    accepted = _accepted_storages()
    if storage not in accepted:
        raise VolumeValidationError(
            f"unknown storage {storage!r}; accepted: {', '.join(accepted)} "
            f"(install an object-store plugin to add another)"
        )
    return storage


def _check_meta_store(store_type: Optional[str]) -> Optional[str]:
    if store_type is None:
        return None
    accepted = _accepted_meta_stores()
    if store_type not in accepted:
        raise VolumeValidationError(
            f"unknown metadata store type {store_type!r}; accepted: {', '.join(accepted)} "
            f"(install a metadata-store plugin to add another)"
        )
    return store_type


def _scheme_storage(bucket: str) -> Optional[str]:
    """The storage the bucket's URI scheme names, or None for a plain path (no scheme).

    Raises :class:`VolumeValidationError` for a malformed bucket or an unsupported scheme.
    """
    if not bucket.strip():
        raise VolumeValidationError(
            f"bucket {bucket!r} is empty; give an object-store URI such as s3://bucket/prefix "
            f"or a local directory"
        )
    if "\0" in bucket:
        raise VolumeValidationError(f"bucket {bucket!r} contains a NUL character")
    match = _SCHEME_RE.match(bucket)
    if match is None:
        return None
    scheme = match.group(1).lower()
    by_scheme = _storage_by_scheme()
    storage = by_scheme.get(scheme)
    if storage is None:
        supported = ", ".join(f"{s}://" for s in sorted(by_scheme))
        raise VolumeValidationError(
            f"bucket {bucket!r} has the unsupported scheme '{scheme}://'; "
            f"supported: {supported}, or a plain local path"
        )
    rest = bucket[match.end() :]
    named_bucket = storage in _NAMED_BUCKET_STORAGES
    if not rest or (named_bucket and rest.startswith("/")):
        form = "<bucket>[/prefix]" if named_bucket else "<path>"
        raise VolumeValidationError(
            f"bucket {bucket!r} names no {'bucket' if named_bucket else 'path'} after "
            f"'{scheme}://'; write {scheme}://{form}"
        )
    return storage


def _check_agreement(storage: str, bucket: str, implied: Optional[str]) -> str:
    """``storage``, unless the bucket's scheme (which means storage ``implied``) contradicts it."""
    if implied is not None and implied != storage:
        raise VolumeValidationError(
            f"storage {storage!r} does not match bucket {bucket!r}, whose scheme means storage "
            f"{implied!r}; omit storage to infer it from the bucket, or fix one of the two"
        )
    return storage


def _describe_error(err: ErrorDetails) -> str:
    """One pydantic error as "field: message", with our own exception's text where there is one."""
    own = err.get("ctx", {}).get("error")
    message = str(own) if isinstance(own, VolumeValidationError) else err["msg"]
    where = ".".join(map(str, err["loc"]))
    return f"{where}: {message}" if where else message


def _as_path(p: PathArg) -> Optional[Path]:
    return None if p is None else Path(p)


def _check_flag(name: str, value: object) -> bool:
    """``value`` when it is a bool; :class:`VolumeUsageError` otherwise (``"no"`` is truthy)."""
    if not isinstance(value, bool):
        raise VolumeUsageError(f"{name} must be True or False, not {value!r}")
    return value


# --------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(validate_assignment=True, extra="forbid")


class ActionRef(_Model):
    """The Flyte action that produced a volume version."""

    name: str = Field(description="Name of the action within its run.")
    run_name: Optional[str] = Field(default=None, description="Name of the run.")
    project: Optional[str] = Field(default=None, description="Flyte project of the run.")
    domain: Optional[str] = Field(default=None, description="Flyte domain of the run.")
    org: Optional[str] = Field(default=None, description="Flyte organisation of the run.")
    output_name: Optional[str] = Field(
        default=None, description="Name of the action output that holds the volume."
    )
    locator: Optional[str] = Field(
        default=None,
        description="URI of the version document this action produced "
        "(what Volume.from_locator loads).",
    )


class File(_Model):
    """A file reference, in the JSON shape of ``flyte.io.File``."""

    path: str = Field(description="URI or local path of the file.")
    name: Optional[str] = Field(default=None, description="Display name of the file.")
    format: Optional[str] = Field(default=None, description="Format tag of the file.")
    hash: Optional[str] = Field(default=None, description="Content hash, when known.")


class Volume(_Model):
    """A handle to one version of a volume: the flyte.volume/v1 document of spec/volume.md."""

    kind: Literal["flyte.volume/v1"] = Field(
        default=VOLUME_KIND, description="Document kind and version; always 'flyte.volume/v1'."
    )
    name: str = Field(
        description="The handle's own name; follows the JuiceFS volume-name rule "
        f"{VOLUME_NAME_RULE}.",
        json_schema_extra={"pattern": VOLUME_NAME_RULE},
    )
    bucket: str = Field(
        description="Where the volume's objects live: an object-store URI (s3://bucket/prefix, "
        "gs://..., abfs://...) or a local directory (file:///dir or a plain path). "
        "Kept exactly as given; Volume.new and Volume.empty store a local directory absolute."
    )
    # Typed str because a validated volume always has one; null or absent in the input means
    # "infer it from the bucket", which the JSON schema must allow.
    storage: Annotated[str, WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "null"}]})] = (
        Field(
            default=None,
            validate_default=True,
            description="Object-store backend: s3, gs, wasb, file or the name of an installed "
            "object-store plugin. Inferred from the bucket's scheme when absent or null.",
        )
    )
    region: Optional[str] = Field(
        default=None, description="Object-store region, for backends that need one."
    )
    index: Optional[File] = Field(
        default=None,
        description="The committed index (a metadata-store snapshot); null until the first "
        "commit.",
    )
    metadata_store_type: Optional[str] = Field(
        default=None,
        description="Metadata-store type the index was written with: sqlite, redis or the name "
        "of an installed metadata-store plugin.",
    )
    used_bytes: Optional[int] = Field(
        default=None, ge=0, description="Bytes used by files (JuiceFS usedSpace) at commit."
    )
    inode_count: Optional[int] = Field(
        default=None, ge=0, description="Number of inodes (JuiceFS totalInodes) at commit."
    )
    index_bytes: Optional[int] = Field(
        default=None, ge=0, description="Size of the uploaded index in bytes."
    )
    message: Optional[str] = Field(default=None, description="Commit message of this version.")
    produced_by: Optional[ActionRef] = Field(
        default=None, description="The action that produced this version."
    )
    parent_produced_by: Optional[ActionRef] = Field(
        default=None, description="The action that produced the version this one derives from."
    )

    # ----------------------------------------------------------------- validation

    @field_validator("name")
    @classmethod
    def _validate_name(cls, name: str) -> str:
        return _check_name(name)

    # The storage/bucket agreement is checked by whichever of the two fields is validated second
    # (storage on construction, either one on assignment), not by an after-model validator: a
    # failing one of those leaves an assigned value in place (pydantic issue #7105).

    @field_validator("bucket")
    @classmethod
    def _validate_bucket(cls, bucket: str, info: ValidationInfo) -> str:
        implied = _scheme_storage(bucket)
        storage = info.data.get("storage")
        if storage is not None:
            _check_agreement(storage, bucket, implied)
        return bucket

    @field_validator("storage", mode="wrap")
    @classmethod
    def _validate_storage(
        cls, storage: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Optional[str]:
        bucket = info.data.get("bucket")
        if bucket is None:  # the bucket failed and is reported already; nothing to compare with
            return None if storage is None else _check_storage(handler(storage))
        implied = _scheme_storage(bucket)
        if storage is None:
            return implied or "file"
        return _check_agreement(_check_storage(handler(storage)), bucket, implied)

    @field_validator("metadata_store_type")
    @classmethod
    def _validate_metadata_store_type(cls, store_type: Optional[str]) -> Optional[str]:
        return _check_meta_store(store_type)

    @classmethod
    def parse(cls, data: Union[Mapping[str, Any], str, bytes]) -> Self:
        """Validate a dict or JSON text into this class.

        Unlike the pydantic constructors, which raise :class:`pydantic.ValidationError`, this
        raises :class:`~volume.errors.VolumeValidationError` carrying every error message (the
        pydantic error is its ``__cause__``).
        """
        try:
            if isinstance(data, (str, bytes)):
                return cls.model_validate_json(data)
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(_describe_error(err) for err in exc.errors())
            raise VolumeValidationError(f"invalid {cls.__name__}: {problems}") from exc

    # ----------------------------------------------------------------- conversions

    def as_ro(self) -> ROVolume:
        """This document as an :class:`ROVolume` (a copy; every field kept, mount state not)."""
        return ROVolume.model_validate(self.model_dump())

    def as_rw(self) -> RWVolume:
        """This document as an :class:`RWVolume` (a copy; every field kept, mount state not)."""
        return RWVolume.model_validate(self.model_dump())

    # ----------------------------------------------------------------- mount state

    # the live mount this handle owns; private so the JSON stays the document
    _mount: Any = PrivateAttr(default=None)

    # a fork's prepared metadata directory, handed to the first mount when none is given
    _staged_meta_dir: Any = PrivateAttr(default=None)

    @property
    def mounted(self) -> bool:
        """Whether this handle currently owns a mount."""
        return self._mount is not None

    @property
    def fs(self) -> AbstractFileSystem:
        """The in-process (fsspec-compatible) file system of the mounted volume."""
        if self._mount is None:
            raise VolumeNotMounted(f"volume {self.name!r} is not mounted; call mount() first")
        return self._mount.fs

    def unmount(self) -> None:
        """Release this handle's mount (a writable one abandons unpublished work, loudly)."""
        from . import mounts

        mounts.unmount(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._mount is not None:
            self.unmount()

    # ----------------------------------------------------------------- seed API

    @classmethod
    def empty(
        cls,
        name: str,
        bucket: Optional[str] = None,
        storage: Optional[str] = None,
        region: Optional[str] = None,
        metadata_store_type: Optional[str] = None,
    ) -> Volume:
        """Declare a brand-new, empty volume; its first mount formats it. No I/O.

        ``bucket`` defaults to the one the running action's context gives (inside a Flyte task:
        ``{raw_data_root}/{project}/{domain}/volumes``, see ``volume.lineage.default_bucket``),
        else ``$UNION_VOLUME_BUCKET`` (a relative local directory is stored absolute);
        ``metadata_store_type`` to ``$UNION_VOLUME_METADATA_STORE``, else ``sqlite``.
        """
        from . import lifecycle, lineage

        bucket = bucket or lineage.default_bucket()
        return lifecycle.declare(Volume, name, bucket, storage, region, metadata_store_type)

    @classmethod
    def new(
        cls,
        name: Optional[str] = None,
        bucket: Optional[str] = None,
        storage: Optional[str] = None,
        region: Optional[str] = None,
        metadata_store_type: Optional[str] = None,
    ) -> RWVolume:
        """Declare a brand-new volume as a writable working copy (``vol-<8 hex>`` if ``name`` is
        None; any other name, ``""`` included, must follow the name rule).

        No I/O; defaults as in :meth:`empty`.
        """
        from . import lifecycle, lineage

        if name is None:
            name = lifecycle.auto_name()
        bucket = bucket or lineage.default_bucket()
        return lifecycle.declare(RWVolume, name, bucket, storage, region, metadata_store_type)

    @classmethod
    def from_locator(cls, uri: str) -> ROVolume:
        """Load the committed version whose version document (locator) is at ``uri``."""
        from . import lifecycle

        return lifecycle.from_locator(uri)

    def mount(
        self,
        mount_path: PathArg = None,
        meta_dir: PathArg = None,
        cache_dir: PathArg = None,
        timeout: float = 120,
        writeback: bool = True,
        upload_delay: Optional[str] = None,
        max_uploads: int = 8,
        attr_cache: float = 1.0,
        entry_cache: float = 1.0,
        dir_entry_cache: float = 1.0,
        read_only: Optional[bool] = None,
        transport: str = "auto",
    ) -> Self:
        """Mount this volume (the seed's legacy form); returns self.

        A never-committed volume is formatted on its first mount and mounts writable; a
        committed version mounts read-only (``read_only=False`` on one is refused: fork it for
        a writable copy). ``read_only=None`` picks by that rule. ``writeback`` and
        ``max_uploads`` are :meth:`RWVolume.mount`'s ``writeback`` and ``upload_workers``;
        ``upload_delay`` is not supported and must stay None.
        """
        if upload_delay is not None:
            raise VolumeUsageError(
                f"upload_delay={upload_delay!r} is not supported: blocks are uploaded as soon as "
                f"they are written; leave upload_delay=None"
            )
        committed = self.index is not None
        if read_only is None:
            read_only = committed
        if read_only:
            return ROVolume.mount(  # type: ignore[return-value]
                self, mount_path, meta_dir, cache_dir, timeout, attr_cache, entry_cache,
                dir_entry_cache, transport,
            )  # fmt: skip
        if committed:
            raise VolumeReadOnly(
                f"volume {self.name!r} is a committed version, so it mounts read-only; to write, "
                f"fork it (volume.fork(new_name)) and mount the fork, or mount it with "
                f"read_only=True"
            )
        return RWVolume.mount(  # type: ignore[return-value]
            self, mount_path, meta_dir, cache_dir, timeout, attr_cache, entry_cache,
            dir_entry_cache, writeback, max_uploads, transport=transport,
        )  # fmt: skip

    def fork(
        self,
        name: str,
        mount_path: PathArg = None,
        meta_dir: PathArg = None,
        timeout: float = 60,
    ) -> RWVolume:
        """A writable copy named ``name`` sharing every data block (the seed's legacy form).

        With ``mount_path``, fork the volume mounted there (by any handle of this process): a
        writable mount is committed first and stays mounted. Otherwise fork this handle (its own
        writable mount, if it has one, is committed first). ``meta_dir`` is the fork's metadata
        directory. Raises :class:`~volume.errors.VolumeNotForkable` without an index.
        """
        from . import lifecycle

        source = self if mount_path is None else _live_mount(self, mount_path, None, "fork")
        return lifecycle.fork(source, name, meta_dir, timeout)

    def commit(
        self,
        mount_path: PathArg = None,
        meta_dir: PathArg = None,
        timeout: float = 60,
        message: Optional[str] = None,
    ) -> Volume:
        """Drain, unmount and publish the writable mount at ``mount_path`` (or using
        ``meta_dir``; this handle's own mount when neither is given); returns the new version.

        The mount may belong to any handle of this process (one rebuilt from JSON finds it).

        .. deprecated:: mount an :class:`RWVolume` and use its ``commit()`` or ``finalize()``.
        """
        warnings.warn(
            "Volume.commit() is deprecated; mount an RWVolume and call its commit() or finalize()",
            DeprecationWarning,
            stacklevel=2,
        )
        from . import lifecycle

        owner = _live_mount(self, mount_path, meta_dir, "commit")
        if not owner._mount.writable:
            raise VolumeReadOnly(
                f"the mount of volume {owner.name!r} is read-only, so there is nothing to commit; "
                f"fork the version (volume.fork(new_name)) to get a writable copy"
            )
        return lifecycle.finalize(owner, message, timeout)  # type: ignore[arg-type]

    def migrate_metadata_store_type(
        self,
        new_metadata_store_type: str,
        meta_dir: PathArg = None,
        new_meta_dir: PathArg = None,
    ) -> Volume:
        """Re-host this version's metadata on another store type, touching no data block.

        Returns the new version (an :class:`ROVolume`) whose parent is this one.
        """
        from . import lifecycle

        return lifecycle.migrate(self, new_metadata_store_type, meta_dir, new_meta_dir)


class _MountableVolume(Volume):
    """What read-only and writable handles share: the typed fork."""

    def fork(  # type: ignore[override]
        self, name: str, meta_dir: PathArg = None, timeout: float = 60
    ) -> RWVolume:
        """A writable copy named ``name`` sharing every data block (metadata only).

        A mounted :class:`RWVolume` is committed first (a live fork) and stays mounted.
        """
        from . import lifecycle

        return lifecycle.fork(self, name, meta_dir, timeout)


class ROVolume(_MountableVolume):
    """An immutable, committed version; it always mounts read-only."""

    def mount(  # type: ignore[override]
        self,
        mount_path: PathArg = None,
        meta_dir: PathArg = None,
        cache_dir: PathArg = None,
        timeout: float = 120,
        attr_cache: float = 1.0,
        entry_cache: float = 1.0,
        dir_entry_cache: float = 1.0,
        transport: str = "auto",
        xattrs: bool = True,
    ) -> Self:
        """Mount this version read-only (``transport``: "auto", "fuse" or "none"); returns self.

        ``xattrs=False``: the kernel mount serves no extended attributes (they read as not
        supported), as the JuiceFS client's default; ``ls -l`` then asks nothing per name.
        """
        from . import mounts

        kernel = mounts.KernelOptions(
            _as_path(mount_path), timeout, attr_cache, entry_cache, dir_entry_cache,
            _check_flag("xattrs", xattrs),
        )  # fmt: skip
        self._mount = mounts.mount_ro(
            self, kernel, meta_dir, cache_dir, transport  # type: ignore[arg-type]
        )
        _register(self, mount_path)
        return self


class RWVolume(_MountableVolume):
    """A writable working copy: mount it, write, then commit or finalize."""

    def mount(  # type: ignore[override]
        self,
        mount_path: PathArg = None,
        meta_dir: PathArg = None,
        cache_dir: PathArg = None,
        timeout: float = 120,
        attr_cache: float = 1.0,
        entry_cache: float = 1.0,
        dir_entry_cache: float = 1.0,
        writeback: bool = True,
        upload_workers: int = 8,
        buffer_size_mb: int = 300,
        transport: str = "auto",
        xattrs: bool = True,
    ) -> Self:
        """Mount this working copy read-write (``transport``: "auto", "fuse" or "none").

        The first mount of a never-committed volume formats it; later mounts continue from its
        index in a slice domain of their own. With ``writeback`` (the default) a write is
        acknowledged once buffered and blocks upload in the background; with
        ``writeback=False`` every close (and flush) also waits until the blocks written so far
        are stored. On a local bucket blocks are written into it in place as they fill (no
        upload, nothing of ``buffer_size_mb`` held). With ``xattrs=False`` the kernel mount
        serves no extended attributes (they read as not supported, and ``setxattr`` fails), as
        the JuiceFS client's default: ``ls -l`` and every first write then ask nothing per file.
        Returns self.
        """
        from . import mounts

        _check_flag("writeback", writeback)
        kernel = mounts.KernelOptions(
            _as_path(mount_path), timeout, attr_cache, entry_cache, dir_entry_cache,
            _check_flag("xattrs", xattrs),
        )  # fmt: skip
        m = mounts.mount_rw(
            self, kernel, meta_dir, cache_dir, transport,  # type: ignore[arg-type]
            upload_workers=upload_workers, buffer_bytes=buffer_size_mb << 20,
        )  # fmt: skip
        if not writeback:
            _write_through(m.engine)
        self._mount = m
        _register(self, mount_path)
        return self

    # The seed API gives RWVolume.commit its own signature; Volume.commit is the deprecated form.
    def commit(  # type: ignore[override]
        self,
        message: Optional[str] = None,
        mount_path: PathArg = None,
        meta_dir: PathArg = None,
        timeout: Optional[float] = None,
    ) -> ROVolume:
        """Snapshot the mounted working copy as a new version; it stays mounted and writable.

        ``timeout`` bounds the wait for buffered writes and block uploads (seconds; ``None``
        waits as long as they make progress): past it :class:`VolumeCommitError` is raised,
        nothing is published and the mount stays intact.

        ``mount_path`` / ``meta_dir`` (the seed's form) name the mount to commit, which may
        belong to any handle of this process; by default it is this handle's own. Each commit's
        parent is the previous version of the committed handle (its ``produced_by``, which the
        commit then advances), across remounts.
        """
        from . import lifecycle

        owner = _live_mount(self, mount_path, meta_dir, "commit")
        return lifecycle.commit(owner, message, timeout)  # type: ignore[arg-type]

    def finalize(self, message: Optional[str] = None, timeout: float = 60) -> ROVolume:
        """Drain uploads, snapshot as a new version and unmount."""
        from . import lifecycle

        return lifecycle.finalize(self, message, timeout)


# --------------------------------------------------------------------------- live mounts
#
# Every mount made through a handle is recorded here, so that the seed's legacy calls that name a
# mount by its path (Volume.commit(mount_path=...), Volume.fork(name, mount_path)) find it from
# any handle of the process, such as one rebuilt from JSON. An entry is live while its handle
# still owns that very mount; dead entries are dropped on the next lookup.

_live_lock = threading.Lock()
_live: list[tuple[Volume, Any, Optional[Path]]] = []


def _resolved(p: PathArg) -> Optional[Path]:
    return None if p is None else Path(p).expanduser().resolve()


def _register(handle: Volume, mount_path: PathArg) -> None:
    with _live_lock:
        _live[:] = [e for e in _live if e[0]._mount is e[1]]  # forget released mounts
        _live.append((handle, handle._mount, _resolved(mount_path)))


def _live_mount(self: Volume, mount_path: PathArg, meta_dir: PathArg, verb: str) -> Volume:
    """The handle owning the mount at ``mount_path`` / using ``meta_dir`` (self's own mount when
    both are None); :class:`VolumeNotMounted` naming what was asked for when there is none."""
    if mount_path is None and meta_dir is None:
        if self._mount is None:
            raise VolumeNotMounted(
                f"cannot {verb} volume {self.name!r}: it is not mounted (already finalized or "
                f"unmounted); mount() it first, or pass the mount_path of a live mount"
            )
        return self
    want_path, want_meta = _resolved(mount_path), _resolved(meta_dir)
    with _live_lock:
        _live[:] = [e for e in _live if e[0]._mount is e[1]]
        for handle, m, requested in _live:
            paths = {requested, _resolved(m.mount_path)} - {None}
            if want_path is not None and want_path not in paths:
                continue
            if want_meta is not None and want_meta != _resolved(m.meta_dir.path):
                continue
            return handle
    asked = " and ".join(
        f"{what} {str(p)!r}" for what, p in (("mount_path", mount_path), ("meta_dir", meta_dir))
        if p is not None
    )  # fmt: skip
    raise VolumeNotMounted(
        f"cannot {verb}: nothing is mounted in this process with {asked}; mount the volume "
        f"first (volume.mount(mount_path=...)) or pass the path of a live mount"
    )


def _write_through(engine: Any) -> None:
    """Make every flush and close of ``engine``'s files wait until the blocks written so far are
    stored (``writeback=False``); an upload failure is reported by that close."""
    flush, release = engine.flush, engine.release

    def stored() -> None:
        try:
            engine.blocks.drain()
        except VolumeError as exc:
            raise OSError(
                errno.EIO, f"writeback=False: the written blocks could not be stored ({exc})"
            ) from exc

    def flush_stored(*args: Any, **kwargs: Any) -> None:
        flush(*args, **kwargs)
        if (args[0] if args else kwargs.get("fh")) is not None:  # a file's close, not a drain's
            stored()

    def release_stored(*args: Any, **kwargs: Any) -> None:
        release(*args, **kwargs)
        stored()

    engine.flush, engine.release = flush_stored, release_stored
