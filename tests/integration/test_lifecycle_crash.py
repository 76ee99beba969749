"""Working copies that outlive their process: SIGKILL, SIGTERM/SIGINT, exit without finalizing,
temporary meta dirs, and first mounts that fail half way.

The crash test follows the one the JuiceFS project runs in CI: a process writes 4 KiB files with
fsync each through the kernel mount and appends each name to a manifest once its fsync returned;
the mounting process is killed with SIGKILL at a random point; the same ``meta_dir`` is mounted
again and every file in the manifest must be there with its exact content.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from volume import Volume, workcopy
from volume.errors import VolumeBucketNotEmpty

# 10,000 files in the default run (the JuiceFS crash test's count: about 35 s on a quiet 2-core
# machine); VOLUME_CRASH_FILES sets another count. 100,000 under -m slow.
CRASH_FILES = int(os.environ.get("VOLUME_CRASH_FILES", "10000"))

MOUNTER = textwrap.dedent(
    """
    import sys, time
    from volume import Volume
    bucket, mnt, meta = sys.argv[1:4]
    rw = Volume.new("crashed", bucket=bucket).mount(mount_path=mnt, meta_dir=meta)
    print("mounted", flush=True)
    time.sleep(3600)
    """
)

FSYNC_WRITER = textwrap.dedent(
    """
    import hashlib, os, sys
    mnt, manifest, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(manifest, "a") as out:
        for i in range(count):
            name = f"d{i % 16:02d}/f{i:06d}"
            data = (hashlib.sha256(name.encode()).digest() * 128)[:4096]
            try:
                os.makedirs(os.path.join(mnt, name.split("/")[0]), exist_ok=True)
                fd = os.open(os.path.join(mnt, name), os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                break
            out.write(name + "\\n")
            out.flush()
    """
)


def crash_content(name: str) -> bytes:
    return (hashlib.sha256(name.encode()).digest() * 128)[:4096]


def run_crash(tmp_path: Path, files: int) -> None:
    bucket, mnt, meta = tmp_path / "bucket", tmp_path / "mnt", tmp_path / "meta"
    manifest = tmp_path / "manifest"
    manifest.touch()
    started = time.monotonic()
    mounter = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", MOUNTER, str(bucket), str(mnt), str(meta)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    writer = None
    try:
        assert mounter.stdout.readline().strip() == "mounted"
        writer = subprocess.Popen(
            [sys.executable, "-c", FSYNC_WRITER, str(mnt), str(manifest), str(files)]
        )
        kill_at = random.randint(files // 2, files)  # a random point of the run
        done, progress = 0, time.monotonic()
        while writer.poll() is None and done < kill_at:
            now = time.monotonic()
            with manifest.open("rb") as f:
                count = f.read().count(b"\n")
            if count > done:
                done, progress = count, now
            assert now - progress < 120, f"the writer stalled after {done} files"
            time.sleep(0.05)
        mounter.send_signal(signal.SIGKILL)
        mounter.wait(timeout=30)
        writer.wait(timeout=60)
    finally:
        for p in (mounter, writer):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
    names = manifest.read_text().splitlines()
    assert len(names) >= files // 2
    # the block being written at the kill was an unnamed file: nothing of it is left
    assert [p.name for p in bucket.rglob(".jfs.*")] == []
    written = time.monotonic()
    rw = Volume.new("crashed", bucket=str(bucket)).mount(meta_dir=meta, transport="none")
    try:
        present = {
            f"{d}/{n}" for d in rw.fs.ls("/", detail=False)
            for n in [p.rsplit("/", 1)[1] for p in rw.fs.ls(d, detail=False)]
        }  # fmt: skip
        present = {p.lstrip("/") for p in present}
        missing = [n for n in names if n not in present]
        assert not missing, f"{len(missing)} fsync'd files lost, e.g. {missing[:5]}"
        bad = [n for n in names if rw.fs.cat_file(f"/{n}") != crash_content(n)]
        assert not bad, f"{len(bad)} fsync'd files with wrong content, e.g. {bad[:5]}"
        version = rw.finalize("after the crash")
    finally:
        if rw.mounted:
            rw.unmount()
    with version.mount(transport="none") as ro:
        assert ro.fs.cat_file(f"/{names[-1]}") == crash_content(names[-1])
    print(
        f"\ncrash run: killed after {len(names)} of {files} fsync'd files (writing "
        f"{written - started:.0f} s); all present and exact after the remount "
        f"(checked in {time.monotonic() - written:.0f} s)"
    )


@pytest.mark.fuse
def test_sigkill_then_remount_keeps_every_fsynced_file(tmp_path: Path) -> None:
    run_crash(tmp_path, CRASH_FILES)


@pytest.mark.fuse
@pytest.mark.slow
@pytest.mark.timeout(0)
def test_sigkill_then_remount_keeps_every_fsynced_file_long(tmp_path: Path) -> None:
    run_crash(tmp_path, 100_000)


SIGNALLED = textwrap.dedent(
    """
    import sys, time
    from volume import Volume
    bucket, mnt, meta = sys.argv[1:4]
    with Volume.new("signalled", bucket=bucket).mount(mount_path=mnt, meta_dir=meta) as rw:
        with open(mnt + "/kept.txt", "w") as f:
            f.write("written before the signal")
        print("ready", flush=True)
        while True:  # short sleeps: CPython runs a handler only between bytecodes, so a signal
            time.sleep(0.1)  # landing just before a long sleep began would wait for its end
    """
)


@pytest.mark.fuse
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_unmount_cleanly_and_publish_nothing(tmp_path: Path, sig) -> None:
    bucket, mnt, meta = tmp_path / "bucket", tmp_path / "mnt", tmp_path / "meta"
    child = subprocess.Popen(
        [sys.executable, "-c", SIGNALLED, str(bucket), str(mnt), str(meta)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(sig)
        try:
            _, err = child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            _, err = child.communicate()
            pytest.fail(f"the mount did not exit within 60 s of {sig!r}; its stderr: {err}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    assert signal.Signals(sig).name in err and "unmounting" in err, err
    assert not os.path.ismount(mnt)
    assert not list((bucket / "signalled").glob("_volume/versions/*"))  # nothing published
    rw = Volume.new("signalled", bucket=str(bucket)).mount(meta_dir=meta, transport="none")
    try:
        assert rw.fs.cat_file("/kept.txt") == b"written before the signal"  # resumed
    finally:
        with pytest.warns(RuntimeWarning, match="abandons"):  # resumed work is unpublished
            rw.unmount()


def test_no_temporary_meta_dir_outlives_the_process(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = textwrap.dedent(
        f"""
        from volume import Volume
        rw = Volume.new("temps", bucket={str(tmp_path / "bucket")!r}).mount(transport="none")
        rw.fs.pipe_file("/a.txt", b"a")
        v1 = rw.commit("one")
        child = v1.fork("temps-child")  # forked, never mounted
        other = v1.fork("temps-other").mount(transport="none")  # mounted, never unmounted
        other.fs.pipe_file("/b.txt", b"b")
        rw.fs.pipe_file("/c.txt", b"c")  # unpublished when the process exits
        del child
        import gc; gc.collect()
        print("done", flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    assert "done" in out.stdout, out.stderr
    assert "changes not committed" in out.stderr and "LOST" in out.stderr  # loudly
    assert list(tmp.iterdir()) == []


def test_the_suite_leaves_no_temporary_meta_dir(tmp_path: Path) -> None:
    """Handles dropped without unmounting (as tests do) lose their temporary dirs at exit."""
    before = set(workcopy._temp_dirs)
    rw = Volume.new("dropped", bucket=str(tmp_path / "bucket")).mount(transport="none")
    path = rw._mount.meta_dir.path
    assert path in workcopy._temp_dirs - before
    rw.unmount()
    assert not path.exists() and path not in workcopy._temp_dirs


def test_first_mount_failing_half_way_is_resumed(tmp_path: Path, monkeypatch) -> None:
    from volume import mounts

    bucket = str(tmp_path / "bucket")
    real_claim = mounts.claim_domain

    def failing(*args, **kwargs):
        raise OSError("the store went away")

    monkeypatch.setattr(mounts, "claim_domain", failing)
    vol = Volume.new("halfway", bucket=bucket)
    with pytest.raises(OSError, match="went away"):
        vol.mount(transport="none")
    uuid = (tmp_path / "bucket" / "halfway" / "juicefs_uuid").read_text()
    monkeypatch.setattr(mounts, "claim_domain", real_claim)
    rw = vol.mount(transport="none")  # resumed, not "bucket not empty"
    try:
        assert rw._mount.engine.fmt.UUID == uuid
        rw.fs.pipe_file("/x", b"x")
    finally:
        version = rw.finalize("resumed")
    assert (tmp_path / "bucket" / "halfway" / "juicefs_uuid").read_text() == uuid
    assert version.index is not None
    # a different volume of the same name is still refused
    with pytest.raises(VolumeBucketNotEmpty):
        Volume.new("halfway", bucket=bucket).mount(transport="none")


def test_juicefs_uuid_is_claimed_create_only(tmp_path: Path) -> None:
    from volume.engine import new_format
    from volume_local import LocalObjectStore

    objects = LocalObjectStore.from_uri(str(tmp_path / "bucket"))
    a = new_format("raced", storage="file", bucket=str(tmp_path / "bucket"))
    b = new_format("raced", storage="file", bucket=str(tmp_path / "bucket"))
    assert workcopy.claim_name(objects, a).UUID == a.UUID
    with pytest.raises(VolumeBucketNotEmpty):
        workcopy.claim_name(objects, b)
    assert objects.get("raced/juicefs_uuid").decode() == a.UUID


LOSING = textwrap.dedent(
    """
    import sys, time
    from volume import Volume, locations
    from volume.testing.faults import WrappedObjectStore

    class Down(WrappedObjectStore):  # block uploads fail: closes publish, blocks stay buffered
        def put(self, key, data, *, if_absent=False):
            if "/chunks/" in key:
                raise OSError(5, "the store is down")
            super().put(key, data, if_absent=if_absent)

    real = locations.object_store
    locations.object_store = lambda volume: Down(real(volume))
    bucket, meta = sys.argv[1:3]
    rw = Volume.new("unsynced", bucket=bucket).mount(meta_dir=meta, transport="none")
    rw.fs.pipe_file("/lost.bin", b"x" * 300_000)
    print("ready", flush=True)
    time.sleep(3600)
    """
)


def test_unsynced_data_whose_blocks_died_with_the_process_reads_as_zeros(tmp_path: Path) -> None:
    bucket, meta = tmp_path / "bucket", tmp_path / "meta"
    child = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", LOSING, str(bucket), str(meta)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    from volume.engine.check import check_metadata

    rw = Volume.new("unsynced", bucket=str(bucket)).mount(meta_dir=meta, transport="none")
    try:
        assert rw.fs.cat_file("/lost.bin") == bytes(300_000)  # a hole, not EIO
        assert check_metadata(rw._mount.meta) == []
        version = rw.finalize("after losing unsynced data")
    finally:
        if rw.mounted:
            rw.unmount()
    with version.mount(transport="none") as ro:
        assert ro.fs.cat_file("/lost.bin") == bytes(300_000)  # the version is readable


def test_a_killed_process_temporary_meta_dir_is_swept_by_the_next(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    victim = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from volume import Volume
            rw = Volume.new("victim", bucket={str(tmp_path / "bucket")!r}).mount(transport="none")
            print("mounted", flush=True)
            time.sleep(3600)
        """)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert victim.stdout.readline().strip() == "mounted"
        assert len(list(tmp.glob("volume-victim-*"))) == 1
        # a live owner's directory is never taken
        again = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                from volume import Volume
                Volume.new("other", bucket={str(tmp_path / "bucket")!r}).mount(
                    transport="none").unmount()
            """)],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert len(list(tmp.glob("volume-victim-*"))) == 1
    finally:
        victim.kill()
        victim.wait()
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            from volume import Volume
            Volume.new("next", bucket={str(tmp_path / "bucket")!r}).mount(
                transport="none").unmount()
        """)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert list(tmp.iterdir()) == []  # the killed process's dir went with the next mount
