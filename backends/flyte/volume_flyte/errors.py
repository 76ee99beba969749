"""Typed errors of the Flyte integration; each says what to do instead. Nothing was published.

Flyte reports an error raised in a task under its class name and classifies some names by what
they contain ("Unknown", "OOM", "Interrupted", ...), so these names avoid those words.
"""

from __future__ import annotations

from volume.errors import VolumeUsageError

__all__ = [
    "VolumeFlyteError",
    "VolumeTypeMismatch",
    "VolumeNothingToFinalize",
    "VolumeMountedInput",
    "VolumeNoDefaultBucket",
]


class VolumeFlyteError(VolumeUsageError):
    """A volume was used with a Flyte task in a way that cannot work."""


class VolumeTypeMismatch(VolumeFlyteError, TypeError):
    """A task input or output holds another kind of volume than the one declared."""


class VolumeNothingToFinalize(VolumeFlyteError):
    """A task returned a working copy (or a declaration) that has no work to publish."""


class VolumeMountedInput(VolumeFlyteError):
    """A mounted working copy was passed to a task, whose input can only be a published state."""


class VolumeNoDefaultBucket(VolumeFlyteError):
    """Inside a task, the default bucket cannot be derived from the task context."""
