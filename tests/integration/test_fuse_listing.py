"""Directory listings through the kernel mount: read in pages, with attributes the kernel uses
(no lookup per name), stable while the directory changes; and xattrs on read-only mounts."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from volume import Volume
from volume.errors import VolumeUsageError

from .test_fuse_one_view import rw  # noqa: F401  (the fixture: a writable kernel mount)

pytestmark = pytest.mark.fuse

ENTRIES = 1500  # several kernel requests and several engine pages


def _counting_lookups(handle) -> list[int]:
    """Count the engine lookups the kernel mount makes from now on."""
    engine = handle._mount.kernel.operations.engine
    calls = [0]
    lookup = engine.lookup

    def counted(*args, **kwargs):
        calls[0] += 1
        return lookup(*args, **kwargs)

    engine.lookup = counted
    return calls


def test_a_long_listing_carries_attributes_the_kernel_uses(rw) -> None:
    handle, mnt = rw
    fs = handle._mount.pathfs
    fs.mkdir("/d")
    for i in range(ENTRIES):
        fs.write_bytes(f"/d/f{i:05d}", b"x" * (i % 7))
    fs.mkdir("/d/sub")
    lookups = _counting_lookups(handle)
    listed = {e.name: e.stat(follow_symlinks=False) for e in os.scandir(mnt / "d")}
    assert (mnt / "d" / "f00006").read_bytes() == b"x" * 6  # a listed name opens directly
    kernel_lookups = lookups[0]
    assert kernel_lookups < 10, f"{kernel_lookups} lookups after a listing with attributes"
    assert sorted(listed) == [f"f{i:05d}" for i in range(ENTRIES)] + ["sub"]
    for name, st in listed.items():
        inner = fs.lstat(f"/d/{name}")
        assert (st.st_ino, st.st_mode, st.st_nlink, st.st_size, st.st_mtime_ns) == (
            inner.st_ino, inner.st_mode, inner.st_nlink, inner.st_size, inner.st_mtime_ns
        )  # fmt: skip
        assert name == "sub" or st.st_size == int(name[1:]) % 7


def test_a_listing_that_runs_while_the_directory_changes(rw) -> None:
    handle, mnt = rw
    (mnt / "d").mkdir()
    for i in range(ENTRIES):
        (mnt / "d" / f"f{i:05d}").write_bytes(b"")
    seen: list[str] = []
    with os.scandir(mnt / "d") as it:
        for entry in it:
            seen.append(entry.name)
            if len(seen) == 300:
                # created before and after the position; removed ahead of it
                for i in range(0, ENTRIES, 10):
                    (mnt / "d" / f"g{i:05d}").write_bytes(b"")
                    (mnt / "d" / f"a{i:05d}").write_bytes(b"")
                for i in range(1001, ENTRIES, 2):
                    (mnt / "d" / f"f{i:05d}").unlink()
    assert len(seen) == len(set(seen)), "a name was listed twice"
    survivors = {f"f{i:05d}" for i in range(ENTRIES) if i <= 1000 or i % 2 == 0}
    assert survivors <= set(seen)  # every entry that existed throughout
    assert not {f"a{i:05d}" for i in range(0, ENTRIES, 10)} & set(seen)  # behind the position
    assert sorted(os.listdir(mnt / "d")) == sorted(
        survivors | {f"{c}{i:05d}" for c in "ag" for i in range(0, ENTRIES, 10)}
    )


def test_a_directory_removed_while_listed_ends_the_listing(rw) -> None:
    handle, mnt = rw
    (mnt / "d").mkdir()
    for i in range(600):
        (mnt / "d" / f"f{i:04d}").write_bytes(b"")
    fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(fd) as it:
            first = next(it).name
            for i in range(600):
                handle._mount.pathfs.unlink(f"/d/f{i:04d}")
            handle._mount.pathfs.rmdir("/d")
            rest = [e.name for e in it]
        assert first.startswith("f") and len(rest) < 600
    finally:
        os.close(fd)


@pytest.mark.parametrize("with_xattr", [False, True])
def test_xattrs_of_a_read_only_mount(tmp_path: Path, with_xattr: bool) -> None:
    rw = Volume.new("ro-xattrs", bucket=str(tmp_path / "bucket")).mount(transport="none")
    rw._mount.pathfs.write_bytes("/f", b"data")
    if with_xattr:
        rw._mount.pathfs.setxattr("/f", "user.k", b"v")
    version = rw.commit("one file")
    rw.unmount()
    ro = version.mount(mount_path=tmp_path / "mnt")
    try:
        f = tmp_path / "mnt" / "f"
        assert f.read_bytes() == b"data"
        with pytest.raises(OSError) as absent:
            os.getxattr(f, "user.other")
        if with_xattr:
            assert os.getxattr(f, "user.k") == b"v"
            assert absent.value.errno == errno.ENODATA
        else:
            # no xattr anywhere in the version: the kernel is told the mount has no xattrs
            assert absent.value.errno == errno.EOPNOTSUPP
            assert sorted(os.listdir(tmp_path / "mnt")) == ["f"]
    finally:
        ro.unmount()


def test_a_mount_without_xattrs_serves_none_and_keeps_the_volumes(tmp_path: Path) -> None:
    """``xattrs=False``: read-write and read-only mounts answer every xattr call as not
    supported (the kernel stops asking), files work as before, and the volume's xattrs are
    kept: the in-process file system and a later mount with xattrs see them."""
    rw = Volume.new("no-xattrs", bucket=str(tmp_path / "bucket"))
    rw.mount(mount_path=tmp_path / "rw", xattrs=False)
    try:
        rw._mount.pathfs.write_bytes("/kept", b"k")
        rw._mount.pathfs.setxattr("/kept", "user.k", b"v")  # in-process: still served
        f = tmp_path / "rw" / "f"
        f.write_bytes(b"data")  # a first write asks for security.capability: refused, not failed
        with open(f, "ab") as out:
            out.write(b" more")
        assert f.read_bytes() == b"data more"
        for call in (
            lambda: os.getxattr(f, "user.a"),
            lambda: os.getxattr(tmp_path / "rw" / "kept", "user.k"),
            lambda: os.setxattr(f, "user.a", b"1"),
            lambda: os.listxattr(f),
            lambda: os.removexattr(f, "user.a"),
        ):
            with pytest.raises(OSError) as refused:
                call()
            assert refused.value.errno == errno.EOPNOTSUPP
        assert sorted(os.listdir(tmp_path / "rw")) == ["f", "kept"]
        version = rw.commit("with one xattr")
    finally:
        rw.unmount()
    ro = version.mount(mount_path=tmp_path / "ro", xattrs=False)
    try:
        with pytest.raises(OSError) as refused:
            os.getxattr(tmp_path / "ro" / "kept", "user.k")
        assert refused.value.errno == errno.EOPNOTSUPP
        assert (tmp_path / "ro" / "f").read_bytes() == b"data more"
        assert ro._mount.pathfs.getxattr("/kept", "user.k") == b"v"
    finally:
        ro.unmount()
    served = version.mount(mount_path=tmp_path / "ro")  # the default serves them
    try:
        assert os.getxattr(tmp_path / "ro" / "kept", "user.k") == b"v"
    finally:
        served.unmount()


@pytest.mark.parametrize("value", ["no", 0, None])
def test_xattrs_must_be_a_bool(tmp_path: Path, value: object) -> None:
    rw = Volume.new("flag", bucket=str(tmp_path / "bucket"))
    with pytest.raises(VolumeUsageError, match="xattrs must be True or False"):
        rw.mount(mount_path=tmp_path / "mnt", xattrs=value)  # type: ignore[arg-type]
    assert not rw.mounted and not os.path.ismount(tmp_path / "mnt")
