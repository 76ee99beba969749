"""Conformance kits and hypothesis helpers for store plugins and engines.

Plugin authors subclass the kits in their own test suites (like ``fsspec.tests.abstract``)::

    from volume.testing import ObjectStoreTests

    class TestMyStore(ObjectStoreTests):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore.from_uri(...)
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ObjectStoreTests": "volume.testing.objectstore",
    "MetaStoreTests": "volume.testing.metastore",
    "MemoryObjectStore": "volume.testing.memory",
    "PipeStream": "volume.testing.streams",
    "FSMachine": "volume.testing.fsmachine",
    "EngineMachine": "volume.testing.fsmachine",
    "OsDir": "volume.testing.fsmachine",
    "LifecycleMachine": "volume.testing.lifecycle_machine",
    "Fault": "volume.testing.faults",
    "FaultPlan": "volume.testing.faults",
    "FaultyObjectStore": "volume.testing.faults",
    "Recorder": "volume.testing.faults",
    "RecordingObjectStore": "volume.testing.faults",
    "wrap_lifecycle_stores": "volume.testing.faults",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # imported on first use so that importing volume.testing does not import pytest
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'volume.testing' has no attribute {name!r}")
