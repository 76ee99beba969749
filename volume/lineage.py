"""Lineage: which action produced a version, and the walk back through its ancestors.

Embedding tools (a workflow engine, a pipeline runner) say which action is running with
:func:`action`; every version published inside it records that action as ``produced_by``.
Outside any action the producer is this process: ``ActionRef(name="process:<hostname>")``.
Tools can also be asked instead of telling: a *context provider* (entry-point group
``volume.contexts``, see :func:`context_providers`) says which action is running and which bucket
new volumes default to there; the Flyte plugin is one. The core never imports a provider's tool.
A published version's ``produced_by.locator`` is the URI of its version document, which
:meth:`Volume.from_locator` loads back; :func:`walk` follows ``parent_produced_by.locator``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import socket
from typing import TYPE_CHECKING, Any, Iterator

from .errors import VolumeUsageError

if TYPE_CHECKING:
    from .model import ActionRef, ROVolume, Volume

_current: contextvars.ContextVar["ActionRef | None"] = contextvars.ContextVar(
    "volume_current_action", default=None
)

CONTEXTS = "volume.contexts"


def context_providers() -> list[Any]:
    """The installed context providers (entry-point group ``volume.contexts``), sorted by name.

    A provider is any object with two methods, each returning None outside its tool's context:
    ``action()``, the running action (an :class:`ActionRef` or its fields as a mapping), and
    ``bucket()``, the bucket new volumes default to there. A provider must not import its tool
    unless the tool is already imported (nothing can be running in a tool never imported).
    """
    from . import plugins

    return [plugins.load(CONTEXTS, name) for name in plugins.names(CONTEXTS)]


def default_bucket() -> "str | None":
    """The bucket the running action's context provider gives new volumes, or None."""
    for provider in context_providers():
        bucket = provider.bucket()
        if bucket:
            return str(bucket)
    return None


@contextlib.contextmanager
def action(ref: "ActionRef | str", **fields: str | None) -> Iterator["ActionRef"]:
    """Run the block as action ``ref`` (an :class:`ActionRef` or a name plus its fields).

    ``locator`` is ignored: each published version gets its own.
    """
    from .model import ActionRef

    if isinstance(ref, str):
        ref = ActionRef(name=ref, **fields)
    elif fields:
        raise VolumeUsageError("pass either an ActionRef or a name with fields, not both")
    token = _current.set(ref.model_copy(update={"locator": None}))
    try:
        yield _current.get()  # type: ignore[misc]
    finally:
        _current.reset(token)


def current_action() -> "ActionRef":
    """The action now running: the innermost :func:`action` block, else the first context
    provider that knows one, else this process."""
    from .model import ActionRef

    ref = _current.get()
    if ref is not None:
        return ref.model_copy()
    for provider in context_providers():
        found = provider.action()
        if found is not None:
            return ActionRef.model_validate(found).model_copy(update={"locator": None})
    return ActionRef(name=f"process:{socket.gethostname()}", run_name=f"pid-{os.getpid()}")


def walk(volume: "Volume", *, limit: int = 10_000) -> Iterator["ROVolume"]:
    """Ancestors of ``volume``, nearest first, by ``parent_produced_by.locator``.

    Stops at a version without a parent locator, at a locator already seen (a cycle), or after
    ``limit`` steps.
    """
    from .model import Volume as VolumeModel

    seen: set[str] = set()
    if volume.produced_by is not None and volume.produced_by.locator:
        seen.add(volume.produced_by.locator)
    current: Volume = volume
    for _ in range(limit):
        parent = current.parent_produced_by
        if parent is None or not parent.locator or parent.locator in seen:
            return
        seen.add(parent.locator)
        current = VolumeModel.from_locator(parent.locator)
        yield current  # type: ignore[misc]
