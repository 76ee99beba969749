"""Regenerate ``spec/volume.schema.json`` from the model: ``python -m volume._schema [PATH]``.

The checked-in schema is compared with :meth:`Volume.model_json_schema` by
``tests/unit/test_schema.py``; run this after changing the model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from .model import Volume

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "spec" / "volume.schema.json"
REGENERATE_COMMAND = "python -m volume._schema"


def render() -> str:
    """The schema file's text: the model's JSON Schema, indented by 2, with a trailing newline."""
    return json.dumps(Volume.model_json_schema(), indent=2) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write the schema to PATH (default: spec/volume.schema.json of this checkout)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) > 1:
        print(f"usage: {REGENERATE_COMMAND} [PATH]", file=sys.stderr)
        return 2
    path = Path(args[0]) if args else SCHEMA_PATH
    path.write_text(render(), encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
