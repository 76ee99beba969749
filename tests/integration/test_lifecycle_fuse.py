"""The seed API with kernel mounts: transport "fuse" and "auto", mount paths, unmounting."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from volume import Volume
from volume.errors import VolumeMountError

pytestmark = pytest.mark.fuse


def test_rw_kernel_mount_commit_finalize_and_ro(tmp_path: Path) -> None:
    mnt, ro_mnt = tmp_path / "rw", tmp_path / "ro"
    rw = Volume.new("kernel", bucket=str(tmp_path / "bucket")).mount(mount_path=mnt)
    assert rw._mount.transport == "fuse" and os.path.ismount(mnt)
    (mnt / "dir").mkdir()
    (mnt / "dir" / "f.txt").write_text("through the kernel\n")
    first = rw.commit("first")
    assert os.path.ismount(mnt)  # commit keeps the mount
    (mnt / "dir" / "f.txt").write_text("changed\n")
    (mnt / "big").write_bytes(os.urandom(6 << 20))
    second = rw.finalize("second")
    assert not os.path.ismount(mnt)

    with first.mount(mount_path=ro_mnt):
        assert (ro_mnt / "dir" / "f.txt").read_text() == "through the kernel\n"
        assert sorted(os.listdir(ro_mnt)) == ["dir"]
        with pytest.raises(OSError) as err:
            (ro_mnt / "new").write_text("x")
        assert err.value.errno == errno.EROFS
    assert not os.path.ismount(ro_mnt)
    with second.mount(mount_path=ro_mnt) as ro:
        assert (ro_mnt / "dir" / "f.txt").read_text() == "changed\n"
        assert ro.fs.cat_file("/dir/f.txt") == b"changed\n"  # .fs works beside the mount


def test_auto_picks_fuse_and_the_default_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    rw = Volume.new("auto-path", bucket=str(tmp_path / "bucket")).mount()
    try:
        assert rw._mount.transport == "fuse"
        assert rw._mount.mount_path == tmp_path / "home" / "volumes" / "auto-path"
        assert os.path.ismount(rw._mount.mount_path)
    finally:
        rw.finalize()


def test_mount_path_that_is_a_file_is_refused_with_nothing_left(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("not a directory")
    vol = Volume.new("badpath", bucket=str(tmp_path / "bucket"))
    with pytest.raises(VolumeMountError, match="not a directory"):
        vol.mount(mount_path=target, transport="fuse")
    assert not vol.mounted
    assert not (tmp_path / "bucket" / "badpath").exists()  # nothing formatted, nothing claimed
    # the failed attempt released its meta dir and object store: a later mount works
    vol.mount(mount_path=tmp_path / "ok", transport="fuse")
    vol.unmount()


def test_interpreter_exit_unmounts(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    script = textwrap.dedent(
        f"""
        from volume import Volume
        rw = Volume.new("atexit", bucket={str(tmp_path / "bucket")!r}).mount(mount_path={str(mnt)!r})
        open({str(mnt / "x")!r}, "w").write("x")
        print("mounted", flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert "mounted" in out.stdout, out.stderr
    assert not os.path.ismount(mnt)
