"""The core never imports flyte: every module imports, and a lifecycle round trip works, in an
interpreter where flyte cannot be imported at all, and one where it could be but never is."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

# Runs in a fresh interpreter. With BLOCK set, a meta-path finder makes flyte (and its IDL)
# unimportable and records every attempt; then it imports every module of the core and the
# store plugins, and runs new -> mount -> write -> commit -> finalize -> fork -> read.
SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, json, os, pkgutil, sys, warnings

    BLOCKED = ("flyte", "flyteidl2")
    attempts = []

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
            return None

    if os.environ.get("BLOCK") == "1":
        sys.meta_path.insert(0, Blocker())

    import volume
    modules = [  # every module except the command-line entry points, which run on import
        m.name
        for m in pkgutil.walk_packages(volume.__path__, "volume.")
        if m.name.rsplit(".", 1)[-1] != "__main__"
    ]
    modules += ["volume_local", "volume_sqlite", "volume_flyte", "volume_flyte.context"]
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"

    from volume import Volume
    from volume.lineage import current_action, default_bucket, walk

    bucket = os.environ["TEST_BUCKET"]
    rw = Volume.new("plain-volume", bucket=bucket).mount(transport="none")
    rw.fs.pipe_file("/a.txt", b"a")
    rw.commit("first")
    rw.fs.pipe_file("/b.txt", b"b")
    v2 = rw.finalize("second")
    child = v2.fork("plain-child").mount(transport="none")
    child.fs.pipe_file("/c.txt", b"c")
    v3 = child.finalize()
    with v3.mount(transport="none") as ro:
        files = sorted(ro.fs.find("/"))
    os.environ.pop("UNION_VOLUME_BUCKET", None)
    try:
        Volume.new("no-bucket")
        bucket_error = None
    except Exception as exc:
        bucket_error = type(exc).__name__

    print(json.dumps({
        "attempts": attempts,
        "failed": failed,
        "imported": len(modules),
        "flyte_loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
        "files": files,
        "ancestors": [v.message for v in walk(v3)],
        "producer": v3.produced_by.name,
        "default_bucket": default_bucket(),
        "bucket_error": bucket_error,
    }))
    """
)


def run_core(tmp_path: Path, block: bool) -> dict:
    env_block = {"BLOCK": "1" if block else "0", "TEST_BUCKET": str(tmp_path / "bucket")}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env={**_clean_env(), **env_block},
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _clean_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "UNION_VOLUME_BUCKET"}


def check(result: dict) -> None:
    assert result["failed"] == {}
    assert result["imported"] > 20
    assert result["flyte_loaded"] == []
    assert result["files"] == ["/a.txt", "/b.txt", "/c.txt"]
    assert result["ancestors"][-2:] == ["second", "first"]
    assert result["producer"].startswith("process:")
    assert result["default_bucket"] is None
    assert result["bucket_error"] == "VolumeUsageError"


def test_core_works_where_flyte_cannot_be_imported(tmp_path):
    result = run_core(tmp_path, block=True)
    check(result)
    assert result["attempts"] == []  # nothing even tried to import flyte


def test_core_never_imports_flyte_even_when_installed(tmp_path):
    check(run_core(tmp_path, block=False))
