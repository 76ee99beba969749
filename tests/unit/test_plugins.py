"""Plugin discovery through entry points: listing, loading, and the two ways loading fails."""

from __future__ import annotations

from importlib import metadata
from typing import Iterator

import pytest

import volume.plugins as plugins
from volume.errors import PluginLoadError, PluginNotFound
from volume.stores import ObjectStore
from volume.testing.memory import MemoryObjectStore
from volume_local import LocalObjectStore


@pytest.fixture(autouse=True)
def fresh_plugin_caches() -> Iterator[None]:
    # load() is lru_cached: a test that swaps entry points must neither see nor leave behind
    # another test's loaded classes
    plugins.load.cache_clear()
    yield
    plugins.load.cache_clear()


def test_report_lists_the_bundled_plugins_with_versions() -> None:
    report = {(info.group, info.name): info for info in plugins.report()}
    for group, name in [
        (plugins.OBJECT_STORES, "file"),
        (plugins.OBJECT_STORES, "memory"),
        (plugins.META_STORES, "sqlite"),
    ]:
        info = report[(group, name)]
        assert info.distribution == "volume"
        assert info.version == metadata.version("volume")
    assert report[(plugins.OBJECT_STORES, "file")].value == "volume_local:LocalObjectStore"


@pytest.mark.parametrize(
    ("name", "cls"), [("file", LocalObjectStore), ("memory", MemoryObjectStore)]
)
def test_object_store_class_loads_the_registered_class(name: str, cls: type) -> None:
    loaded = plugins.object_store_class(name)
    assert loaded is cls
    assert issubclass(loaded, ObjectStore)
    assert loaded.name == name  # the class knows the name it is registered under


def test_an_unknown_name_lists_the_installed_plugins() -> None:
    with pytest.raises(PluginNotFound) as caught:
        plugins.object_store_class("nosuchstore")
    message = str(caught.value)
    assert "'nosuchstore'" in message
    assert "file" in message and "memory" in message
    assert isinstance(caught.value, LookupError)


@pytest.mark.parametrize(
    "value",
    [
        "volume_no_such_module:Store",  # the module is missing
        "volume.errors:NoSuchStore",  # the module imports but lacks the attribute
    ],
)
def test_a_plugin_that_fails_to_import_is_named(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    broken = metadata.EntryPoint(name="broken", value=value, group=plugins.OBJECT_STORES)
    real = plugins._entry_points

    def with_broken(group: str) -> dict[str, metadata.EntryPoint]:
        found = dict(real(group))
        if group == plugins.OBJECT_STORES:
            found["broken"] = broken
        return found

    monkeypatch.setattr(plugins, "_entry_points", with_broken)
    assert "broken" in plugins.names(plugins.OBJECT_STORES)
    with pytest.raises(PluginLoadError) as caught:
        plugins.object_store_class("broken")
    assert "'broken'" in str(caught.value) and value in str(caught.value)
    assert isinstance(caught.value, ImportError)
    assert plugins.object_store_class("file") is LocalObjectStore  # the others still load
