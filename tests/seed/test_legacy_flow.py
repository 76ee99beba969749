"""The seed's whole legacy flow, as an existing ``Volume`` caller writes it:

``Volume.empty`` -> ``mount`` -> write through the mount -> ``commit(mount_path=...)`` ->
``fork`` -> ``mount`` -> write -> ``commit`` -> read the result back, and its lineage.

It runs twice: with a kernel (FUSE) mount, writing with plain ``open()``/``os`` calls, and
in-process, writing through the handle's file system.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from volume import ROVolume, RWVolume, Volume
from volume.errors import VolumeNotMounted, VolumeReadOnly
from volume.lineage import action, walk


class Through:
    """Writes and reads through the kernel mount (``fuse``) or the handle's ``.fs`` (``none``)."""

    def __init__(self, transport: str):
        self.transport = transport

    def mount(self, vol: Volume, mount_path: Path, **kw: object) -> None:
        if self.transport == "fuse":  # exactly the seed's call: no transport argument
            vol.mount(mount_path=str(mount_path), **kw)
            assert os.path.ismount(mount_path)
        else:
            vol.mount(mount_path=str(mount_path), transport="none", **kw)

    def write(self, vol: Volume, mount_path: Path, rel: str, data: bytes) -> None:
        if self.transport == "fuse":
            target = mount_path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)
        else:
            vol.fs.makedirs(os.path.dirname(f"/{rel}"), exist_ok=True)
            vol.fs.pipe_file(f"/{rel}", data)

    def read_all(self, vol: Volume, mount_path: Path) -> dict[str, bytes]:
        if self.transport == "fuse":
            return {
                str(p.relative_to(mount_path)): p.read_bytes()
                for p in sorted(mount_path.rglob("*")) if p.is_file()
            }  # fmt: skip
        return {p.lstrip("/"): vol.fs.cat_file(p) for p in sorted(vol.fs.find("/"))}


@pytest.fixture(params=["none", pytest.param("fuse", marks=pytest.mark.fuse)])
def through(request: pytest.FixtureRequest) -> Through:
    return Through(request.param)


def test_the_seeds_legacy_flow(bucket: str, tmp_path: Path, through: Through) -> None:
    mnt = tmp_path / "mnt"
    # declare: no I/O; the first mount bootstraps the namespace
    vol = Volume.empty("legacy", bucket=bucket)
    assert type(vol) is Volume and not Path(bucket).exists()
    through.mount(vol, mnt / "a")
    through.write(vol, mnt / "a", "data/one.txt", b"one")
    through.write(vol, mnt / "a", "two.txt", b"two")
    # the deprecated commit, naming the mount by its path, from a handle rebuilt from JSON
    with action("legacy-task", run_name="r1"), pytest.warns(DeprecationWarning, match="deprecated"):
        v1 = Volume.model_validate_json(vol.model_dump_json()).commit(
            mount_path=str(mnt / "a"), message="first"
        )
    assert isinstance(v1, Volume) and v1.index is not None and v1.message == "first"
    assert not vol.mounted and not os.path.ismount(mnt / "a")
    assert v1.produced_by.name == "legacy-task" and v1.parent_produced_by is None
    # a committed Volume mounts read-only; writable is refused with a pointer to fork
    with pytest.raises(VolumeReadOnly, match="fork"):
        Volume.model_validate_json(v1.model_dump_json()).mount(read_only=False, transport="none")
    # fork (the legacy Volume form) -> a writable copy sharing every block
    legacy_v1 = Volume.model_validate_json(v1.model_dump_json())
    with action("forking-task"):
        v2 = legacy_v1.fork("legacy-fork")
    assert isinstance(v2, Volume) and type(v2) is RWVolume
    assert v2.parent_produced_by == v1.produced_by and v2.produced_by.name == "forking-task"
    through.mount(v2, mnt / "b")
    assert through.read_all(v2, mnt / "b") == {"data/one.txt": b"one", "two.txt": b"two"}
    through.write(v2, mnt / "b", "two.txt", b"TWO")
    through.write(v2, mnt / "b", "three.txt", b"three")
    # the seed's RWVolume.commit(message, mount_path): a keep-alive snapshot
    v3 = v2.commit("second", mount_path=str(mnt / "b"))
    assert type(v3) is ROVolume and v2.mounted
    through.write(v2, mnt / "b", "four.txt", b"four")
    with pytest.warns(DeprecationWarning):
        v4 = Volume.model_validate_json(v2.model_dump_json()).commit(
            mount_path=str(mnt / "b"), timeout=60, message="third"
        )
    assert not v2.mounted
    # read the result back, read-only, as a plain Volume from its JSON
    result = Volume.model_validate_json(v4.model_dump_json())
    through.mount(result, mnt / "c")
    try:
        assert through.read_all(result, mnt / "c") == {
            "data/one.txt": b"one", "two.txt": b"TWO", "three.txt": b"three", "four.txt": b"four",
        }  # fmt: skip
        if through.transport == "fuse":
            with pytest.raises(OSError) as info:
                (mnt / "c" / "five.txt").write_bytes(b"5")
            assert info.value.errno == errno.EROFS
    finally:
        result.unmount()
    # the source is untouched by everything the fork did
    with v1.mount(transport="none") as first:
        assert first.fs.cat_file("/two.txt") == b"two" and not first.fs.exists("/three.txt")
    # lineage: third -> second -> the fork point -> first
    chain = [(v.name, v.message) for v in walk(v4)]
    assert chain == [("legacy-fork", "second"), ("legacy-fork", None), ("legacy", "first")]
    fork_point = list(walk(v4))[1]
    assert fork_point.produced_by.name == "forking-task" and fork_point.index == v1.index


def test_the_legacy_commit_of_a_path_with_nothing_mounted(bucket: str, tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(VolumeNotMounted) as info:
        Volume.empty("legacy-none", bucket=bucket).commit(mount_path=str(tmp_path / "nothing"))
    assert str(tmp_path / "nothing") in str(info.value)
    assert not Path(bucket).exists()
