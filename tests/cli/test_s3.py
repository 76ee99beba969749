"""The command on S3 (moto server on 127.0.0.1), through the s3 store plugin when installed."""

from __future__ import annotations

import importlib.util
import uuid
from typing import Iterator

import pytest

from tests.cli.conftest import volume

pytestmark = pytest.mark.server

if importlib.util.find_spec("volume_s3") is None:  # the plugin is optional; CI installs it
    pytest.skip("the s3 store plugin (volume_s3) is not installed", allow_module_level=True)

from tests.cloud import servers  # noqa: E402

BUCKET = "volume-cli-test"


@pytest.fixture(scope="module")
def moto() -> Iterator[servers.Server]:
    server = servers.start_moto()
    try:
        servers.create_s3_bucket(server, BUCKET)
        yield server
    finally:
        server.stop()


def test_create_read_fsck_gc_and_demo_on_s3(moto: servers.Server, tmp_path):
    env = moto.env
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"
    created = volume("create", "s3-vol", "--bucket", prefix, "--json", env=env)
    assert created.code == 0, created.err
    loc = created.json()["locator"]
    assert loc.startswith(f"{prefix}/s3-vol/_volume/versions/")
    assert volume("info", loc, "--json", env=env).json()["storage"] == "s3"
    assert volume("ls", loc, "--json", env=env).json() == []
    assert volume("fsck", loc, env=env).code == 0
    gc = volume("gc", prefix, "--json", env=env)
    assert gc.code == 0 and gc.json()["families"][0]["name"] == "s3-vol"

    demo = volume(
        "demo", f"s3://{BUCKET}/demo-{uuid.uuid4().hex[:6]}", "--json", env=env, cwd=tmp_path
    )
    assert demo.code == 0, demo.err
    result = demo.json()
    assert result["verified"] and result["storage"] == "s3"
    assert list(tmp_path.iterdir()) == []  # no local directory named "s3:"
    fork = result["versions"][1]["locator"]
    assert volume("cat", fork, "/docs/notes/todo.txt", env=env).out == "forked and changed\n"
    assert volume("fsck", fork, "--json", env=env).json()["ok"]


def test_pandas_reads_a_version_on_s3_by_locator(moto: servers.Server, monkeypatch):
    import pandas as pd

    from volume import Volume

    for name, value in moto.env.items():
        monkeypatch.setenv(name, value)
    rw = Volume.new("s3-csv", bucket=f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}")
    rw.mount(transport="none")
    rw.fs.pipe_file("/t.csv", b"a,b\n1,2\n")
    locator = rw.finalize().produced_by.locator
    frame = pd.read_csv("volume:///t.csv", storage_options={"locator": locator})
    assert frame.to_dict("list") == {"a": [1], "b": [2]}
