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


@pytest.mark.parametrize("step", ["readahead", "tracking"])
def test_an_interrupt_in_the_last_steps_of_a_mount_leaves_nothing_mounted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """Ctrl-C (KeyboardInterrupt) once the kernel lists the new mount but before the handle has
    it (`volume mount`'s second Ctrl-C can land there): the mount is undone, no session stays
    marked live, and the next mount works."""
    from volume import workcopy
    from volume.mount.fuse import FuseMount

    def interrupt(*_args: object) -> None:
        raise KeyboardInterrupt

    if step == "readahead":
        monkeypatch.setattr(FuseMount, "_raise_readahead", interrupt)
    else:
        monkeypatch.setattr(workcopy, "track_mount", interrupt)
    mnt, bucket = tmp_path / "mnt", tmp_path / "bucket"
    vol = Volume.new("interrupted", bucket=str(bucket))
    with pytest.raises(KeyboardInterrupt):
        vol.mount(mount_path=mnt, transport="fuse")
    assert not os.path.ismount(mnt) and not vol.mounted
    assert list(bucket.glob("interrupted/_volume/live/*")) == []
    monkeypatch.undo()
    vol.mount(mount_path=mnt, transport="fuse")
    (mnt / "after").write_text("mounted again\n")
    done = vol.finalize("after the interrupt")
    assert not os.path.ismount(mnt)
    with done.mount(transport="none") as ro:
        assert ro.fs.cat_file("/after") == b"mounted again\n"


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


def test_killing_the_mounting_process_leaves_committed_versions_intact(tmp_path: Path) -> None:
    import json
    import signal

    mnt, doc = tmp_path / "mnt", tmp_path / "version.json"
    script = textwrap.dedent(
        f"""
        import os, time
        from volume import Volume
        rw = Volume.new("killed", bucket={str(tmp_path / "bucket")!r}).mount(mount_path={str(mnt)!r})
        open({str(mnt / "kept.txt")!r}, "w").write("committed")
        open({str(doc)!r}, "w").write(rw.commit("before the kill").model_dump_json())
        with open({str(mnt / "lost.bin")!r}, "wb") as f:
            f.write(os.urandom(8 << 20))
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", script], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    version = Volume.parse(json.loads(doc.read_text())).as_ro()
    with version.mount(mount_path=tmp_path / "ro") as ro:
        assert sorted(os.listdir(tmp_path / "ro")) == ["kept.txt"]
        assert (tmp_path / "ro" / "kept.txt").read_text() == "committed"
