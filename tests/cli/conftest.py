"""Helpers for the command's tests: run the real `volume` in a subprocess, on real volumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

VOLUME = [sys.executable, "-m", "volume.cli"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def volume(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 120) -> Result:  # fmt: skip
    """Run ``volume ARGS`` and return its exit status, stdout and stderr."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    done = subprocess.run(
        [*VOLUME, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    return Result(done.returncode, done.stdout, done.stderr)


def one_line_error(result: Result) -> str:
    """The single stderr line of a failed command (asserting it is one line with a type)."""
    assert result.code == 2, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("volume: error: ") and "Traceback" not in result.err
    return lines[0]


def tree(path: Path) -> dict[str, bytes | None]:
    """Every entry below ``path``: file bytes, None for directories."""
    out: dict[str, bytes | None] = {}
    for p in sorted(path.rglob("*")):
        out[str(p.relative_to(path))] = None if p.is_dir() else p.read_bytes()
    return out


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    return tmp_path / "bucket"


@pytest.fixture
def published(bucket: Path) -> tuple[str, str]:
    """Two versions of one volume (built in-process): (first locator, second locator)."""
    from volume import Volume

    rw = Volume.new("clivol", bucket=str(bucket)).mount(transport="none")
    fs = rw._mount.pathfs
    fs.makedirs("/docs/notes")
    fs.write_bytes("/docs/readme.txt", b"hello volume\n")
    fs.write_bytes("/docs/notes/todo.txt", b"todo\n")
    fs.write_bytes("/data.bin", bytes(range(256)) * 40_000)  # 10 MB: three 4 MiB blocks
    fs.symlink("docs/readme.txt", "/link")
    first = rw.commit("first")
    fs.write_bytes("/docs/notes/todo.txt", b"done\n")
    fs.rename("/docs/readme.txt", "/docs/README.txt")
    second = rw.finalize("second")
    return first.produced_by.locator, second.produced_by.locator
