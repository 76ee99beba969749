"""spec/volume.schema.json and the examples of spec/volume.md agree with the model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from volume import Volume
from volume._schema import REGENERATE_COMMAND, SCHEMA_PATH, main, render

SPEC = Path(__file__).resolve().parents[2] / "spec"
JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.S)

VALID_DOCUMENTS = [
    {"name": "abc", "bucket": "s3://b"},
    {"name": "abc", "bucket": "/srv/volumes", "storage": None},
    {
        "kind": "flyte.volume/v1",
        "name": "data-v2",
        "bucket": "gs://b/p",
        "storage": "gs",
        "region": "europe-west4",
        "index": {"path": "gs://b/p/data-v2/index.db", "name": None, "format": "sqlite", "hash": None},
        "metadata_store_type": "sqlite",
        "used_bytes": 10,
        "inode_count": 3,
        "index_bytes": 4096,
        "message": "m",
        "produced_by": {"name": "a0", "locator": "gs://b/p/data-v2/volume.json"},
        "parent_produced_by": None,
    },
]
INVALID_DOCUMENTS = [
    {"bucket": "s3://b"},  # no name
    {"name": "abc"},  # no bucket
    {"name": "Abc", "bucket": "s3://b"},  # breaks the name rule
    {"name": "abc", "bucket": "s3://b", "kind": "flyte.volume/v2"},
    {"name": "abc", "bucket": "s3://b", "colour": "red"},
    {"name": "abc", "bucket": "s3://b", "used_bytes": -1},
    {"name": "abc", "bucket": "s3://b", "index": {"name": "no-path"}},
]


def test_checked_in_schema_matches_the_model():
    checked_in = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert checked_in == Volume.model_json_schema(), (
        f"{SCHEMA_PATH} is out of date with volume.model; regenerate it with "
        f"`{REGENERATE_COMMAND}` and commit the result"
    )


def test_regeneration_writes_the_rendered_schema(tmp_path):
    out = tmp_path / "schema.json"
    assert main([str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text == render() and text.endswith("}\n")


def test_spec_names_the_regeneration_command():
    assert REGENERATE_COMMAND in (SPEC / "volume.md").read_text(encoding="utf-8")


def test_spec_examples_are_valid_volumes():
    examples = JSON_BLOCK.findall((SPEC / "volume.md").read_text(encoding="utf-8"))
    assert examples, "spec/volume.md should show example documents"
    for example in examples:
        Volume.parse(example)


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip(
        "jsonschema",
        reason="jsonschema is not installed (not a dependency); "
        "schema validation of example documents is skipped",
    )
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize("document", VALID_DOCUMENTS)
def test_schema_accepts_valid_documents(validator, document):
    validator.validate(document)
    Volume.model_validate(document)


@pytest.mark.parametrize("document", INVALID_DOCUMENTS)
def test_schema_and_model_reject_invalid_documents(validator, document):
    assert list(validator.iter_errors(document))
    with pytest.raises(ValueError):
        Volume.model_validate(document)
