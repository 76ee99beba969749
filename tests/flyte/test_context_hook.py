"""The core's generic context hook (entry-point group volume.contexts), with a provider of our own."""

from __future__ import annotations

import pytest

from volume import ActionRef, Volume, lineage
from volume.plugins import names


class Provider:
    def __init__(self, action=None, bucket=None):
        self._action, self._bucket = action, bucket

    def action(self):
        return self._action

    def bucket(self):
        return self._bucket


@pytest.fixture
def provide(monkeypatch):
    def install(*providers):
        monkeypatch.setattr(lineage, "context_providers", lambda: list(providers))

    return install


def test_the_flyte_provider_is_registered():
    assert "flyte" in names(lineage.CONTEXTS)


def test_the_first_provider_that_knows_the_action_names_it(provide):
    provide(Provider(), Provider({"name": "a7", "run_name": "r1", "locator": "file:///old"}))
    ref = lineage.current_action()
    assert (ref.name, ref.run_name, ref.locator) == ("a7", "r1", None)


def test_a_declared_action_wins_over_providers(provide):
    provide(Provider(ActionRef(name="from-provider")))
    with lineage.action("declared"):
        assert lineage.current_action().name == "declared"
    assert lineage.current_action().name == "from-provider"


def test_the_provider_bucket_comes_before_the_environment(provide, monkeypatch, tmp_path):
    monkeypatch.setenv("UNION_VOLUME_BUCKET", str(tmp_path / "env"))
    provide(Provider(bucket=None), Provider(bucket=str(tmp_path / "ctx")))
    assert Volume.new("from-context").bucket == str(tmp_path / "ctx")
    assert Volume.empty("from-context").bucket == str(tmp_path / "ctx")
    assert Volume.new("explicit", bucket=str(tmp_path / "x")).bucket == str(tmp_path / "x")
    provide(Provider())
    assert Volume.new("from-env").bucket == str(tmp_path / "env")


def test_versions_record_the_provided_action(provide, tmp_path):
    provide(Provider(ActionRef(name="a9", run_name="r9", project="p", domain="d")))
    rw = Volume.new("provided", bucket=str(tmp_path / "b")).mount(transport="none")
    rw.fs.pipe_file("/x", b"x")
    version = rw.finalize()
    assert (version.produced_by.name, version.produced_by.project) == ("a9", "p")
    assert version.produced_by.locator.endswith("/volume.json")
