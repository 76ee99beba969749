"""Volumes through real Flyte 2 tasks, run in local mode (flyte.with_runcontext(mode="local"))."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

flyte = pytest.importorskip("flyte")

from volume import ROVolume, Volume  # noqa: E402
from volume.errors import VolumeUsageError  # noqa: E402
from volume.lineage import walk  # noqa: E402
from volume_flyte import (  # noqa: E402
    VolumeMountedInput,
    VolumeNoDefaultBucket,
    VolumeNothingToFinalize,
    VolumeTypeMismatch,
)

from . import tasks  # noqa: E402
from .conftest import DOMAIN, PROJECT  # noqa: E402


def versions(bucket: Path) -> list[Path]:
    """The version documents published below a local bucket."""
    return sorted(bucket.glob("*/_volume/versions/*/volume.json"))


def read_all(volume: ROVolume) -> dict[str, bytes]:
    with volume.mount(transport="none") as ro:
        return {path: ro.fs.cat_file(path) for path in ro.fs.find("/")}


def raised(error: BaseException, cls: type[Exception]) -> bool:
    """The typed error itself, or Flyte's report of it: a failed task's error carries the class
    name as its code; a failed input conversion reports a TypeError quoting ours as the reason."""
    if isinstance(error, cls) or getattr(error, "code", None) == cls.__name__:
        return True
    return issubclass(cls, TypeError) and getattr(error, "code", None) == "TypeError"


# --------------------------------------------------------------------------- the example


def test_three_tasks_produce_consume_fork(run_local, volumes_bucket):
    data, text, more = run_local(tasks.pipeline)

    assert type(data) is ROVolume and type(more) is ROVolume
    assert text == "zero\none\n"
    # the default bucket came from the task context: {raw_data_root}/{project}/{domain}/volumes
    assert data.bucket == more.bucket == str(volumes_bucket)

    # produced_by is the action of the task that made each version, with the output's name
    made, forked = data.produced_by, more.produced_by
    assert made.name == tasks.ACTIONS["produce"] and forked.name == tasks.ACTIONS["extend"]
    assert made.run_name == forked.run_name and made.run_name
    assert (made.project, made.domain) == (PROJECT, DOMAIN)
    assert made.output_name == forked.output_name == "o0"
    # what was published is what the run returned, output name included
    assert Volume.from_locator(made.locator).model_dump() == data.model_dump()

    # the versions hold what the tasks wrote; the fork did not change its source
    assert read_all(data) == {"/shards/0.txt": b"zero\n", "/shards/1.txt": b"one\n"}
    assert read_all(more) == {**read_all(data), "/shards/2.txt": b"two\n"}

    # lineage walks back through the fork to the producer's two commits
    chain = list(walk(more))
    locators = [v.produced_by.locator for v in chain]
    assert made.locator in locators
    at = locators.index(made.locator)
    assert all(v.produced_by.name == forked.name for v in chain[:at])
    assert [v.produced_by.name for v in chain[at:]] == [made.name, made.name]
    assert chain[-1].message == "shard 0" and chain[-1].parent_produced_by is None
    assert [v.name for v in walk(data)] == ["training-data"]


@pytest.mark.parametrize(
    "task, names",
    [
        (tasks.return_as_volume, ["declared-as-volume"]),
        (tasks.return_optional, ["optional-one"]),
        (tasks.return_list, ["first-of-two", "second-of-two"]),
    ],
    ids=["as-Volume", "Optional", "list"],
)
def test_working_copies_are_finalized_wherever_they_are_returned(run_local, task, names):
    out = run_local(task)
    out = out if isinstance(out, list) else [out]
    assert [type(v) for v in out] == [ROVolume] * len(names)
    assert [v.name for v in out] == names
    assert all(v.produced_by.output_name == "o0" for v in out)
    assert [read_all(v) for v in out] == [{"/name.txt": name.encode()} for name in names]


def test_a_fork_returned_unmounted_is_published_as_it_stands(run_local):
    fork = run_local(tasks.fork_without_writing)
    assert type(fork) is ROVolume and fork.name == "forked-not-mounted"
    assert fork.produced_by.name == tasks.ACTIONS["return_unmounted_fork"]
    assert read_all(fork) == {"/shards/0.txt": b"zero\n", "/shards/1.txt": b"one\n"}
    assert tasks.ACTIONS["produce"] in [v.produced_by.name for v in walk(fork)]


@pytest.mark.fuse
def test_a_kernel_mounted_working_copy_is_unmounted_and_published(run_local, tmp_path):
    from volume.mount.fuse import fuse_usable

    usable, why = fuse_usable()
    if not usable:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and FUSE is not usable here: {why}")
        pytest.skip(f"FUSE is not usable here: {why}")
    mount_path = tmp_path / "mnt"
    version = run_local(tasks.produce_through_fuse, str(mount_path))
    assert type(version) is ROVolume
    assert not os.path.ismount(mount_path)
    assert read_all(version) == {"/hello.txt": b"written through the kernel\n"}


def test_a_version_made_in_the_task_gets_the_output_name(run_local):
    version = run_local(tasks.return_commit)
    assert (version.message, version.produced_by.output_name) == ("made here", "o0")
    # the stored document was written before anyone knew the output
    assert Volume.from_locator(version.produced_by.locator).produced_by.output_name is None


def test_a_version_made_elsewhere_passes_through_unchanged(run_local, tmp_path):
    rw = Volume.new("made-outside", bucket=str(tmp_path / "outside")).mount(transport="none")
    rw.fs.pipe_file("/x", b"x")
    version = rw.finalize()
    assert version.produced_by.name.startswith("process:")
    back = run_local(tasks.pass_through, version)
    assert type(back) is ROVolume and back.model_dump() == version.model_dump()


def test_a_working_copy_returned_by_a_trace_stays_mounted_until_the_task_returns(
    run_local, volumes_bucket
):
    version = run_local(tasks.trace_then_write)
    assert read_all(version) == {"/from-trace.txt": b"trace\n", "/from-task.txt": b"task\n"}
    assert len(versions(volumes_bucket)) == 1


def test_a_working_copy_declared_by_the_caller_is_filled_and_finalized(run_local):
    filled = run_local(tasks.declare_then_fill)
    assert type(filled) is ROVolume
    assert filled.produced_by.name == tasks.ACTIONS["fill"]
    assert read_all(filled) == {"/filled.txt": b"filled\n"}


def test_failed_task_publishes_nothing(run_local, volumes_bucket):
    with pytest.raises(flyte.errors.RuntimeUserError, match="failed after writing"):
        run_local(tasks.write_then_fail)
    assert (volumes_bucket / "doomed").is_dir()  # the volume was made and written to ...
    assert versions(volumes_bucket) == []  # ... and nothing was published


# --------------------------------------------------------------------------- bad outputs


@pytest.mark.parametrize(
    "task, error, says, published",
    [
        (tasks.return_never_mounted, VolumeNothingToFinalize, "never mounted", 0),
        (tasks.return_finalized, VolumeNothingToFinalize, "already finalized", 1),
        (tasks.return_declaration, VolumeNothingToFinalize, "never mounted", 0),
        (tasks.return_working_copy_as_version, VolumeTypeMismatch, "return rw.finalize()", 0),
        (tasks.return_version_as_working_copy, VolumeTypeMismatch, "declare it ROVolume", 1),
    ],
    ids=["never-mounted", "finalized-in-body", "declaration", "rw-as-ro", "ro-as-rw"],
)
def test_bad_outputs_get_typed_errors(run_local, volumes_bucket, task, error, says, published):
    with pytest.raises(Exception) as info:
        run_local(task)
    assert raised(info.value, error), repr(info.value)
    assert "o0" in str(info.value) and says in str(info.value)
    assert len(versions(volumes_bucket)) == published


# --------------------------------------------------------------------------- bad inputs


def test_a_mounted_working_copy_is_no_task_input(run_local):
    with pytest.raises(Exception, match="commit\\(\\) or rw.finalize\\(\\)") as info:
        run_local(tasks.pass_mounted_working_copy)
    assert raised(info.value, VolumeMountedInput), repr(info.value)


def test_a_working_copy_is_no_version_input(run_local):
    with pytest.raises(Exception, match="Reason: task input is declared ROVolume") as info:
        run_local(tasks.pass_working_copy_as_version)
    assert raised(info.value, VolumeTypeMismatch), repr(info.value)


# --------------------------------------------------------------------------- the bucket


def test_bucket_cannot_be_derived_without_project_and_domain(run_local):
    with pytest.raises(Exception, match="flyte.init\\(project=") as info:
        run_local(tasks.default_bucket, project=None)
    assert raised(info.value, VolumeNoDefaultBucket), repr(info.value)


def test_the_default_local_raw_data_path_loses_its_run_name():
    flyte.init(project=PROJECT, domain=DOMAIN)
    run = flyte.with_runcontext(mode="local").run(tasks.default_bucket)  # the SDK's own path
    bucket = tuple(run.outputs())[0]
    root, _, rest = bucket.rpartition(f"/{PROJECT}/{DOMAIN}/")
    assert rest == "volumes" and root.endswith("/raw_data")  # <root>/<run name> -> <root>


def test_outside_a_task_the_bucket_is_the_environment_one(run_local, monkeypatch, tmp_path):
    run_local(tasks.default_bucket)  # flyte is imported and initialized, no task is running
    with pytest.raises(VolumeUsageError, match="UNION_VOLUME_BUCKET"):
        Volume.new("outside")
    monkeypatch.setenv("UNION_VOLUME_BUCKET", str(tmp_path / "env-bucket"))
    assert Volume.new("outside").bucket == str(tmp_path / "env-bucket")
    assert run_local(tasks.default_bucket).endswith(f"/{PROJECT}/{DOMAIN}/volumes")
