"""volume: immutable, versioned, forkable file-system volumes on object storage.

The formats are JuiceFS 1.x's: a committed index is a JuiceFS metadata database and the blocks are
JuiceFS blocks, so the JuiceFS client can mount our versions and we can mount its volumes.
"""

from . import errors, plugins
from .errors import *  # noqa: F401,F403  (the error types are part of the public API)
from .progress import Progress, reporting_progress
from .model import ActionRef, File, ROVolume, RWVolume, Volume

try:
    from importlib.metadata import PackageNotFoundError, version as _dist_version

    __version__ = _dist_version("volume")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.1.0"

__all__ = [
    "ActionRef",
    "File",
    "Progress",
    "ROVolume",
    "RWVolume",
    "Volume",
    "errors",
    "plugins",
    "reporting_progress",
    *errors.__all__,
]
