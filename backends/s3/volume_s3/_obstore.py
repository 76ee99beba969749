"""The object-store plugin shared by the three cloud stores, on top of obstore (Rust's
``object_store``: it releases the GIL, retries with exponential backoff and jitter, and has one
create-only PUT mode for S3, GCS and Azure).

A subclass builds the obstore store and says how to describe its bucket; this class maps keys
below the URI's prefix, ranges, listing and errors the same way for every cloud
(``spec/stores.md``). :class:`CloudObjectStore` below it words and types the errors of every
cloud store, the ``gs`` one (on gcsfs) too.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import obstore
from obstore import exceptions as obx

from volume.errors import ObjectExists, ObjectNotFound, ObjectStoreError, VolumeValidationError
from volume.keys import validate_key, validate_prefix, validate_range
from volume.stores import ObjectInfo, ObjectStore, ObjectStoreCapabilities

log = logging.getLogger("volume.stores.cloud")

#: options every cloud store accepts (seconds and counts); the defaults suit real clouds
COMMON_OPTIONS = {
    "connect_timeout": 10.0,  # seconds to establish a connection
    "read_timeout": 60.0,  # seconds without receiving a byte of a response
    "max_retries": 10,  # retries of one request (5xx, throttling, dropped connections)
    "retry_timeout": 120.0,  # seconds after which no request is retried any more
}
_STATUS = re.compile(r"status code: (\d{3})")


# =========================================================================== errors


class CloudStoreError(ObjectStoreError):
    """A cloud store answered with an error; ``status`` is its HTTP status (None when the
    request never got an answer) and ``bucket`` the bucket or container."""

    status: int | None = None
    bucket: str = ""


class BucketNotFound(CloudStoreError):
    """The bucket (container) does not exist (HTTP 404)."""


class CredentialsRejected(CloudStoreError, PermissionError):
    """The store did not accept the credentials (HTTP 401/403: unknown key, bad signature,
    expired token), or none were found."""


class AccessDenied(CloudStoreError, PermissionError):
    """The credentials are valid but may not do this (HTTP 403)."""


class StoreUnreachable(CloudStoreError, TimeoutError):
    """The endpoint did not answer within the connect/read timeouts, after the retries."""


def _status(exc: BaseException) -> int | None:
    found = _STATUS.search(str(exc))
    return int(found.group(1)) if found else None


# =========================================================================== the stores


class CloudObjectStore(ObjectStore):
    """An object store below ``<bucket>/<prefix>`` of a cloud store: the typed errors every
    cloud store raises, worded alike. A subclass decides which kind an error of its client is
    and builds it with the methods below; the class attributes say what to check, per cloud."""

    capabilities: ClassVar[ObjectStoreCapabilities] = ObjectStoreCapabilities(
        conditional_put=True, range_reads=True, local=False
    )
    #: how a credential error tells the user what to check (per cloud)
    credentials_hint: ClassVar[str] = ""
    #: where a missing bucket is looked up
    bucket_lookup: ClassVar[str] = "the endpoint/account it is looked up at"
    #: what grants access to the bucket
    access_grant: ClassVar[str] = "the credentials' policy"

    _bucket: str
    _prefix: str  # "" or "some/prefix/" (with a trailing slash)

    @property
    def bucket(self) -> str:
        """The bucket (container) name."""
        return self._bucket

    def _typed(self, exc: Any, code: int | None, status: int | None) -> Any:
        exc.errno = code
        exc.status = status
        exc.bucket = self._bucket
        return exc

    def _object_exists(self, key: str) -> ObjectStoreError:
        return self._typed(
            ObjectExists(f"object {key!r} in {self.uri} already exists"), errno.EEXIST, 412
        )

    def _not_found(self, action: str, key: str, *, bucket_missing: bool) -> ObjectStoreError:
        if bucket_missing:
            return self._typed(
                BucketNotFound(
                    f"the bucket {self._bucket!r} does not exist (HTTP 404 while trying to "
                    f"{action} {key!r}); check the bucket name in {self.uri} and "
                    f"{self.bucket_lookup}, or create the bucket"
                ),
                errno.ENOENT, 404,
            )  # fmt: skip
        return self._typed(ObjectNotFound(f"no object {key!r} in {self.uri}"), errno.ENOENT, 404)

    def _credentials_refused(self, action: str, key: str, status: int | None) -> ObjectStoreError:
        return self._typed(
            CredentialsRejected(
                f"{self.name} refused the credentials for bucket {self._bucket!r} "
                f"(HTTP {status or 401} while trying to {action} {key!r}); "
                f"{self.credentials_hint}"
            ),
            errno.EACCES, status or 401,
        )  # fmt: skip

    def _access_denied(self, action: str, key: str) -> ObjectStoreError:
        return self._typed(
            AccessDenied(
                f"access denied to bucket {self._bucket!r} (HTTP 403 while trying to "
                f"{action} {key!r}); check that {self.access_grant} allows it on {self.uri}"
            ),
            errno.EACCES, 403,
        )  # fmt: skip

    def _unreachable(self, action: str, key: str, detail: str) -> ObjectStoreError:
        return self._typed(
            StoreUnreachable(
                f"{self.name} endpoint for bucket {self._bucket!r} did not answer while "
                f"trying to {action} {key!r} ({detail}); check the endpoint and "
                f"the network, or raise the connect_timeout/read_timeout options"
            ),
            errno.ETIMEDOUT, None,
        )  # fmt: skip

    def _failed(self, action: str, key: str, detail: str, status: int | None) -> ObjectStoreError:
        return self._typed(
            CloudStoreError(f"cannot {action} {key!r} in {self.uri}: {detail}"), errno.EIO, status
        )


class ObstoreObjectStore(CloudObjectStore):
    """An object store below ``<bucket>/<prefix>`` of a cloud store reached through obstore.

    Subclasses set ``name``, ``scheme``, ``_bucket``, ``_prefix``, ``_store`` (the obstore store)
    in ``__init__`` and may set the hints of :class:`CloudObjectStore`.
    """

    scheme: ClassVar[str] = ""

    _store: Any

    def __init__(self) -> None:
        self._bucket_seen = threading.Event()  # an answer proved the bucket exists

    # ------------------------------------------------------------------ naming

    @property
    def prefix(self) -> str:
        """The prefix below the bucket ("" or ending in ``/``)."""
        return self._prefix

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self._bucket}/{self._prefix}"

    def _path(self, key: str) -> str:
        validate_key(key)
        return self._prefix + key

    # ------------------------------------------------------------------ operations

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        path = self._path(key)
        validate_range(start, end)
        if end is not None and end <= start:
            self.head(key)  # an empty range of a missing object is still an error
            return b""
        options: dict[str, Any] = {}
        if end is not None:
            options["range"] = (start, end)
        elif start:
            options["range"] = {"offset": start}
        try:
            result = obstore.get(self._store, path, options=options or None)
            data = result.bytes()
        except Exception as exc:  # noqa: BLE001 - becomes a typed store error
            if _status(exc) == 416 or "Wanted range starting at" in str(exc):
                return b""  # the range starts at or past the end of the object
            raise self._error("read", key, exc) from None
        self._bucket_seen.set()
        return data.to_bytes() if hasattr(data, "to_bytes") else bytes(data)

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False) -> None:
        path = self._path(key)
        # obstore reads any contiguous buffer without a copy, and has sent it when put returns
        view = data if isinstance(data, bytes) else memoryview(data)
        if isinstance(view, memoryview):
            view = view.cast("B") if view.contiguous else view.tobytes()
        self._put(key, path, view, if_absent)

    def _put(self, key: str, path: str, payload: Any, if_absent: bool) -> None:
        try:
            if if_absent:
                # one request, so that the store's create-only condition decides the race
                obstore.put(self._store, path, payload, mode="create", use_multipart=False)
            else:
                obstore.put(self._store, path, payload)
        except Exception as exc:  # noqa: BLE001 - becomes a typed store error
            raise self._error("write", key, exc) from None
        self._bucket_seen.set()

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            meta = obstore.head(self._store, path)
        except Exception as exc:  # noqa: BLE001 - becomes a typed store error
            raise self._error("inspect", key, exc) from None
        self._bucket_seen.set()
        return ObjectInfo(key, int(meta["size"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        # obstore lists whole "directories": list the one the prefix names up to its last "/"
        # and keep the keys that start with the plain string prefix
        directory = prefix[: prefix.rfind("/") + 1]
        full = (self._prefix + directory).rstrip("/") or None
        cut = len(self._prefix)
        found: list[ObjectInfo] = []
        try:
            for batch in obstore.list(self._store, prefix=full, chunk_size=1000):
                for meta in batch:
                    key = meta["path"][cut:]
                    if key.startswith(prefix) and key and not key.endswith("/"):
                        found.append(ObjectInfo(key, int(meta["size"])))
        except Exception as exc:  # noqa: BLE001 - becomes a typed store error
            raise self._error("list", prefix or "(everything)", exc) from None
        self._bucket_seen.set()
        found.sort(key=lambda info: info.key)
        yield from found

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            obstore.delete(self._store, path)
        except (obx.NotFoundError, FileNotFoundError):
            return
        except Exception as exc:  # noqa: BLE001 - becomes a typed store error
            if "(code: 404)" in str(exc):
                return  # Azure's bulk delete of a missing blob
            raise self._error("delete", key, exc) from None

    def get_file(self, key: str, path: str | Path) -> int:
        store_path = self._path(key)
        dest = os.path.abspath(os.fspath(path))
        tmp = f"{dest}.part-{secrets.token_hex(4)}"
        size = 0
        try:
            try:
                stream = obstore.get(self._store, store_path).stream(min_chunk_size=8 << 20)
            except Exception as exc:  # noqa: BLE001 - becomes a typed store error
                raise self._error("download", key, exc) from None
            with open(tmp, "wb") as out:
                while True:
                    try:
                        chunk = next(stream, None)
                    except Exception as exc:  # noqa: BLE001 - becomes a typed store error
                        raise self._error("download", key, exc) from None
                    if chunk is None:
                        break
                    out.write(chunk)
                    size += len(chunk)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return size

    def put_file(self, key: str, path: str | Path, *, if_absent: bool = False) -> int:
        store_path = self._path(key)
        source = Path(path)
        size = source.stat().st_size
        if if_absent or size <= 64 << 20:
            self._put(key, store_path, source.read_bytes(), if_absent)
        else:
            self._put(key, store_path, source, False)  # streamed, multipart when large
        return size

    def close(self) -> None:
        self._store = None

    # ------------------------------------------------------------------ errors

    def _error(self, action: str, key: str, exc: BaseException) -> ObjectStoreError:
        """The typed error for ``exc``, raised by obstore while doing ``action`` on ``key``."""
        status = _status(exc)
        text = str(exc)
        if isinstance(exc, (obx.AlreadyExistsError, obx.PreconditionError)):
            return self._object_exists(key)
        if isinstance(exc, (obx.NotFoundError, FileNotFoundError)) or status == 404:
            return self._not_found(action, key, bucket_missing=self._bucket_missing(text))
        no_credentials = "token request" in text or "credential" in text.lower()
        if (isinstance(exc, obx.UnauthenticatedError) or no_credentials
                or self._credentials_rejected(text, status)):  # fmt: skip
            return self._credentials_refused(action, key, status)
        if isinstance(exc, obx.PermissionDeniedError) or status == 403:
            return self._access_denied(action, key)
        if status is None and _is_timeout(text):
            return self._unreachable(action, key, _first_line(text))
        return self._failed(action, key, _first_line(text), status)

    def _bucket_missing(self, text: str) -> bool:
        """Whether a 404 means the bucket is missing (not only the object)."""
        if any(code in text for code in ("NoSuchBucket", "ContainerNotFound", "bucket does not")):
            return True
        if self._bucket_seen.is_set():
            return False
        return not self._bucket_exists()

    def _bucket_exists(self) -> bool:
        """Ask the store once whether the bucket exists (a one-key listing)."""
        try:
            for _ in obstore.list(self._store, prefix=self._prefix.rstrip("/") or None,
                                  chunk_size=1):  # fmt: skip
                break
        except Exception as exc:  # noqa: BLE001 - any failure but a 404 leaves it undecided
            return _status(exc) != 404 and not isinstance(exc, obx.NotFoundError)
        self._bucket_seen.set()
        return True

    @staticmethod
    def _credentials_rejected(text: str, status: int | None) -> bool:
        codes = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                 "AuthenticationFailed", "InvalidAuthenticationInfo", "NoAccessKey",
                 "invalid_grant", "Unauthorized", "failed to authenticate")  # fmt: skip
        return status in (401, 403) and any(code in text for code in codes)


def _is_timeout(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in ("timed out", "timeout", "connect", "connection"))


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line[:300]


# =========================================================================== options


def split_options(store: str, options: dict[str, object], extra: set[str]) -> dict[str, Any]:
    """The common options with their defaults, plus the store's ``extra`` ones given; an
    unknown option or a bad value raises :class:`VolumeValidationError`."""
    unknown = sorted(set(options) - set(COMMON_OPTIONS) - extra)
    if unknown:
        accepted = ", ".join(sorted(set(COMMON_OPTIONS) | extra))
        raise VolumeValidationError(
            f"unknown option(s) {', '.join(unknown)} for the {store} object store; "
            f"accepted: {accepted}"
        )
    merged: dict[str, Any] = dict(COMMON_OPTIONS)
    for name, value in options.items():
        bad_number = isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        if name in COMMON_OPTIONS and bad_number:
            raise VolumeValidationError(
                f"the {store} object store option {name}={value!r} is not a non-negative number"
            )
        merged[name] = value
    return merged


def client_config(options: dict[str, Any], *, allow_http: bool) -> dict[str, Any]:
    """obstore client options: bounded connect and read timeouts."""
    return {
        "connect_timeout": timedelta(seconds=options["connect_timeout"]),
        "read_timeout": timedelta(seconds=options["read_timeout"]),
        "allow_http": allow_http,
    }


def retry_config(options: dict[str, Any]) -> dict[str, Any]:
    """obstore retries: exponential backoff with jitter on 5xx, throttling and dropped
    connections; a failed precondition (412) or any other 4xx is never retried."""
    return {
        "max_retries": int(options["max_retries"]),
        "retry_timeout": timedelta(seconds=options["retry_timeout"]),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=15),
            "base": 2,
        },
    }
