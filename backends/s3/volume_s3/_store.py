"""The ``s3`` object store: Amazon S3 and S3-compatible stores (MinIO, R2, moto), via obstore."""

from __future__ import annotations

import os
import re
from typing import Any

from obstore.store import S3Store

from volume.errors import ObjectExists, VolumeValidationError
from volume.stores import ObjectStoreCapabilities

from ._obstore import ObstoreObjectStore, client_config, retry_config, split_options
from ._uri import split_bucket_uri

DEFAULT_REGION = "us-east-1"
#: set to false for an S3-compatible store that ignores ``If-None-Match: *`` on PUT
ENV_CONDITIONAL_PUT = "VOLUME_S3_CONDITIONAL_PUT"
_FALSE = ("0", "false", "no", "off")
# S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class S3ObjectStore(ObstoreObjectStore):
    """Objects below ``s3://<bucket>/<prefix>``.

    Region: the ``region`` given (a volume's pinned region), else ``AWS_REGION``, else
    ``AWS_DEFAULT_REGION``, else us-east-1. Endpoint: the ``endpoint`` option, else
    ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else AWS; a custom endpoint is addressed
    path-style. Credentials come from the environment's AWS chain (``AWS_ACCESS_KEY_ID``/
    ``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, web identity, container and instance
    metadata) and are never part of the URI, the Format or a log line.
    """

    name = "s3"
    scheme = "s3"
    credentials_hint = (
        "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_SESSION_TOKEN, the instance role) "
        "and that they belong to the account and endpoint of the bucket"
    )

    def __init__(
        self, bucket: str, prefix: str = "", *, region: str | None = None,
        endpoint: str | None = None, **options: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        if not _BUCKET.fullmatch(bucket):
            raise VolumeValidationError(
                f"{bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, "
                f"'.' and '-')"
            )
        conditional = options.pop("conditional_put", None)
        if conditional is None:
            conditional = os.environ.get(ENV_CONDITIONAL_PUT, "true").lower() not in _FALSE
        if not isinstance(conditional, bool):
            raise VolumeValidationError(
                f"the S3 option conditional_put={conditional!r} is not a bool"
            )
        if not conditional:
            # a store that ignores If-None-Match: put-if-absent becomes check-then-put, and the
            # lifecycle refuses writable mounts unless the caller accepts a single writer
            self.capabilities = ObjectStoreCapabilities(conditional_put=False, range_reads=True)
        settings = split_options("s3", options, set())
        self._bucket = bucket
        self._prefix = prefix
        self.region = (
            region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION
        )  # fmt: skip
        endpoint = (
            endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        if self.endpoint is not None and not re.match(r"https?://[^/]+$", self.endpoint):
            raise VolumeValidationError(
                f"S3 endpoint {self.endpoint!r} is not an http(s)://host[:port] URL"
            )
        config: dict[str, Any] = {"region": self.region}
        if self.endpoint is not None:
            config["endpoint"] = self.endpoint
            config["virtual_hosted_style_request"] = False
        self._store = S3Store(
            bucket,
            config=config,
            client_options=client_config(
                settings, allow_http=bool(self.endpoint and self.endpoint.startswith("http://"))
            ),
            retry_config=retry_config(settings),
        )
        self._options = options

    def _put(self, key: str, path: str, payload: Any, if_absent: bool) -> None:
        if if_absent and not self.capabilities.conditional_put:
            if self.exists(key):  # not atomic: only safe with a single writer
                raise ObjectExists(f"object {key!r} already exists in {self.uri}")
            if_absent = False
        super()._put(key, path, payload, if_absent)

    @classmethod
    def from_uri(cls, uri: str, *, region: str | None = None, **options: object) -> S3ObjectStore:
        """Open ``s3://bucket[/prefix]``. Options: ``endpoint`` (an http(s)://host[:port] URL),
        ``conditional_put`` (False for a store without create-only PUTs; default from
        ``VOLUME_S3_CONDITIONAL_PUT``, else True),
        ``connect_timeout``, ``read_timeout``, ``retry_timeout`` (seconds), ``max_retries``."""
        _, bucket, prefix = split_bucket_uri(uri, ("s3",), "S3")
        endpoint = options.pop("endpoint", None)
        if endpoint is not None and not isinstance(endpoint, str):
            raise VolumeValidationError(f"the S3 option endpoint={endpoint!r} is not a URL")
        return cls(bucket, prefix, region=region, endpoint=endpoint, **options)

    @property
    def format_bucket(self) -> str:
        """The bucket in the form the JuiceFS client's ``--bucket`` takes for ``--storage s3``:
        ``<endpoint>/<bucket>`` for a custom endpoint (path style), else
        ``https://<bucket>.s3.<region>.amazonaws.com``. JuiceFS ignores a path after the bucket,
        so the real client finds our objects only for volumes at the bucket's root."""
        if self.endpoint is not None:
            base = f"{self.endpoint}/{self._bucket}"
        else:
            base = f"https://{self._bucket}.s3.{self.region}.amazonaws.com"
        return f"{base}/{self._prefix}" if self._prefix else base
