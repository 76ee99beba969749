"""The ``gs`` object store: Google Cloud Storage through gcsfs (its JSON API).

obstore was measured too, but its GCS client speaks the XML API (and asks the instance metadata
server for a token even when told to skip signing), which fake-gcs-server does not serve, so it
cannot be tested on the emulator; gcsfs can (see ``spec/stores.md``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

# before gcsfs is imported: otherwise each call first waits on a gRPC bucket-type lookup
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import aiohttp
import gcsfs
from gcsfs.retry import HttpError
from volume_s3._obstore import CloudObjectStore, split_options
from volume_s3._uri import split_bucket_uri

from volume.errors import ObjectStoreError
from volume.keys import validate_key, validate_prefix, validate_range
from volume.stores import ObjectInfo


class GCSObjectStore(CloudObjectStore):
    """Objects below ``gs://<bucket>/<prefix>`` (``gcs://`` too).

    Credentials: Google's default chain (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's application
    default credentials, the metadata server), or anonymous access when ``STORAGE_EMULATOR_HOST``
    points at an emulator; nothing of them reaches the URI, the Format or a log line. Put-if-absent
    sends ``ifGenerationMatch=0``; gcsfs retries 429, 5xx and dropped connections with
    exponential backoff and jitter, never a failed precondition (412).
    """

    name = "gs"
    credentials_hint: ClassVar[str] = (
        "check GOOGLE_APPLICATION_CREDENTIALS (or `gcloud auth application-default login`, the "
        "instance service account) and that it belongs to the bucket's project"
    )
    bucket_lookup: ClassVar[str] = "the project/endpoint"
    access_grant: ClassVar[str] = "the account's IAM role"

    def __init__(self, bucket: str, prefix: str = "", **options: Any) -> None:
        settings = split_options("gs", options, {"endpoint", "project"})
        self._bucket = bucket
        self._prefix = prefix
        endpoint = settings.get("endpoint") or os.environ.get("STORAGE_EMULATOR_HOST")
        if endpoint and not str(endpoint).startswith(("http://", "https://")):
            endpoint = f"http://{endpoint}"
        self.endpoint = endpoint
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings["connect_timeout"], sock_read=settings["read_timeout"]
        )
        self._fs = gcsfs.GCSFileSystem(
            token="anon" if endpoint else None,
            endpoint_url=endpoint,
            project=settings.get("project")
            or os.environ.get("GOOGLE_CLOUD_PROJECT")
            or ("emulator" if endpoint else None),
            use_listings_cache=False,
            skip_instance_cache=True,
            session_kwargs={"timeout": timeout},
            requests_timeout=settings["retry_timeout"],
        )
        self._bucket_seen = False

    @classmethod
    def from_uri(cls, uri: str, *, region: str | None = None, **options: object) -> GCSObjectStore:
        """Open ``gs://bucket[/prefix]``. ``region`` is ignored (a bucket's location is fixed).
        Options: ``endpoint`` (else ``STORAGE_EMULATOR_HOST``), ``project``, ``connect_timeout``,
        ``read_timeout``, ``retry_timeout`` (seconds). ``max_retries`` is accepted for symmetry
        with the other clouds but gcsfs always makes 6 attempts."""
        _, bucket, prefix = split_bucket_uri(uri, ("gs", "gcs"), "GCS")
        return cls(bucket, prefix, **options)

    @property
    def uri(self) -> str:
        return f"gs://{self._bucket}/{self._prefix}"

    @property
    def format_bucket(self) -> str:
        """The JuiceFS client's ``--bucket`` form for ``--storage gs``: ``gs://<bucket>``. JuiceFS
        ignores a path after the bucket, so it finds our objects only for volumes at the bucket's
        root; the prefix is kept here for the record."""
        base = f"gs://{self._bucket}"
        return f"{base}/{self._prefix}" if self._prefix else base

    def _path(self, key: str) -> str:
        validate_key(key)
        return f"{self._bucket}/{self._prefix}{key}"

    # ------------------------------------------------------------------ operations

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        path = self._path(key)
        validate_range(start, end)
        if end is not None and end <= start:
            self.head(key)
            return b""
        try:
            if start == 0 and end is None:
                return self._fs.cat_file(path)
            return self._fs.cat_file(path, start, end)
        except HttpError as exc:
            if exc.code == 416:  # the range starts at or past the end
                return b""
            raise self._error("read", key, exc) from None
        except Exception as exc:  # noqa: BLE001 - becomes a typed store error
            raise self._error("read", key, exc) from None

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False) -> None:
        path = self._path(key)
        payload = data if isinstance(data, bytes) else memoryview(data).tobytes()
        try:
            self._fs.pipe_file(path, payload, mode="create" if if_absent else "overwrite")
        except Exception as exc:  # noqa: BLE001 - becomes a typed store error
            raise self._error("write", key, exc) from None

    def head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            info = self._fs.info(path)
        except Exception as exc:  # noqa: BLE001 - becomes a typed store error
            raise self._error("inspect", key, exc) from None
        if info.get("type") != "file":  # only a prefix of other objects
            raise self._error("inspect", key, FileNotFoundError(path))
        return ObjectInfo(key, int(info["size"]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        directory, _, partial = prefix.rpartition("/")
        base = f"{self._bucket}/{self._prefix}{directory + '/' if directory else ''}"
        cut = len(self._bucket) + 1 + len(self._prefix)
        try:
            found = self._fs.find(base, prefix=partial, detail=True, withdirs=False)
        except FileNotFoundError as exc:
            if self._bucket_exists():
                return
            raise self._error("list", prefix or "(everything)", exc) from None
        except Exception as exc:  # noqa: BLE001 - becomes a typed store error
            raise self._error("list", prefix or "(everything)", exc) from None
        infos = [
            ObjectInfo(name[cut:], int(info["size"]))
            for name, info in found.items()
            if info.get("type") == "file" and name[cut:].startswith(prefix)
            and not name.endswith("/")
        ]  # fmt: skip
        yield from sorted(infos, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            self._fs.rm_file(path)
        except FileNotFoundError:
            return
        except Exception as exc:  # noqa: BLE001 - becomes a typed store error
            raise self._error("delete", key, exc) from None

    def get_file(self, key: str, path: str | Path) -> int:
        source = self._path(key)
        dest = os.path.abspath(os.fspath(path))
        tmp = f"{dest}.part-{secrets.token_hex(4)}"
        try:
            try:
                self._fs.get_file(source, tmp)
            except Exception as exc:  # noqa: BLE001 - becomes a typed store error
                raise self._error("download", key, exc) from None
            size = os.path.getsize(tmp)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return size

    def put_file(self, key: str, path: str | Path, *, if_absent: bool = False) -> int:
        data = Path(path).read_bytes()
        self.put(key, data, if_absent=if_absent)
        return len(data)

    def close(self) -> None:
        self._fs = None

    # ------------------------------------------------------------------ errors

    def _bucket_exists(self) -> bool:
        if self._bucket_seen:
            return True
        try:
            self._fs.call("GET", "b/{}", self._bucket, json_out=True)
        except FileNotFoundError:
            return False
        except Exception:  # noqa: BLE001 - undecided: assume it exists
            return True
        self._bucket_seen = True
        return True

    def _error(self, action: str, key: str, exc: BaseException) -> ObjectStoreError:
        text = str(exc)
        status = getattr(exc, "code", None) if isinstance(exc, HttpError) else None
        if isinstance(exc, FileExistsError):
            return self._object_exists(key)
        if isinstance(exc, FileNotFoundError):
            return self._not_found(action, key, bucket_missing=not self._bucket_exists())
        if status == 401 or "credentials" in text.lower() and status is None:
            return self._credentials_refused(action, key, status)
        if text.startswith("Forbidden") or status == 403:
            return self._access_denied(action, key)
        if isinstance(exc, (aiohttp.ClientConnectionError, TimeoutError)):
            return self._unreachable(action, key, f"{type(exc).__name__}: {text[:200]}")
        return self._failed(action, key, f"{type(exc).__name__}: {text[:300]}", status)
