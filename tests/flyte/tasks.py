"""Flyte tasks the tests run in local mode: the three-task example of the README and bad ones."""

from __future__ import annotations

from typing import Any, Optional

import flyte

from volume import ROVolume, RWVolume, Volume

env = flyte.TaskEnvironment(name="volume-tests")

# task name -> the action that ran it (local runs execute tasks in this process)
ACTIONS: dict[str, str] = {}
# working copies a failing task leaves mounted (the tests' fixture unmounts them)
LEFT_MOUNTED: list[Any] = []


def _ran(task: str) -> None:
    ACTIONS[task] = flyte.ctx().action.name


# --------------------------------------------------------------------------- the example


@env.task
async def produce() -> RWVolume:
    """Create a volume in the task's default bucket, write two shards, return it."""
    _ran("produce")
    rw = Volume.new("training-data").mount(transport="none")
    rw.fs.makedirs("/shards")
    rw.fs.pipe_file("/shards/0.txt", b"zero\n")
    rw.commit("shard 0")
    rw.fs.pipe_file("/shards/1.txt", b"one\n")
    return rw  # finalized at return: the output is the published ROVolume


@env.task
async def consume(data: ROVolume) -> str:
    """Mount the version read-only and read every shard."""
    _ran("consume")
    with data.mount(transport="none") as ro:
        shards = sorted(ro.fs.ls("/shards", detail=False))
        return "".join(ro.fs.cat_file(path).decode() for path in shards)


@env.task
async def extend(data: ROVolume) -> RWVolume:
    """Fork the version, add a shard, return the fork."""
    _ran("extend")
    rw = data.fork("training-data-v2").mount(transport="none")
    rw.fs.pipe_file("/shards/2.txt", b"two\n")
    return rw


@env.task
async def pipeline() -> tuple[ROVolume, str, ROVolume]:
    data = await produce()
    text = await consume(data)
    more = await extend(data)
    return data, text, more


# --------------------------------------------------------------------------- other outputs


def _written(name: str) -> RWVolume:
    rw = Volume.new(name).mount(transport="none")
    rw.fs.pipe_file("/name.txt", name.encode())
    return rw


@env.task
async def return_as_volume() -> Volume:
    return _written("declared-as-volume")


@env.task
async def return_optional() -> Optional[RWVolume]:
    return _written("optional-one")


@env.task
async def return_list() -> list[RWVolume]:
    return [_written("first-of-two"), _written("second-of-two")]


@env.task
async def return_unmounted_fork(data: ROVolume) -> RWVolume:
    _ran("return_unmounted_fork")
    return data.fork("forked-not-mounted")


@env.task
async def fork_without_writing() -> ROVolume:
    return await return_unmounted_fork(await produce())


@env.task
async def return_commit() -> ROVolume:
    rw = _written("committed-in-body")
    version = rw.commit("made here")
    rw.unmount()
    return version  # produced here, published without an output name: it gets "o0"


@env.task
async def pass_through(volume: ROVolume) -> ROVolume:
    return volume


@flyte.trace
async def start_volume(name: str) -> RWVolume:
    rw = Volume.new(name).mount(transport="none")
    rw.fs.pipe_file("/from-trace.txt", b"trace\n")
    return rw  # recorded by the trace, not finalized: the task goes on writing


@env.task
async def trace_then_write() -> RWVolume:
    rw = await start_volume("traced-volume")
    rw.fs.pipe_file("/from-task.txt", b"task\n")
    return rw


@env.task
async def produce_through_fuse(mount_path: str) -> RWVolume:
    """Write through a kernel mount with ordinary file calls, then return the mounted copy."""
    rw = Volume.new("kernel-mounted").mount(mount_path=mount_path, transport="fuse")
    with open(f"{mount_path}/hello.txt", "w") as f:
        f.write("written through the kernel\n")
    return rw


# --------------------------------------------------------------------------- inputs


@env.task
async def fill(volume: RWVolume) -> RWVolume:
    """Mount a working copy given as input (a declaration made by the caller) and write."""
    _ran("fill")
    volume.mount(transport="none")
    volume.fs.pipe_file("/filled.txt", b"filled\n")
    return volume


@env.task
async def declare_then_fill() -> ROVolume:
    return await fill(Volume.new("filled-by-a-task"))


@env.task
async def read_one(volume: ROVolume) -> str:
    with volume.mount(transport="none") as ro:
        return ro.fs.cat_file("/filled.txt").decode()


@env.task
async def take_working_copy(volume: RWVolume) -> str:
    return volume.name


@env.task
async def pass_mounted_working_copy() -> str:
    rw = Volume.new("mounted-input").mount(transport="none")
    LEFT_MOUNTED.append(rw)
    return await take_working_copy(rw)


@env.task
async def pass_working_copy_as_version() -> str:
    return await read_one(Volume.new("not-a-version"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- failures


@env.task
async def write_then_fail() -> RWVolume:
    rw = Volume.new("doomed").mount(transport="none")
    LEFT_MOUNTED.append(rw)
    rw.fs.pipe_file("/partial.txt", b"never published\n")
    raise RuntimeError("the task failed after writing")


@env.task
async def return_never_mounted() -> RWVolume:
    return Volume.new("never-mounted")


@env.task
async def return_finalized() -> RWVolume:
    rw = Volume.new("finalized-early").mount(transport="none")
    rw.fs.pipe_file("/x.txt", b"x")
    rw.finalize()
    return rw


@env.task
async def return_declaration() -> Volume:
    return Volume.empty("only-declared")


@env.task
async def return_working_copy_as_version() -> ROVolume:
    rw = Volume.new("wrong-kind").mount(transport="none")
    LEFT_MOUNTED.append(rw)
    rw.fs.pipe_file("/x.txt", b"x")
    return rw  # type: ignore[return-value]


@env.task
async def return_version_as_working_copy() -> RWVolume:
    rw = Volume.new("other-kind").mount(transport="none")
    rw.fs.pipe_file("/x.txt", b"x")
    return rw.finalize()  # type: ignore[return-value]


@env.task
async def default_bucket() -> str:
    return Volume.new("where-am-i").bucket
