"""Deprecated: the JuiceFS JSON dump and load moved to :mod:`volume.dump`.

"Index" names a version's metadata snapshot (``Volume.index``); the dump module no longer shares
the word. This alias imports what :mod:`volume.dump` exports and will be removed.
"""

from __future__ import annotations

import warnings

from .dump import DumpStats, LoadStats, dump, escape, load, migrate, unescape

__all__ = ["DumpStats", "LoadStats", "dump", "escape", "load", "migrate", "unescape"]

warnings.warn(
    "volume.index is deprecated: import volume.dump (same functions) instead",
    DeprecationWarning,
    stacklevel=2,
)
