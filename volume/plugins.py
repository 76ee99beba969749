"""Store plugins, discovered through entry points.

Object stores register in the group ``volume.object_stores`` and metadata stores in
``volume.meta_stores``; the entry-point name is the storage / store-type name users write.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

from .errors import PluginLoadError, PluginNotFound

if TYPE_CHECKING:
    from .stores import MetaStore, ObjectStore

OBJECT_STORES = "volume.object_stores"
META_STORES = "volume.meta_stores"
_KIND = {OBJECT_STORES: "object-store", META_STORES: "metadata-store"}


@dataclass(frozen=True)
class PluginInfo:
    """One installed plugin."""

    group: str
    name: str
    value: str  # "module:attribute"
    distribution: str
    version: str


@functools.lru_cache(maxsize=None)
def _entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=group)}


def installed(group: str) -> list[PluginInfo]:
    """The plugins installed in ``group``, sorted by name."""
    out = []
    for name, ep in sorted(_entry_points(group).items()):
        dist = ep.dist
        out.append(
            PluginInfo(
                group=group,
                name=name,
                value=ep.value,
                distribution=dist.metadata["Name"] if dist else "?",
                version=dist.version if dist else "?",
            )
        )
    return out


def names(group: str) -> list[str]:
    """Names of the plugins installed in ``group``, sorted."""
    return sorted(_entry_points(group))


@functools.lru_cache(maxsize=None)
def load(group: str, name: str) -> type:
    """The plugin class registered as ``name`` in ``group``.

    Raises :class:`PluginNotFound` (listing the installed ones) or :class:`PluginLoadError`
    (naming the plugin and the import failure).
    """
    kind = _KIND.get(group, group)
    ep = _entry_points(group).get(name)
    if ep is None:
        available = ", ".join(names(group)) or "none"
        raise PluginNotFound(
            f"no {kind} plugin named {name!r} is installed (installed: {available}); "
            f"install the package that provides it or use one of the installed names"
        )
    try:
        cls = ep.load()
    except Exception as exc:  # any import-time failure is the plugin's, and must name it
        raise PluginLoadError(
            f"the {kind} plugin {name!r} ({ep.value}) failed to import: "
            f"{type(exc).__name__}: {exc}; reinstall it or install its optional dependencies"
        ) from exc
    return cls


def object_store_class(name: str) -> type["ObjectStore"]:
    """The object-store plugin class for ``storage`` name ``name``."""
    return load(OBJECT_STORES, name)


def meta_store_class(name: str) -> type["MetaStore"]:
    """The metadata-store plugin class for store type ``name``."""
    return load(META_STORES, name)


def report() -> list[PluginInfo]:
    """Every installed plugin of both groups (what ``volume plugins`` prints)."""
    return installed(OBJECT_STORES) + installed(META_STORES)
