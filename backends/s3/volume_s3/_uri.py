"""Bucket URIs of the cloud stores: ``<scheme>://<bucket>[/prefix]``."""

from __future__ import annotations

from urllib.parse import urlsplit

from volume.errors import InvalidKeyError, VolumeValidationError
from volume.keys import validate_key


def split_bucket_uri(uri: object, schemes: tuple[str, ...], store: str) -> tuple[str, str, str]:
    """``(scheme, bucket, prefix)`` of ``uri``; the prefix is "" or ends in ``/``.

    Raises :class:`VolumeValidationError` for another scheme, a missing bucket name, a query,
    credentials in the URI, or a prefix that is not a valid key.
    """
    example = f"{schemes[0]}://bucket/prefix"
    if not isinstance(uri, str) or not uri.strip():
        raise VolumeValidationError(f"{store} URI {uri!r} is empty; give {example}")
    if "\0" in uri:
        raise VolumeValidationError(f"{store} URI {uri!r} contains a NUL character")
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() not in schemes:
        raise VolumeValidationError(
            f"{uri!r} is not a {store} URI; the {store} object store takes {example} "
            f"(schemes: {', '.join(s + '://' for s in schemes)})"
        )
    parts = urlsplit(f"x://{rest}")
    if parts.query or parts.fragment:
        raise VolumeValidationError(f"{store} URI {uri!r} has a query or fragment; give {example}")
    netloc, _, path = rest.partition("/")
    if parts.password is not None or (parts.username is not None and "@" not in netloc):
        raise VolumeValidationError(f"{store} URI {uri!r} must not hold credentials")
    if not netloc or netloc.startswith("@"):
        raise VolumeValidationError(f"{store} URI {uri!r} names no bucket; give {example}")
    prefix = path.strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except InvalidKeyError as exc:
            raise VolumeValidationError(
                f"{store} URI {uri!r} has an invalid prefix: {exc}"
            ) from None
        prefix += "/"
    return scheme.lower(), netloc, prefix
