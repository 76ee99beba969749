"""The ``volume.contexts`` provider for Flyte: the running task's action and default bucket.

The core asks every provider on each publish and each ``Volume.new()``/``empty()``; this one
answers only inside a Flyte task. It never imports ``flyte``: a task can only be running in a
process that imported it already, so when ``flyte`` is not in ``sys.modules`` the answer is None.

Inside a task:

* the action is the task's own (``TaskContext.task_action``: the real task, also inside
  ``@flyte.trace``), with ``project``/``domain``/``org`` from the action, else from
  ``flyte.init(...)``; while a task output is being converted, ``output_name`` is that output;
* the default bucket is ``{raw_data_root}/{project}/{domain}/volumes`` (:func:`raw_data_root`).
"""

from __future__ import annotations

import sys
from typing import Any, Optional
from urllib.parse import urlsplit

from volume.model import ActionRef

from .errors import VolumeNoDefaultBucket

__all__ = ["FlyteContext", "raw_data_root", "task_context", "output_name", "recording_in_task"]

# the scratch segment of a run's raw data path in hybrid runs: <base>/rd/<id>
_SCRATCH = "rd"


def task_context() -> Any:
    """The running Flyte task's ``TaskContext``, or None (outside a task, or flyte not imported)."""
    flyte = sys.modules.get("flyte")
    ctx = getattr(flyte, "ctx", None)
    if ctx is None:
        return None
    tctx = ctx()
    return tctx if tctx else None  # outside a task flyte.ctx() is a falsy null context


def _action_id(tctx: Any) -> Any:
    """The running task's ActionID (``task_action`` stays the task's inside ``@flyte.trace``)."""
    return getattr(tctx, "task_action", None) or tctx.action


def output_name() -> Optional[str]:
    """The task output being converted right now (``"o0"``, ...), or None."""
    convert = sys.modules.get("flyte._internal.runtime.convert")
    current = getattr(convert, "current_output_name", None)
    return current() if current is not None else None


def recording_in_task() -> bool:
    """Whether Flyte is converting values inside a running task for its own records (a
    ``@flyte.trace`` call's result, a sub-task's inputs), not as the task's own outputs."""
    return bool(getattr(task_context(), "in_driver_literal_conversion", False))


def _init_config() -> Any:
    init = sys.modules.get("flyte._initialize")
    get = getattr(init, "_get_init_config", None)
    return get() if get is not None else None


def _scope(tctx: Any) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """(project, domain, org) of the run: the action's, else what ``flyte.init`` was given."""
    act = _action_id(tctx)
    cfg = _init_config()
    return (
        act.project or getattr(cfg, "project", None),
        act.domain or getattr(cfg, "domain", None),
        act.org or getattr(cfg, "org", None),
    )


def raw_data_root(path: str, *, run_name: Optional[str] = None, rewrite: Any = None) -> str:
    """The stable root of a run's raw data path, where long-lived data can go.

    * a path the runtime mounted (``rewrite``: a ``PathRewrite``) is named by its URI again;
    * an object-store URI (``s3://bucket/shard/run/...``) gives its bucket, ``s3://bucket``:
      what follows is per-run and may be sharded or expire with the run;
    * a local path loses its per-run tail: ``<root>/<run_name>`` (local runs' default) and
      ``<root>/rd/<id>`` (hybrid runs) give ``<root>``; any other local path is the root itself
      (``flyte.with_runcontext(raw_data_path=...)`` in a local run).
    """
    if rewrite is not None:
        new, old = rewrite.new_prefix.rstrip("/"), rewrite.old_prefix.rstrip("/")
        if path == new or path.startswith(new + "/"):
            path = old + path[len(new) :]
    path = path.rstrip("/")
    parts = urlsplit(path)
    if parts.scheme and parts.netloc and parts.scheme != "file":
        return f"{parts.scheme}://{parts.netloc}"
    head, _, last = path.rpartition("/")
    if head and run_name and last == run_name:
        return head
    parent, _, scratch = head.rpartition("/")
    if parent and scratch == _SCRATCH:
        return parent
    return path


class FlyteContext:
    """What the core asks (``volume.lineage.context_providers``); None outside a Flyte task."""

    @staticmethod
    def action() -> Optional[ActionRef]:
        tctx = task_context()
        if tctx is None:
            return None
        act = _action_id(tctx)
        project, domain, org = _scope(tctx)
        return ActionRef(
            name=act.name,
            run_name=act.run_name,
            project=project,
            domain=domain,
            org=org,
            output_name=output_name(),
        )

    @staticmethod
    def bucket() -> Optional[str]:
        tctx = task_context()
        if tctx is None:
            return None
        act = _action_id(tctx)
        project, domain, _ = _scope(tctx)
        missing = [what for what, value in (("project", project), ("domain", domain)) if not value]
        raw = tctx.raw_data_path
        if not raw or not raw.path:
            missing.append("raw data path")
        if missing:
            raise VolumeNoDefaultBucket(
                f"cannot derive the default volume bucket inside Flyte action {act.name!r}: the "
                f"run has no {' and no '.join(missing)}; pass bucket=... to Volume.new() or "
                f"Volume.empty(), or (for a local run) call flyte.init(project=..., domain=...)"
            )
        root = raw_data_root(raw.path, run_name=act.run_name, rewrite=raw.path_rewrite)
        return f"{root}/{project}/{domain}/volumes"


PROVIDER = FlyteContext()
