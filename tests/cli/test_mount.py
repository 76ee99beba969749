"""`volume mount` in the foreground: Ctrl-C (SIGINT) or SIGTERM publishes, `volume commit PATH`
commits a live mount, a busy path is refused with nothing changed. Needs FUSE."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli.conftest import VOLUME, one_line_error, volume

pytestmark = pytest.mark.fuse


@pytest.fixture(autouse=True)
def _needs_fuse() -> None:
    from volume.mount.fuse import fuse_usable

    usable, why = fuse_usable()
    if not usable:
        if os.environ.get("CI") == "true":
            pytest.fail(f"FUSE is not usable: {why} (CI=true: a missing tier fails)")
        pytest.skip(f"FUSE is not usable: {why}")


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*VOLUME, "mount", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_mounted(process: subprocess.Popen, path: Path) -> None:
    deadline = time.monotonic() + 60
    while not os.path.ismount(path):
        if process.poll() is not None:
            raise AssertionError(f"volume mount exited: {process.communicate()}")
        assert time.monotonic() < deadline, "the mount did not appear"
        time.sleep(0.1)


def _stop(process: subprocess.Popen, sig: int) -> tuple[str, str]:
    process.send_signal(sig)
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return out, err


def _claims(bucket: Path) -> list[str]:
    return sorted(p.name for p in bucket.glob("clivol/_volume/domains/*"))


def test_ctrl_c_commits_and_a_busy_path_changes_nothing(tmp_path: Path, bucket: Path,
                                                        published: tuple[str, str]):  # fmt: skip
    _first, second = published
    mnt = tmp_path / "mnt"
    process = _start(second, str(mnt), "-m", "written through the kernel")
    try:
        _wait_mounted(process, mnt)
        assert (mnt / "docs" / "README.txt").read_bytes() == b"hello volume\n"
        (mnt / "new.txt").write_bytes(b"through FUSE\n")
        live = volume("commit", str(mnt), "-m", "live", "--json")
        assert live.code == 0, live.err
        assert volume("cat", live.json()["locator"], "/new.txt").out == "through FUSE\n"
        (mnt / "later.txt").write_bytes(b"after the live commit\n")

        claims, versions = _claims(bucket), sorted(bucket.glob("clivol/_volume/versions/*"))
        busy = volume("mount", second, str(mnt), "--fork", "busy-fork")
        assert "already a mount point" in one_line_error(busy)
        assert _claims(bucket) == claims  # no domain claimed, no fork published
        assert sorted(bucket.glob("clivol/_volume/versions/*")) == versions
        assert os.path.ismount(mnt)
    finally:
        out, err = _stop(process, signal.SIGINT)
    assert process.returncode == 0, err
    assert not os.path.ismount(mnt)
    locator = out.strip().split(": ", 1)[1]
    assert out.startswith("committed clivol: ")
    assert volume("cat", locator, "/later.txt").out == "after the live commit\n"
    log = volume("log", locator, "--json").json()
    assert [v["message"] for v in log[:3]] == ["written through the kernel", "live", "second"]
    assert "commit" in volume("commit", str(mnt)).err  # nothing serves the path any more


def test_sigterm_unmounts_a_read_only_mount(tmp_path: Path, published: tuple[str, str]):
    _first, second = published
    mnt = tmp_path / "ro"
    process = _start(second, str(mnt), "--read-only", "--json")
    try:
        _wait_mounted(process, mnt)
        with pytest.raises(OSError):
            (mnt / "x.txt").write_bytes(b"refused")
        assert "read-only" in volume("commit", str(mnt)).err
    finally:
        out, _err = _stop(process, signal.SIGTERM)
    assert process.returncode == 0 and not os.path.ismount(mnt)
    assert '"unmounted"' in out


def test_no_commit_discards_the_changes(tmp_path: Path, bucket: Path, published: tuple[str, str]):
    _first, second = published
    versions = sorted(bucket.glob("clivol/_volume/versions/*"))
    mnt = tmp_path / "scratch"
    process = _start(second, str(mnt), "--no-commit")
    try:
        _wait_mounted(process, mnt)
        (mnt / "scratch.txt").write_bytes(b"thrown away")
        live = bucket.glob("clivol/_volume/live/*")
        assert len(list(live)) == 1  # the session is marked live for gc while it runs
    finally:
        out, err = _stop(process, signal.SIGINT)
    assert process.returncode == 0, err
    assert out.startswith("unmounted ") and not os.path.ismount(mnt)
    assert sorted(bucket.glob("clivol/_volume/versions/*")) == versions
    assert list(bucket.glob("clivol/_volume/live/*")) == []


@pytest.mark.parametrize("how", ["--no-commit", "commit"])
def test_a_signal_as_the_mount_appears_finishes_it(tmp_path: Path, bucket: Path,
                                                   published: tuple[str, str], how: str):  # fmt: skip
    """Programs may write as soon as the mount point appears, before the mount has started in
    full: Ctrl-C then must finish the mount as usual, not abort it (it once did, status 2)."""
    _first, second = published
    versions = sorted(bucket.glob("clivol/_volume/versions/*"))
    mnt = tmp_path / "early"
    process = _start(second, str(mnt), *(["--no-commit"] if how == "--no-commit" else []))
    deadline = time.monotonic() + 60
    while not os.path.ismount(mnt) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    out, err = _stop(process, signal.SIGINT)
    assert process.returncode == 0, err
    assert not os.path.ismount(mnt) and "aborted" not in err
    published_now = sorted(bucket.glob("clivol/_volume/versions/*"))
    if how == "--no-commit":
        assert out.startswith("unmounted ") and published_now == versions
    else:
        assert out.startswith("committed clivol: ") and len(published_now) == len(versions) + 1


def test_no_xattrs_serves_no_extended_attributes(tmp_path: Path, published: tuple[str, str]):
    _first, second = published
    mnt = tmp_path / "plain"
    process = _start(second, str(mnt), "--no-xattrs", "--no-commit")
    try:
        _wait_mounted(process, mnt)
        (mnt / "f.txt").write_bytes(b"written")
        assert (mnt / "f.txt").read_bytes() == b"written"
        for call in (lambda: os.setxattr(mnt / "f.txt", "user.a", b"1"),
                     lambda: os.getxattr(mnt / "docs" / "README.txt", "user.a")):  # fmt: skip
            with pytest.raises(OSError) as refused:
                call()
            assert refused.value.errno == errno.EOPNOTSUPP
    finally:
        _out, err = _stop(process, signal.SIGINT)
    assert process.returncode == 0, err


@pytest.mark.parametrize("gap", [0.0, 0.002, 0.02])
def test_a_second_signal_while_the_mount_starts_gives_up_cleanly(
    tmp_path: Path, bucket: Path, published: tuple[str, str], gap: float
):
    """Two Ctrl-Cs as the mount appears: the first means "finish", the second, if the mount is
    still starting, gives up on it. Either way the command ends, nothing stays mounted (not even
    a dead mount), no session is left marked live, and at most one version is published."""
    _first, second = published
    versions = sorted(bucket.glob("clivol/_volume/versions/*"))
    mnt = tmp_path / "twice"
    process = _start(second, str(mnt))
    deadline = time.monotonic() + 60
    while not os.path.ismount(mnt) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    process.send_signal(signal.SIGINT)
    time.sleep(gap)
    out, err = _stop(process, signal.SIGINT)
    assert "Traceback" not in err
    if process.returncode == 0:
        assert out.startswith("committed clivol: "), (out, err)
    else:
        assert process.returncode == 2 and "aborted" in err, (process.returncode, out, err)
    assert not os.path.ismount(mnt)
    assert not mnt.exists() or os.listdir(mnt) == []  # a dead mount would fail with ENOTCONN
    assert list(bucket.glob("clivol/_volume/live/*")) == []
    published_now = sorted(bucket.glob("clivol/_volume/versions/*"))
    assert len(published_now) == len(versions) + (process.returncode == 0)
