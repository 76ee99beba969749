"""docs/flyte.md's example runs as shown and prints what the guide says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flyte")

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "flyte.md"


def normalised(lines: list[str]) -> list[str]:
    """Flyte's action names numbered by first appearance.

    A name is an MD5 digest in base 36 without leading zeros: 25 characters, or fewer
    (about one name in 15 is 24 long, one in 550 is 23), so the length is a range.
    """
    names: dict[str, str] = {}

    def number(match: re.Match[str]) -> str:
        return names.setdefault(match.group(0), f"<action {len(names) + 1}>")

    return [re.sub(r"\b[a-z0-9]{18,25}\b", number, line.rstrip()) for line in lines]


def test_the_guide_example_prints_what_the_guide_shows(tmp_path):
    text = GUIDE.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    shown = re.search(r"\$ python example.py\n(.*?)```", text, re.S).group(1).splitlines()
    (tmp_path / "example.py").write_text(code)
    out = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DO_NOT_TRACK": "1"},
    )
    assert out.returncode == 0, out.stderr[-4000:]
    printed = [line for line in out.stdout.splitlines() if line.strip()]
    assert normalised(printed) == normalised(shown)
