"""Where a volume's things are: its object store, its metadata store class, the keys and URIs of
its objects, and its committed index, fetched from wherever its version document points and
restored into a meta dir. Every store a verb opens for a volume comes from :func:`object_store`
(tests wrap it here)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from . import plugins
from .errors import ObjectNotFound, VolumeIndexCorrupt
from .stores import MetaStore, ObjectStore

if TYPE_CHECKING:
    from .model import Volume

DEFAULT_METADATA_STORE = "sqlite"


def object_store(volume: "Volume") -> ObjectStore:
    """The object store holding the volume's bucket (region from the volume or AWS_* env)."""
    cls = plugins.object_store_class(volume.storage)
    region = volume.region
    if region is None and volume.storage == "s3":
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return cls.from_uri(volume.bucket, region=region)


def meta_class(volume: "Volume") -> type[MetaStore]:
    return plugins.meta_store_class(volume.metadata_store_type or DEFAULT_METADATA_STORE)


def key_uri(objects: ObjectStore, key: str) -> str:
    return f"{objects.uri.rstrip('/')}/{key}"


def bucket_key(objects: ObjectStore, uri: str) -> Optional[str]:
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


def key_of(objects: ObjectStore, uri: str) -> str:
    key = bucket_key(objects, uri)
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
    key = bucket_key(objects, index.path)
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
            actual = digest(dest, index.hash)
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


def digest(path: Path, recorded: str) -> str:
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
    with location(uri, region) as (store, name):
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
def location(uri: str, region: Optional[str]) -> Any:
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


