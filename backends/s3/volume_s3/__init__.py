"""The ``s3`` object-store plugin (Amazon S3 and S3-compatible stores), on obstore. See
``backends/s3/README.md``.

``volume_s3._obstore`` also holds the base classes and typed errors the ``gs`` and ``wasb`` plugins
share."""

from ._obstore import (
    AccessDenied,
    BucketNotFound,
    CloudObjectStore,
    CloudStoreError,
    CredentialsRejected,
    ObstoreObjectStore,
    StoreUnreachable,
)
from ._store import S3ObjectStore

__all__ = [
    "AccessDenied",
    "BucketNotFound",
    "CloudObjectStore",
    "CloudStoreError",
    "CredentialsRejected",
    "ObstoreObjectStore",
    "S3ObjectStore",
    "StoreUnreachable",
]
