"""The ``file`` object-store plugin: a volume's objects as files below a local directory, in the
layout of JuiceFS's ``file`` storage (see ``backends/local/README.md``)."""

from ._store import LocalObjectStore, StagedFile

__all__ = ["LocalObjectStore", "StagedFile"]
