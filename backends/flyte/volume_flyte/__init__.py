"""volume_flyte: volumes as Flyte 2 task inputs and outputs (the ``flyte`` extra).

Two entry points register it; nothing here needs importing by hand:

* ``flyte.plugins.types`` -> :func:`register`: the type transformer for ``Volume``,
  ``ROVolume`` and ``RWVolume`` (``volume_flyte.transformer``). A task that returns an
  ``RWVolume`` has it finalized at return, and its output is the published ``ROVolume``.
* ``volume.contexts`` -> ``volume_flyte.context:PROVIDER``: inside a task, new volumes default to
  the bucket ``{raw_data_root}/{project}/{domain}/volumes`` and every version records the task's
  action as ``produced_by``.

Importing this package does not import ``flyte``; only :func:`register` (called by Flyte) does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    VolumeFlyteError,
    VolumeMountedInput,
    VolumeNoDefaultBucket,
    VolumeNothingToFinalize,
    VolumeTypeMismatch,
)

if TYPE_CHECKING:
    from .transformer import VolumeTransformer

__all__ = [
    "register",
    "VolumeFlyteError",
    "VolumeMountedInput",
    "VolumeNoDefaultBucket",
    "VolumeNothingToFinalize",
    "VolumeTypeMismatch",
]


def register() -> "VolumeTransformer":
    """Register the volume type transformer with Flyte's type engine (idempotent)."""
    from .transformer import register as _register

    return _register()
