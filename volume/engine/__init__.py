"""The file-system engine ("the client"): POSIX semantics over a MetaStore and an ObjectStore.

No FUSE here: the FUSE transport, the fsspec filesystem and the lifecycle verbs all drive
:class:`Engine` (inode level) or :class:`PathFS` (``os``-style paths).
"""

from .bootstrap import format_volume, new_format
from .compaction import CompactionPolicy
from .engine import NOW, RENAME_EXCHANGE, RENAME_NOREPLACE, Engine, StatFS
from .paths import PathFS, StatResult
from .posix import ROOT, Caller

__all__ = [
    "NOW",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "ROOT",
    "Caller",
    "CompactionPolicy",
    "Engine",
    "PathFS",
    "StatFS",
    "StatResult",
    "format_volume",
    "new_format",
]
