"""A kernel (FUSE) mount of a volume on S3 (moto): real system calls write a file, a hard link
and a symlink; the committed version mounts read-only through FUSE and reads back the same."""

from __future__ import annotations

import os
import random

import pytest

from volume import Volume
from volume.mount.fuse import fuse_usable

from . import servers
from .conftest import S3_BUCKET

MiB = 1 << 20


@pytest.mark.fuse
def test_fuse_mount_on_s3(s3_env, unique_prefix, tmp_path) -> None:
    usable, why = fuse_usable()
    servers.require(usable, f"FUSE is not usable here: {why}")
    data = random.Random(12).randbytes(9 * MiB + 3)
    rw_path = tmp_path / "rw"
    rw = Volume.new("fuse-s3", bucket=f"s3://{S3_BUCKET}/{unique_prefix}").mount(
        mount_path=rw_path, meta_dir=tmp_path / "meta", cache_dir=tmp_path / "cache",
        transport="fuse",
    )  # fmt: skip
    try:
        (rw_path / "dir").mkdir()
        (rw_path / "dir" / "data.bin").write_bytes(data)
        os.link(rw_path / "dir" / "data.bin", rw_path / "hard.bin")
        os.symlink("dir/data.bin", rw_path / "soft")
    finally:
        version = rw.finalize("through the kernel")
    ro_path = tmp_path / "ro"
    version.mount(mount_path=ro_path, meta_dir=tmp_path / "ro-meta",
                  cache_dir=tmp_path / "ro-cache", transport="fuse")  # fmt: skip
    try:
        assert (ro_path / "dir" / "data.bin").read_bytes() == data
        assert (ro_path / "hard.bin").read_bytes() == data
        assert os.stat(ro_path / "hard.bin").st_nlink == 2
        assert os.readlink(ro_path / "soft") == "dir/data.bin"
        with pytest.raises(OSError):
            (ro_path / "new").write_bytes(b"x")  # read-only
    finally:
        version.unmount()
