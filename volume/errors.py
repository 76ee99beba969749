"""The error hierarchy.

Every failure a user can cause has a type under :class:`VolumeUsageError`; failures of the system
(mounts, stores, uploads) live under :class:`VolumeSystemError`. Every message says what was wrong
and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "VolumeError",
    "VolumeUsageError",
    "VolumeValidationError",
    "VolumeNotForkable",
    "VolumeNotMounted",
    "VolumeAlreadyMounted",
    "VolumeMigrateNoop",
    "VolumeNoIndex",
    "VolumeStoreMismatch",
    "VolumeBucketNotEmpty",
    "VolumeReadOnly",
    "InvalidKeyError",
    "PluginNotFound",
    "VolumeSystemError",
    "PluginLoadError",
    "ObjectStoreError",
    "ObjectNotFound",
    "ObjectExists",
    "MetaStoreError",
    "VolumeIndexCorrupt",
    "VolumeMountError",
    "VolumeMountTimeout",
    "VolumeCommitError",
    "VolumeMigrateError",
]


class VolumeError(Exception):
    """Root of every error this package raises on purpose."""


# --------------------------------------------------------------------------- user errors


class VolumeUsageError(VolumeError, ValueError):
    """The caller asked for something that cannot be done as asked; nothing was changed."""


class VolumeValidationError(VolumeUsageError):
    """A value (name, bucket URI, storage, store type, kind) is not valid."""


class VolumeNotForkable(VolumeUsageError):
    """The volume has no committed index to fork from."""


class VolumeNotMounted(VolumeUsageError):
    """The operation needs a mounted volume (or the volume was already finalized/unmounted)."""


class VolumeAlreadyMounted(VolumeUsageError):
    """The handle or the meta directory is already in use by a mount."""


class VolumeMigrateNoop(VolumeUsageError):
    """Migration was asked to the store type the volume already uses."""


class VolumeNoIndex(VolumeUsageError):
    """The volume has never been committed, so it has no index to act on."""


class VolumeStoreMismatch(VolumeUsageError):
    """A metadata store type differs from the one the volume's index was written with."""


class VolumeBucketNotEmpty(VolumeUsageError):
    """A brand-new volume would be formatted over a bucket prefix that already holds data."""


class VolumeReadOnly(VolumeUsageError, PermissionError):
    """A write was attempted on a read-only mount."""


class InvalidKeyError(VolumeUsageError, KeyError):
    """An object-store key is empty, absolute, or escapes the store root."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class PluginNotFound(VolumeUsageError, LookupError):
    """No installed plugin has the requested name."""


# --------------------------------------------------------------------------- system errors


class VolumeSystemError(VolumeError, RuntimeError):
    """Something outside the caller's control failed."""


class PluginLoadError(VolumeSystemError, ImportError):
    """An installed plugin is registered but fails to import."""


class ObjectStoreError(OSError, VolumeSystemError):
    """An object-store operation failed (``OSError`` first, so ``errno`` and ``strerror`` are
    parsed from ``(errno, message)`` arguments as the ``os`` module's errors are)."""


class ObjectNotFound(ObjectStoreError, FileNotFoundError):
    """The object does not exist."""


class ObjectExists(ObjectStoreError, FileExistsError):
    """A put-if-absent found the key already present."""


class MetaStoreError(VolumeSystemError):
    """The metadata store failed or holds data this package cannot use."""


class VolumeIndexCorrupt(MetaStoreError):
    """An index (metadata snapshot) is corrupt, truncated, or not a volume index."""


class VolumeMountError(VolumeSystemError):
    """A mount could not be set up."""


class VolumeMountTimeout(VolumeMountError, TimeoutError):
    """A mount did not become ready in time; nothing was left mounted."""


class VolumeCommitError(VolumeSystemError):
    """A commit could not be completed; nothing was published and the mount is intact."""


class VolumeMigrateError(VolumeSystemError):
    """A metadata migration failed; the source version is untouched."""
