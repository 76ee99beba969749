"""Bucket keys: where each object of a volume family lives, and the argument checks every
object store shares (keys, list prefixes and byte ranges).

Every key this project builds in a bucket is spelled here, once (the layout is normative, see
``spec/bucket-layout.md``), except the data blocks' own keys, which follow the JuiceFS format
(:func:`volume.juicefs.block_key`). The checks are used by every plugin, so that a key refused by
one store is refused by all of them with the same message (``spec/stores.md``).
"""

from __future__ import annotations

from .errors import InvalidKeyError, VolumeValidationError

__all__ = [
    "chunks_prefix",
    "domain_key",
    "domains_prefix",
    "family_prefix",
    "kept_key",
    "kept_prefix",
    "live_key",
    "live_prefix",
    "uuid_key",
    "validate_key",
    "validate_prefix",
    "validate_range",
    "version_prefix",
    "versions_prefix",
]

# =========================================================================== the layout
#
# <Name>/juicefs_uuid, <Name>/chunks/... (JuiceFS's own), and below <Name>/_volume/ what this
# project adds. ``fs_name`` is the family's Format Name; a domain number is written with seven
# zero-padded digits, so that keys sort by number.

UUID_FILE = "juicefs_uuid"
VOLUME_DIR = "_volume"


def family_prefix(fs_name: str) -> str:
    """Every key of the family ``fs_name``."""
    return f"{fs_name}/"


def uuid_key(fs_name: str) -> str:
    """The family's ``juicefs_uuid`` (its Format UUID; claims the name, create-only)."""
    return f"{fs_name}/{UUID_FILE}"


def chunks_prefix(fs_name: str) -> str:
    """The family's data blocks (JuiceFS layout, see :func:`volume.juicefs.block_key`)."""
    return f"{fs_name}/chunks/"


def domains_prefix(fs_name: str) -> str:
    """The slice-domain ledger: one create-only object per claimed domain."""
    return f"{fs_name}/{VOLUME_DIR}/domains/"


def domain_key(fs_name: str, domain: int) -> str:
    return f"{domains_prefix(fs_name)}{domain:07d}"


def live_prefix(fs_name: str) -> str:
    """Heartbeats of running writable sessions (``volume.gc.LiveMarker``)."""
    return f"{fs_name}/{VOLUME_DIR}/live/"


def live_key(fs_name: str, domain: int) -> str:
    return f"{live_prefix(fs_name)}{domain:07d}"


def kept_prefix(fs_name: str) -> str:
    """Domains of working copies kept in a ``meta_dir`` for a resume (``volume.gc.KeptMark``)."""
    return f"{fs_name}/{VOLUME_DIR}/kept/"


def kept_key(fs_name: str, domain: int) -> str:
    return f"{kept_prefix(fs_name)}{domain:07d}"


def versions_prefix(fs_name: str) -> str:
    """Every published version (index and document) of the family."""
    return f"{fs_name}/{VOLUME_DIR}/versions/"


def version_prefix(fs_name: str, version_id: str) -> str:
    """The objects of one version: its index file and ``volume.json``."""
    return f"{versions_prefix(fs_name)}{version_id}/"


# =========================================================================== argument checks

_KEY_FORM = "keys are relative '/'-separated paths below the store root"


def _text_problem(text: str) -> str | None:
    """What makes ``text`` unusable as (part of) a key whatever its shape, or None."""
    if not isinstance(text, str):  # callers are not all type-checked
        return f"its type is {type(text).__name__}, not str"
    if "\0" in text:
        return "it contains a NUL character"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: no object store can hold such a name
            return "it is not valid Unicode (lone surrogate)"
    return None


def _key_problem(key: str) -> str | None:
    """What is wrong with ``key`` as an object key, or None when it is valid."""
    problem = _text_problem(key)
    if problem is not None:
        return problem
    if not key:
        return "it is empty"
    if key.startswith("/"):
        return "it is absolute (starts with '/')"
    for segment in key.split("/"):
        if not segment:
            return "it has an empty segment ('//' or a trailing '/')"
        if segment in (".", ".."):
            return f"it has a {segment!r} segment"
    return None


def validate_key(key: str) -> str:
    """Return ``key`` when it is a valid object key, else raise :class:`InvalidKeyError`.

    A key is a non-empty, relative, ``/``-separated path of UTF-8 text with no empty, ``.`` or
    ``..`` segment and no NUL. Backslashes and any other characters are ordinary characters.
    """
    problem = _key_problem(key)
    if problem is not None:
        raise InvalidKeyError(f"invalid object key {key!r}: {problem}; {_KEY_FORM}")
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` when ``list`` accepts it, else raise :class:`InvalidKeyError`.

    A prefix is a plain string prefix of keys: its last segment may be partial or empty (``""``,
    ``a/b`` and ``a/b/`` are fine), but everything before its last ``/`` must be a valid key.
    """
    problem = _text_problem(prefix)
    if problem is None and "/" in prefix:
        directory = prefix.rpartition("/")[0]
        problem = _key_problem(directory) if directory else "it is absolute (starts with '/')"
    if problem is not None:
        raise InvalidKeyError(f"invalid list prefix {prefix!r}: {problem}; {_KEY_FORM}")
    return prefix


def validate_range(start: int, end: int | None) -> None:
    """Raise :class:`VolumeValidationError` unless ``0 <= start`` and ``end`` is None or at least
    ``start``. An ``end`` past the object's size is fine: reads clamp it."""
    if start < 0 or (end is not None and end < start):
        raise VolumeValidationError(
            f"invalid byte range [{start}, {end}): need 0 <= start <= end "
            f"(end=None reads to the end of the object)"
        )
