"""The ``wasb`` object store: Azure Blob Storage (and Azurite) through obstore."""

from __future__ import annotations

import os
from typing import Any

from obstore.store import AzureStore
from volume_s3._obstore import ObstoreObjectStore, client_config, retry_config, split_options
from volume_s3._uri import split_bucket_uri

from volume.errors import VolumeValidationError

SCHEMES = ("abfss", "abfs", "wasbs", "wasb")
_DOMAINS = (".dfs.core.windows.net", ".blob.core.windows.net")


def parse_connection_string(text: str) -> dict[str, str]:
    """The ``Key=Value;...`` fields of an Azure Storage connection string."""
    fields: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


class AzureObjectStore(ObstoreObjectStore):
    """Objects below ``abfss://<container>@<account>.dfs.core.windows.net/<prefix>`` (also
    ``abfs://``, ``wasb://``, ``wasbs://``, with ``.blob.core.windows.net``, or
    ``<scheme>://<container>/<prefix>`` with the account from the environment).

    Credentials, in this order: the ``AZURE_STORAGE_CONNECTION_STRING`` (which also gives the
    endpoint, as for Azurite), else Azure's environment chain (``AZURE_STORAGE_ACCOUNT_KEY``,
    ``AZURE_STORAGE_SAS_TOKEN``, ``AZURE_CLIENT_ID``/``AZURE_CLIENT_SECRET``/``AZURE_TENANT_ID``,
    workload and managed identity). ``AZURE_STORAGE_USE_EMULATOR=true`` reaches Azurite on its
    default port. None of them reaches the URI, the Format or a log line.
    """

    name = "wasb"
    scheme = "abfss"
    credentials_hint = (
        "check AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_KEY/"
        "AZURE_STORAGE_SAS_TOKEN "
        "(or the service principal / managed identity) and that they belong to the account"
    )

    def __init__(
        self, container: str, prefix: str = "", *, account: str | None = None,
        host: str | None = None, scheme: str = "abfss", **options: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        settings = split_options("wasb", options, {"endpoint"})
        self._bucket = container
        self._prefix = prefix
        self._scheme = scheme
        self._host = host
        config: dict[str, Any] = {}
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        fields = parse_connection_string(conn) if conn else {}
        account = account or fields.get("AccountName") or os.environ.get(
            "AZURE_STORAGE_ACCOUNT_NAME"
        ) or os.environ.get("AZURE_STORAGE_ACCOUNT")  # fmt: skip
        if account:
            config["account_name"] = account
        if fields.get("AccountKey"):
            config["account_key"] = fields["AccountKey"]
        if fields.get("SharedAccessSignature"):
            config["sas_key"] = fields["SharedAccessSignature"]
        endpoint = settings.get("endpoint") or fields.get("BlobEndpoint")
        if endpoint:
            config["endpoint"] = endpoint.rstrip("/")
        if not account and not endpoint and not os.environ.get("AZURE_STORAGE_USE_EMULATOR"):
            raise VolumeValidationError(
                f"the Azure URI for container {container!r} names no storage account; write "
                f"abfss://{container}@<account>.dfs.core.windows.net/prefix or set "
                f"AZURE_STORAGE_ACCOUNT_NAME or AZURE_STORAGE_CONNECTION_STRING"
            )
        self.account = account
        self.endpoint = endpoint
        self._store = AzureStore(
            container,
            config=config,
            client_options=client_config(
                settings,
                allow_http=bool(endpoint and str(endpoint).startswith("http://"))
                or bool(os.environ.get("AZURE_STORAGE_USE_EMULATOR")),
            ),
            retry_config=retry_config(settings),
        )

    @classmethod
    def from_uri(
        cls, uri: str, *, region: str | None = None, **options: object
    ) -> AzureObjectStore:
        """Open an ``abfss``/``abfs``/``wasbs``/``wasb`` URI. ``region`` is ignored. Options:
        ``endpoint`` (the blob endpoint URL), ``connect_timeout``, ``read_timeout``,
        ``retry_timeout`` (seconds), ``max_retries``."""
        scheme, netloc, prefix = split_bucket_uri(uri, SCHEMES, "Azure")
        container, at, host = netloc.partition("@")
        if not container:
            raise VolumeValidationError(f"Azure URI {uri!r} names no container")
        account = None
        if at:
            if not host:
                raise VolumeValidationError(f"Azure URI {uri!r} names no storage account")
            account = host
            for domain in _DOMAINS:
                if host.endswith(domain):
                    account = host[: -len(domain)]
        return cls(container, prefix, account=account, host=host or None, scheme=scheme, **options)

    @property
    def uri(self) -> str:
        where = f"{self._bucket}@{self._host}" if self._host else self._bucket
        return f"{self._scheme}://{where}/{self._prefix}"

    @property
    def format_bucket(self) -> str:
        """The JuiceFS client's ``--bucket`` form for ``--storage wasb``:
        ``https://<container>.blob.core.windows.net``; the client takes the account (and, for
        Azurite, the endpoint) from ``AZURE_STORAGE_CONNECTION_STRING`` or ``--access-key``. JuiceFS
        ignores a path after the host, so it finds our objects only for volumes at the
        container's root; the prefix is kept here for the record."""
        base = f"https://{self._bucket}.blob.core.windows.net"
        return f"{base}/{self._prefix}" if self._prefix else base
