"""Commit and finalize while other processes write through the kernel mount.

A writer process creates files through the mount and logs each name after its close(2) returned.
Every name logged before a commit began must be in that commit's version, every name logged at
all must be in the finalized version, late writers get EROFS (or, once the mount is gone and its
mount point removed, ENOENT), and nothing is ever written into the bare mount-point directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from volume import Volume
from volume.mount import fuse as fuse_mod

pytestmark = pytest.mark.fuse

WRITER = textwrap.dedent(
    """
    import errno, hashlib, os, sys
    mnt, log = sys.argv[1], sys.argv[2]
    with open(log, "a") as out:
        i = 0
        while True:
            name = f"f{i:06d}"
            try:
                with open(os.path.join(mnt, name), "wb") as f:
                    f.write(hashlib.sha256(name.encode()).digest() * (1 + i % 64))
            except OSError as exc:
                out.write(f"ERR {errno.errorcode.get(exc.errno, exc.errno)}\\n")
                break
            out.write(name + "\\n")
            out.flush()
            i += 1
    """
)


def content(name: str) -> bytes:
    import hashlib

    return hashlib.sha256(name.encode()).digest() * (1 + int(name[1:]) % 64)


def logged(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("f")]


def wait_for(log: Path, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(logged(log)) < count:
        assert time.monotonic() < deadline, f"the writer logged fewer than {count} files"
        time.sleep(0.05)


def check_version(version, names: list[str]) -> set[str]:
    with version.mount(transport="none") as ro:
        present = {p.rsplit("/", 1)[1] for p in ro.fs.ls("/", detail=False)}
        missing = [n for n in names if n not in present]
        assert not missing, f"{len(missing)} acknowledged files missing, e.g. {missing[:5]}"
        for name in names[:: max(1, len(names) // 50)]:
            assert ro.fs.cat_file(f"/{name}") == content(name)
    return present


def test_commit_and_finalize_keep_every_acknowledged_close(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    rw = Volume.new("loaded", bucket=str(tmp_path / "bucket")).mount(mount_path=mnt)
    for w in ("a", "b"):
        (mnt / w).mkdir()
        (tmp_path / f"w{w}").touch()
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(mnt / sub), str(tmp_path / f"w{sub}")])
        for sub in ("a", "b")
    ]  # fmt: skip
    try:
        wait_for(tmp_path / "wa", 50)
        wait_for(tmp_path / "wb", 50)
        before = {w: logged(tmp_path / f"w{w}") for w in ("a", "b")}
        first = rw.commit("under load")
        with first.mount(transport="none") as ro:
            for w, names in before.items():
                present = {p.rsplit("/", 1)[1] for p in ro.fs.ls(f"/{w}", detail=False)}
                missing = [n for n in names if n not in present]
                assert not missing, f"commit lost acknowledged closes: {missing[:5]}"
                for n in names[-5:]:
                    assert ro.fs.cat_file(f"/{w}/{n}") == content(n)
        wait_for(tmp_path / "wa", len(before["a"]) + 50)
        final = rw.finalize("final", timeout=60)
        for w in writers:
            w.wait(timeout=60)
        with final.mount(transport="none") as ro:
            for w in ("a", "b"):
                names = logged(tmp_path / f"w{w}")
                present = {p.rsplit("/", 1)[1] for p in ro.fs.ls(f"/{w}", detail=False)}
                missing = [n for n in names if n not in present]
                assert not missing, f"finalize lost acknowledged closes: {missing[:5]}"
                tail = (tmp_path / f"w{w}").read_text().splitlines()[-1]
                assert tail in ("ERR EROFS", "ERR ENOENT"), tail  # never a silent success
        assert not os.path.ismount(mnt)
        assert not mnt.exists() or not any(mnt.iterdir())  # nothing in the bare directory
    finally:
        for w in writers:
            w.kill()
            w.wait()
        if rw.mounted:
            rw.unmount()


HOLDER = textwrap.dedent(
    """
    import errno, os, sys, time
    path = sys.argv[1]
    f = open(path, "r+b", buffering=0)
    print("open", flush=True)
    sys.stdin.readline()  # finalize has begun
    try:
        f.write(b"late")
        print("wrote", flush=True)
    except OSError as exc:
        print(errno.errorcode[exc.errno], flush=True)
    time.sleep(1.5)
    f.seek(0)
    print(f.read().decode(), flush=True)  # a frozen mount still serves reads
    f.close()
    """
)


def test_finalize_waits_for_a_busy_mount_read_only_then_unmounts(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    rw = Volume.new("busy", bucket=str(tmp_path / "bucket")).mount(mount_path=mnt)
    (mnt / "held.txt").write_text("kept")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(mnt / "held.txt")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "open"
        rw._mount.engine.freeze()  # what finalize does first; the holder then writes
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "EROFS"
        rw._mount.engine.thaw()  # finalize freezes again itself
        started = time.monotonic()
        version = rw.finalize("busy", timeout=30)
        waited = time.monotonic() - started
        assert holder.stdout.readline().strip() == "kept"
        assert holder.wait(timeout=30) == 0
        assert waited >= 0.5, "finalize did not wait for the busy mount's user"
        assert not os.path.ismount(mnt)
        with version.mount(transport="none") as ro:
            assert ro.fs.cat_file("/held.txt") == b"kept"
    finally:
        holder.kill()
        holder.wait()
        if rw.mounted:
            rw.unmount()


def _sit_in(directory: Path, before: str = "", then: str = "") -> subprocess.Popen:
    """A process whose working directory is ``directory`` (it keeps a mount busy): it says
    ``in``, waits for a line, runs ``before``, tries to create ``late`` (printing the errno when
    that fails), then runs ``then``."""
    script = (
        "import sys, os\nprint('in', flush=True)\nsys.stdin.readline()\n" + before + "\n"
        "try:\n open('late', 'w').write('x')\nexcept OSError as e:\n print(e.errno, flush=True)\n"
        + then
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=directory, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_gone(mnt: Path) -> None:
    """Wait until ``mnt`` is unmounted and its mount point removed (so nothing landed in the
    bare directory)."""
    deadline = time.monotonic() + 15
    while fuse_mod._mount_at(mnt) is not None or mnt.exists():
        assert time.monotonic() < deadline, f"{mnt} was never unmounted"
        time.sleep(0.1)


@contextlib.contextmanager
def _busy_mount(tmp_path: Path, **script: str) -> Iterator[tuple[Any, Path, subprocess.Popen]]:
    """``(rw, mount path, sitter)``: a writable kernel mount kept busy by a :func:`_sit_in`
    process (``script``: its ``before``/``then``) working in its directory ``d``; cleaned up
    however the test ends."""
    mnt = tmp_path / "mnt"
    rw = Volume.new("stuck", bucket=str(tmp_path / "bucket")).mount(mount_path=mnt)
    (mnt / "d").mkdir()
    sitter = _sit_in(mnt / "d", **script)
    try:
        assert sitter.stdout.readline().strip() == "in"
        yield rw, mnt, sitter
    finally:
        sitter.kill()
        sitter.wait()
        if rw.mounted:
            rw.unmount()
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)


def test_a_mount_busy_past_the_timeout_is_aborted_never_lazily_unmounted(tmp_path: Path) -> None:
    listing = "print(os.listdir('.'), flush=True)"
    with _busy_mount(tmp_path, before=listing) as (rw, mnt, sitter):
        rw.finalize("stuck", timeout=2)
        sitter.stdin.write("go\n")
        sitter.stdin.flush()
        out = sitter.stdout.read()
        sitter.wait(timeout=30)
        assert str(errno.ENOTCONN) in out or "ENOTCONN" in out or "Transport" in out, out
        _wait_gone(mnt)  # its user left: the dead mount is unmounted


def test_commit_and_finalize_honour_timeout_and_leave_the_mount_intact(
    tmp_path: Path, monkeypatch
) -> None:
    """A store that stalls block uploads: commit and finalize give up after ``timeout`` with
    VolumeCommitError, publish nothing, and the kernel mount stays writable; once the store
    answers again, finalize succeeds with everything."""
    import threading

    from volume import locations
    from volume.errors import VolumeCommitError
    from volume.testing.faults import WrappedObjectStore

    answer = threading.Event()
    answer.set()

    class Stalling(WrappedObjectStore):
        def put(self, key, data, *, if_absent=False):
            if "/chunks/" in key:
                answer.wait(120)
            super().put(key, data, if_absent=if_absent)

    real = locations.object_store
    monkeypatch.setattr(locations, "object_store", lambda volume: Stalling(real(volume)))
    mnt = tmp_path / "mnt"
    rw = Volume.new("stalled", bucket=str(tmp_path / "bucket")).mount(mount_path=mnt)
    try:
        (mnt / "before.bin").write_bytes(b"b" * 100_000)
        answer.clear()  # the store stops answering block uploads
        (mnt / "during.bin").write_bytes(b"d" * 100_000)
        started = time.monotonic()
        with pytest.raises(VolumeCommitError, match="nothing was published"):
            rw.commit("stalled", timeout=1)
        with pytest.raises(VolumeCommitError):
            rw.finalize("stalled", timeout=1)
        assert time.monotonic() - started < 30
        assert rw.mounted and os.path.ismount(mnt)
        (mnt / "after.txt").write_text("still writable")  # thawed, intact
        versions = tmp_path / "bucket" / "stalled" / "_volume" / "versions"
        assert not versions.exists() or not any(versions.iterdir())
        answer.set()
        version = rw.finalize("recovered", timeout=60)
    finally:
        answer.set()
        if rw.mounted:
            rw.unmount()
    with version.mount(transport="none") as ro:
        assert ro.fs.cat_file("/during.bin") == b"d" * 100_000
        assert ro.fs.cat_file("/after.txt") == b"still writable"


def test_without_root_a_busy_mount_stays_mounted_until_its_user_leaves(
    tmp_path: Path, monkeypatch
) -> None:
    """Only root may abort a FUSE connection: a non-root mount still busy at the timeout stays
    mounted and frozen (never detached lazily), and is unmounted as soon as its user leaves."""
    with _busy_mount(tmp_path, then="sys.stdin.readline()") as (rw, mnt, sitter):
        monkeypatch.setattr(fuse_mod.os, "geteuid", lambda: 1000)
        rw.finalize("stuck", timeout=1)
        assert fuse_mod._mount_at(mnt) is not None, "a busy mount was detached"
        sitter.stdin.write("go\n")
        sitter.stdin.flush()
        failed = sitter.stdout.readline().strip()
        assert failed and int(failed) in (errno.EROFS, errno.EIO, errno.ENOTCONN), failed
        sitter.stdin.write("bye\n")
        sitter.stdin.flush()
        sitter.wait(timeout=30)
        _wait_gone(mnt)  # its user left: the mount is unmounted in the background
