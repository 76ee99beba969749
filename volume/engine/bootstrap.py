"""Formatting a brand-new volume, as ``juicefs format`` does it."""

from __future__ import annotations

import os
import time

from ..errors import VolumeBucketNotEmpty
from ..juicefs import Format
from ..keys import uuid_key
from ..stores import MetaStore, ObjectStore


def new_format(
    name: str,
    *,
    storage: str,
    bucket: str,
    block_size_kib: int = 4096,
    trash_days: int = 0,
) -> Format:
    """The Format of a new volume.

    ``trash_days`` defaults to 0: versions are the history of a volume, and a trash would keep
    deleted data alive in every later version. ``bucket`` is stored as ``juicefs format`` stores
    it: for ``file``, the object store's URI or a directory path becomes an absolute path ending
    in ``/``; other URIs are kept as they are.
    """
    if block_size_kib < 64 or block_size_kib > 16384 or block_size_kib & (block_size_kib - 1):
        raise ValueError(
            f"block size {block_size_kib} KiB is not a power of two between 64 and 16384"
        )
    if storage == "file":
        path = os.path.abspath(bucket.removeprefix("file://"))
        bucket = path if path.endswith("/") else path + "/"
    return Format(
        Name=name, Storage=storage, Bucket=bucket, BlockSize=block_size_kib, TrashDays=trash_days
    )


def format_volume(meta: MetaStore, objects: ObjectStore, fmt: Format) -> None:
    """Initialise ``meta`` for ``fmt`` and write ``<Name>/juicefs_uuid``.

    Refuses (:class:`VolumeBucketNotEmpty`, nothing changed) when the volume's prefix already
    holds a non-empty object other than the format probe, as ``juicefs format`` refuses.
    """
    prefix = f"{fmt.Name}/"
    for info in objects.list(prefix):
        rel = info.key[len(prefix) :]
        if info.size > 0 and rel != "testing" and not rel.startswith("testing/"):
            raise VolumeBucketNotEmpty(
                f"the bucket prefix {objects.uri.rstrip('/')}/{prefix} already holds data "
                f"(for example {info.key!r}); a new volume is never formatted over existing "
                f"objects: choose another volume name or bucket, or remove that prefix"
            )
    meta.format(fmt, time.time_ns())
    objects.put(uuid_key(fmt.Name), fmt.UUID.encode())
