"""The type transformer and the context provider, called directly (outside any task)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

flyte = pytest.importorskip("flyte")

import msgpack  # noqa: E402
from flyte.models import PathRewrite  # noqa: E402
from flyte.types import TypeEngine  # noqa: E402
from flyteidl2.core.literals_pb2 import Binary, Literal, Scalar  # noqa: E402
from flyteidl2.core.types_pb2 import SimpleType  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from volume import ActionRef, File, ROVolume, RWVolume, Volume  # noqa: E402
from volume.lineage import current_action, default_bucket  # noqa: E402
from volume_flyte import VolumeMountedInput, VolumeTypeMismatch  # noqa: E402
from volume_flyte.context import PROVIDER, raw_data_root  # noqa: E402
from volume_flyte.transformer import CLASS_KEY, VolumeTransformer  # noqa: E402


def version(tmp_path, cls=ROVolume, name="some-data"):
    return cls(
        name=name,
        bucket=str(tmp_path / "bucket"),
        index=File(path=f"file://{tmp_path}/bucket/{name}/_volume/versions/v1/meta.db"),
        metadata_store_type="sqlite",
        used_bytes=3,
        inode_count=2,
        produced_by=ActionRef(name="a1", run_name="r1", output_name="o0", locator="file:///x"),
    )


def to_literal(value, declared):
    return asyncio.run(TypeEngine.to_literal(value, declared, TypeEngine.to_literal_type(declared)))


def to_python(literal, expected):
    return asyncio.run(TypeEngine.to_python_value(literal, expected))


def test_registered_through_the_entry_point_alone():
    """A fresh interpreter that never imports volume_flyte gets the transformer from Flyte."""
    code = textwrap.dedent(
        """
        import sys
        from flyte.types import TypeEngine
        from volume import ROVolume, RWVolume, Volume
        assert "volume_flyte.transformer" not in sys.modules
        print(",".join(type(TypeEngine.get_transformer(t)).__name__
                       for t in (Volume, ROVolume, RWVolume)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["VolumeTransformer,VolumeTransformer,VolumeTransformer"]


def test_literal_type_is_a_struct_with_the_document_schema():
    lt = TypeEngine.to_literal_type(ROVolume)
    assert lt.simple == SimpleType.STRUCT
    assert lt.structure.tag == "flyte.volume/v1"
    assert set(lt.metadata["properties"].keys()) >= {"kind", "name", "bucket", "produced_by"}
    assert TypeEngine.guess_python_type(lt) is Volume


@pytest.mark.parametrize("cls", [Volume, ROVolume, RWVolume])
def test_the_literal_is_the_json_document(tmp_path, cls):
    value = version(tmp_path, cls)
    literal = to_literal(value, cls)
    assert literal.scalar.binary.tag == "msgpack"
    assert msgpack.loads(literal.scalar.binary.value) == json.loads(value.model_dump_json())
    assert literal.metadata[CLASS_KEY] == cls.__name__
    back = to_python(literal, cls)
    assert type(back) is cls and back.model_dump() == value.model_dump()


@pytest.mark.parametrize(
    "sent, expected, received",
    [
        (ROVolume, ROVolume, ROVolume),
        (ROVolume, Volume, ROVolume),
        (RWVolume, RWVolume, RWVolume),
        (RWVolume, Volume, RWVolume),
        (Volume, Volume, Volume),
        (Volume, ROVolume, ROVolume),
        (Volume, RWVolume, RWVolume),
    ],
)
def test_the_receiving_class(tmp_path, sent, expected, received):
    literal = to_literal(version(tmp_path, sent), sent)
    assert type(to_python(literal, expected)) is received


def test_a_published_version_read_as_a_working_copy_stays_a_version(tmp_path):
    # what a task returning an RWVolume produces: the ROVolume's document, marked as one
    literal = to_literal(version(tmp_path, ROVolume), ROVolume)
    assert type(to_python(literal, RWVolume)) is ROVolume


def test_documents_from_elsewhere_are_read(tmp_path):
    document = json.loads(version(tmp_path).model_dump_json())
    struct = struct_pb2.Struct()
    struct.update(document)  # what a UI or another SDK may send: a generic struct
    back = to_python(Literal(scalar=Scalar(generic=struct)), ROVolume)
    assert back.model_dump() == version(tmp_path).model_dump()
    # or the JSON text itself in a binary scalar
    binary = Binary(value=version(tmp_path).model_dump_json().encode(), tag="json")
    back = to_python(Literal(scalar=Scalar(binary=binary)), ROVolume)
    assert back.model_dump() == version(tmp_path).model_dump()
    # a dict where a volume is declared is parsed as the declared class
    literal = to_literal({"name": "from-a-dict", "bucket": str(tmp_path)}, RWVolume)
    assert type(to_python(literal, RWVolume)) is RWVolume


@pytest.mark.parametrize(
    "value_cls, declared, says",
    [
        (RWVolume, ROVolume, "declared ROVolume but the RWVolume"),
        (ROVolume, RWVolume, "declared RWVolume but the ROVolume"),
    ],
)
def test_declared_and_given_kinds_must_agree(tmp_path, value_cls, declared, says):
    transformer = VolumeTransformer()
    with pytest.raises(VolumeTypeMismatch, match=says):
        asyncio.run(transformer.to_literal(version(tmp_path, value_cls), declared, None))


def test_a_non_volume_is_refused(tmp_path):
    with pytest.raises(VolumeTypeMismatch, match="declared ROVolume but got a str"):
        asyncio.run(VolumeTransformer().to_literal("s3://b/x", ROVolume, None))


def test_a_mounted_working_copy_is_refused_as_input(tmp_path):
    rw = Volume.new("mounted-here", bucket=str(tmp_path / "b")).mount(transport="none")
    try:
        with pytest.raises(VolumeMountedInput, match="pass rw.commit\\(\\) or rw.finalize\\(\\)"):
            asyncio.run(VolumeTransformer().to_literal(rw, RWVolume, None))
    finally:
        rw.unmount()


def test_outside_a_task_the_provider_knows_nothing():
    assert PROVIDER.action() is None and PROVIDER.bucket() is None
    assert default_bucket() is None
    assert current_action().name.startswith("process:")


@pytest.mark.parametrize(
    "path, run_name, root",
    [
        ("s3://bucket/ab/org-proj-dom-run/a0", "run", "s3://bucket"),
        ("gs://bucket/prefix/", None, "gs://bucket"),
        ("abfs://container/x/y", None, "abfs://container"),
        ("/var/flyte/raw_data/run-123", "run-123", "/var/flyte/raw_data"),
        ("/srv/base/rd/0f3c9", "run-1", "/srv/base"),
        ("/srv/raw", "run-1", "/srv/raw"),
        ("file:///srv/raw/", None, "file:///srv/raw"),
    ],
)
def test_raw_data_root(path, run_name, root):
    assert raw_data_root(path, run_name=run_name) == root


def test_raw_data_root_of_a_mounted_path_is_its_uri():
    rewrite = PathRewrite(old_prefix="s3://bucket/data", new_prefix="/mnt/data")
    assert raw_data_root("/mnt/data/ab/run/a0", rewrite=rewrite) == "s3://bucket"
