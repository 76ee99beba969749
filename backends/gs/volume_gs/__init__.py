"""The ``gs`` object-store plugin (Google Cloud Storage), on gcsfs. See
``backends/gs/README.md``."""

from ._store import GCSObjectStore

__all__ = ["GCSObjectStore"]
