"""The ``wasb`` object-store plugin (Azure Blob Storage), on obstore. See
``backends/wasb/README.md``."""

from ._store import AzureObjectStore

__all__ = ["AzureObjectStore"]
