"""The FUSE transport through the kernel: lifecycle, errors, and POSIX calls on the mount."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from volume.bench import run_bench
from volume.engine import Engine
from volume.errors import VolumeMountError, VolumeMountTimeout
from volume.mount import fuse as fuse_mod
from volume.mount.fuse import FuseMount, fuse_usable
from volume.testing.fsmachine import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2

from .conftest import MountedVolume, write_file

pytestmark = pytest.mark.fuse

NOBODY = 65534


def is_mounted(path: Path) -> bool:
    return fuse_mod._mount_at(path) is not None


def errno_of(call) -> str:
    with pytest.raises(OSError) as info:
        call()
    return errno.errorcode[info.value.errno]


# ---------------------------------------------------------------------------- lifecycle


def test_mount_answers_then_unmounts_idempotently(volume: MountedVolume):
    path = volume.start()
    mount = volume.mount
    assert os.path.ismount(path) and mount.mounted
    assert os.statvfs(path).f_namemax == 255
    mount.stop()
    assert not is_mounted(path) and not mount.mounted
    assert not mount._thread.is_alive()
    mount.stop()  # idempotent
    volume.mount = None
    volume.stop()
    assert volume.start() == path  # the same path mounts again
    assert os.listdir(path) == []


def test_an_unanswering_mount_times_out_and_leaves_nothing_mounted(volume: MountedVolume):
    class HangingEngine(Engine):
        release = threading.Event()

        def getattr(self, ino):
            self.release.wait(30)
            return super().getattr(ino)

    from volume_sqlite import SQLiteMetaStore

    engine = HangingEngine(SQLiteMetaStore.open(volume.meta_dir), volume.objects)
    started = time.monotonic()
    try:
        with pytest.raises(VolumeMountTimeout, match="did not answer within 1"):
            FuseMount.start(
                engine, volume.path, read_only=False, attr_cache=1, entry_cache=1,
                dir_entry_cache=1, timeout=1, fsname="volume:hang",
            )  # fmt: skip
        assert time.monotonic() - started < 5
        assert not is_mounted(volume.path)
    finally:
        HangingEngine.release.set()
        for loop in [t for t in threading.enumerate() if t.name == f"fuse:{volume.path}"]:
            loop.join(10)
            assert not loop.is_alive(), "the FUSE loop ends once the hung call returns"
        engine.close()
        engine.meta.close()


def test_mount_path_that_is_a_file_is_refused(volume: MountedVolume):
    volume.path.write_text("x")
    with pytest.raises(VolumeMountError, match="not a directory"):
        volume.start()


def test_mount_path_that_is_not_empty_is_refused(volume: MountedVolume):
    volume.path.mkdir()
    (volume.path / "something").write_text("x")
    with pytest.raises(VolumeMountError, match="not empty"):
        volume.start()


def test_a_live_mount_point_is_refused(volume: MountedVolume, tmp_path: Path):
    volume.start()
    other = MountedVolume(tmp_path / "other", name="other")
    other.path = volume.path
    with pytest.raises(VolumeMountError, match="already a mount point"):
        other.start()
    assert os.listdir(volume.path) == []  # the first mount is untouched


def test_missing_dev_fuse_is_named(volume: MountedVolume, monkeypatch):
    monkeypatch.setattr(fuse_mod, "DEV_FUSE", "/dev/no-such-fuse")
    usable, why = fuse_usable()
    assert not usable and "/dev/no-such-fuse" in why
    with pytest.raises(VolumeMountError, match="/dev/no-such-fuse"):
        volume.start()


CHILD_MOUNT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from integration.conftest import MountedVolume
    v = MountedVolume(Path({root!r}))
    v.path = Path({path!r})
    v.start()
    print("mounted", flush=True)
    time.sleep(600)
    """
)


def test_a_dead_mount_point_left_by_a_killed_process_is_cleaned(volume: MountedVolume, tmp_path):
    code = CHILD_MOUNT.format(
        tests=str(Path(__file__).parents[1]), root=str(tmp_path / "child"), path=str(volume.path)
    )
    (tmp_path / "child").mkdir()
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "mounted"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert errno_of(lambda: os.listdir(volume.path)) == "ENOTCONN"
        path = volume.start()
        assert os.listdir(path) == [] and os.path.ismount(path)
    finally:
        child.kill()
        if volume.mount is None and is_mounted(volume.path):
            fuse_mod._fusermount(volume.path, "-z")  # the dead mount, if the test failed early


def test_sigterm_stays_with_the_process(volume: MountedVolume):
    """libfuse installs a SIGTERM handler that only ends its loop; the mount gives it back."""
    from volume import workcopy

    volume.start()
    if signal.getsignal(signal.SIGTERM) is workcopy._on_signal:
        return  # a lifecycle mount of this process installed its clean-exit handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    caught = int(
        next(line for line in open("/proc/self/status") if line.startswith("SigCgt:")).split()[1],
        16,
    )
    assert not caught & (1 << (signal.SIGTERM - 1))


# ---------------------------------------------------------------------------- read-only mounts


def test_read_only_mount_refuses_every_write_with_erofs(volume: MountedVolume):
    path = volume.start()
    os.mkdir(path / "d")
    write_file(path / "d" / "f", b"data")
    volume.restart(read_only=True)
    f = path / "d" / "f"
    assert f.read_bytes() == b"data"
    refused = {
        "open for writing": lambda: open(f, "r+b"),
        "create": lambda: open(path / "new", "wb"),
        "mkdir": lambda: os.mkdir(path / "d2"),
        "unlink": lambda: os.unlink(f),
        "rmdir": lambda: os.rmdir(path / "d"),
        "rename": lambda: os.rename(f, path / "g"),
        "symlink": lambda: os.symlink("f", path / "s"),
        "link": lambda: os.link(f, path / "h"),
        "chmod": lambda: os.chmod(f, 0o600),
        "chown": lambda: os.chown(f, 1, 1),
        "truncate": lambda: os.truncate(f, 0),
        "utime": lambda: os.utime(f, ns=(1, 1)),
        "setxattr": lambda: os.setxattr(f, "user.x", b"1"),
        "removexattr": lambda: os.removexattr(f, "user.x"),
    }
    assert {what: errno_of(call) for what, call in refused.items()} == dict.fromkeys(
        refused, "EROFS"
    )


# ---------------------------------------------------------------------------- POSIX calls


def test_attributes(mnt: Path):
    os.mkdir(mnt / "d", 0o750)
    write_file(mnt / "d" / "f", b"x" * 5000)
    os.chmod(mnt / "d" / "f", 0o640)
    st = os.stat(mnt / "d" / "f")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_size, st.st_nlink, st.st_blocks, st.st_blksize) == (5000, 1, 10, 4096)
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    d = os.stat(mnt / "d")
    assert stat.S_ISDIR(d.st_mode) and stat.S_IMODE(d.st_mode) == 0o750 and d.st_nlink == 2
    os.utime(mnt / "d" / "f", ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(mnt / "d" / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    # touch -a changes the access time only (the modification time is UTIME_OMIT)
    subprocess.run(["touch", "-a", "-d", "@100", str(mnt / "d" / "f")], check=True)
    st = os.stat(mnt / "d" / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (100_000_000_000, 2_000_000_456)
    before = time.time_ns()
    subprocess.run(["touch", str(mnt / "d" / "f")], check=True)  # UTIME_NOW for both
    assert os.stat(mnt / "d" / "f").st_mtime_ns >= before - 10_000_000
    os.truncate(mnt / "d" / "f", 10)
    assert os.stat(mnt / "d" / "f").st_size == 10
    with open(mnt / "d" / "f", "r+b") as fh:
        os.ftruncate(fh.fileno(), 3)
        os.fchmod(fh.fileno(), 0o600)
        assert os.fstat(fh.fileno()).st_size == 3
    assert stat.S_IMODE(os.stat(mnt / "d" / "f").st_mode) == 0o600
    vfs = os.statvfs(mnt)
    assert (vfs.f_bsize, vfs.f_namemax) == (4096, 255) and vfs.f_ffree < vfs.f_files


def test_readdir_names_types_and_inodes(mnt: Path):
    os.mkdir(mnt / "sub")
    write_file(mnt / "file", b"1")
    os.symlink("file", mnt / "link")
    os.mkfifo(mnt / "fifo")
    names = {e.name: e for e in os.scandir(mnt)}
    assert sorted(names) == ["fifo", "file", "link", "sub"]
    assert names["sub"].is_dir() and names["file"].is_file() and names["link"].is_symlink()
    assert stat.S_ISFIFO(names["fifo"].stat(follow_symlinks=False).st_mode)
    for name, entry in names.items():
        assert entry.inode() == os.lstat(mnt / name).st_ino  # use_ino: the engine's numbers
    assert len({e.inode() for e in names.values()}) == 4
    assert sorted(os.listdir(mnt / "sub")) == []
    many = mnt / "many"
    os.mkdir(many)
    for i in range(500):
        (many / f"n{i:04d}").touch()
    assert sorted(os.listdir(many)) == [f"n{i:04d}" for i in range(500)]


def test_xattrs(mnt: Path):
    f = mnt / "f"
    write_file(f, b"x")
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "user.b", b"")
    assert os.getxattr(f, "user.a") == b"1" and os.getxattr(f, "user.b") == b""
    assert sorted(os.listxattr(f)) == ["user.a", "user.b"]
    assert errno_of(lambda: os.setxattr(f, "user.a", b"2", os.XATTR_CREATE)) == "EEXIST"
    assert errno_of(lambda: os.setxattr(f, "user.c", b"2", os.XATTR_REPLACE)) == "ENODATA"
    assert errno_of(lambda: os.getxattr(f, "user.c")) == "ENODATA"
    os.removexattr(f, "user.a")
    assert errno_of(lambda: os.removexattr(f, "user.a")) == "ENODATA"
    assert os.listxattr(f) == ["user.b"]
    # the translator remembers that a file has no security.capability; setting one is seen
    write_file(f, b"written")  # the kernel asks for security.capability before writing
    assert errno_of(lambda: os.getxattr(f, "security.capability")) == "ENODATA"
    capability = bytes.fromhex("0000000200200000000000000000000000000000")
    os.setxattr(f, "security.capability", capability)
    assert os.getxattr(f, "security.capability") == capability


def test_xattr_misses_known_from_a_listing_stay_exact(mnt: Path):
    """After a listing (which tells the mount which names have no xattr), a miss is answered
    without the volume, and a change made after it is seen at once."""
    d = mnt / "listed"
    os.mkdir(d)
    for i in range(20):
        write_file(d / f"f{i}", b"x")
    os.setxattr(d / "f3", "user.kept", b"v")
    names = sorted(e.name for e in os.scandir(d) if e.stat(follow_symlinks=False))
    assert len(names) == 20
    for name in names:
        for attr in ("security.selinux", "user.none"):  # (ACL names: the kernel's to answer)
            got = errno_of(lambda: os.getxattr(d / name, attr, follow_symlinks=False))
            assert got == "ENODATA", (name, attr, got)
    assert os.getxattr(d / "f3", "user.kept") == b"v"
    os.setxattr(d / "f7", "user.new", b"w")  # after the listing
    assert os.getxattr(d / "f7", "user.new") == b"w"
    os.removexattr(d / "f3", "user.kept")
    assert errno_of(lambda: os.getxattr(d / "f3", "user.kept")) == "ENODATA"
    assert errno_of(lambda: os.getxattr(d / "missing", "user.x")) == "ENOENT"
    assert errno_of(lambda: os.getxattr(d / "f1", "bogus.name")) == "ENOTSUP"


def test_symlinks_and_hard_links(mnt: Path):
    os.mkdir(mnt / "d")
    write_file(mnt / "d" / "f", b"content")
    os.symlink("d/f", mnt / "s")
    assert os.readlink(mnt / "s") == "d/f" and (mnt / "s").read_bytes() == b"content"
    assert stat.S_ISLNK(os.lstat(mnt / "s").st_mode) and os.lstat(mnt / "s").st_size == 3
    os.symlink("missing", mnt / "dangling")
    assert errno_of(lambda: os.stat(mnt / "dangling")) == "ENOENT"
    os.link(mnt / "d" / "f", mnt / "h")
    assert os.stat(mnt / "h").st_nlink == 2
    assert os.stat(mnt / "h").st_ino == os.stat(mnt / "d" / "f").st_ino
    os.unlink(mnt / "d" / "f")
    assert os.stat(mnt / "h").st_nlink == 1 and (mnt / "h").read_bytes() == b"content"
    assert errno_of(lambda: os.link(mnt / "d", mnt / "dirlink")) == "EPERM"


def test_rename_and_renameat2_flags(mnt: Path):
    os.makedirs(mnt / "a" / "inner")
    write_file(mnt / "a" / "inner" / "f", b"f")
    write_file(mnt / "x", b"x")
    write_file(mnt / "y", b"y")
    assert errno_of(lambda: renameat2(str(mnt / "x"), str(mnt / "y"), RENAME_NOREPLACE)) == "EEXIST"
    renameat2(str(mnt / "x"), str(mnt / "y"), RENAME_EXCHANGE)
    assert (mnt / "x").read_bytes() == b"y" and (mnt / "y").read_bytes() == b"x"
    renameat2(str(mnt / "x"), str(mnt / "a"), RENAME_EXCHANGE)  # a file and a directory swap
    assert (mnt / "a").read_bytes() == b"y" and (mnt / "x" / "inner" / "f").read_bytes() == b"f"
    os.rename(mnt / "x", mnt / "moved")  # a directory: paths below it change
    assert (mnt / "moved" / "inner" / "f").read_bytes() == b"f"
    assert not (mnt / "x").exists()
    write_file(mnt / "x", b"new")  # a new file at the old name
    assert (mnt / "x").read_bytes() == b"new"
    os.rename(mnt / "y", mnt / "x")  # replaces x
    assert (mnt / "x").read_bytes() == b"x" and not (mnt / "y").exists()
    os.mkdir(mnt / "empty")
    assert errno_of(lambda: os.rename(mnt / "moved", mnt / "moved" / "inner" / "g")) == "EINVAL"
    assert errno_of(lambda: os.rename(mnt / "empty", mnt / "moved")) == "ENOTEMPTY"
    assert sorted(os.listdir(mnt)) == ["a", "empty", "moved", "x"]


def test_unlinked_open_file_stays_usable(mnt: Path):
    os.mkdir(mnt / "d")
    with open(mnt / "d" / "f", "w+b", buffering=0) as f:
        f.write(b"hello")
        os.unlink(mnt / "d" / "f")
        assert os.listdir(mnt / "d") == []  # no hidden name shows
        assert os.fstat(f.fileno()).st_nlink == 0
        f.write(b" world")
        f.seek(0)
        assert f.read() == b"hello world"
        os.fchmod(f.fileno(), 0o600)
        assert stat.S_IMODE(os.fstat(f.fileno()).st_mode) == 0o600
        os.rmdir(mnt / "d")  # empty once its file is unlinked, open or not
    with open(mnt / "g", "wb") as g:  # replaced by a rename while open
        write_file(mnt / "h", b"new")
        os.rename(mnt / "h", mnt / "g")
        g.write(b"old")
    assert (mnt / "g").read_bytes() == b"new"
    assert os.listdir(mnt) == ["g"]


def test_an_open_file_keeps_its_link_count_after_losing_one_of_two_names(mnt: Path):
    """libfuse hides the unlinked name; the other name is still a link, whatever call asks."""
    write_file(mnt / "c", b"content")
    os.link(mnt / "c", mnt / "other")
    fd = os.open(mnt / "c", os.O_RDWR)
    try:
        os.unlink(mnt / "c")
        assert os.fstat(fd).st_nlink == 1
        os.ftruncate(fd, 3)  # answered with the attributes after the change
        assert os.fstat(fd).st_nlink == 1
        os.fchmod(fd, 0o600)
        assert os.fstat(fd).st_nlink == 1
        assert os.stat(mnt / "other").st_nlink == 1
    finally:
        os.close(fd)
    assert (mnt / "other").read_bytes() == b"con"


def test_a_directory_removed_while_open_lists_empty(mnt: Path):
    os.mkdir(mnt / "d")
    with os.scandir(mnt / "d") as entries:  # opened; nothing read yet
        os.rmdir(mnt / "d")
        assert list(entries) == []
    os.mkdir(mnt / "e")
    fd = os.open(mnt / "e", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(mnt / "e")
        # the one known difference from Linux (libfuse forgets removed directories)
        assert errno_of(lambda: os.fstat(fd)) == "ESTALE"
    finally:
        os.close(fd)


def test_hard_links_see_each_others_changes_at_once(mnt: Path):
    write_file(mnt / "a", b"1")
    os.link(mnt / "a", mnt / "b")
    assert os.stat(mnt / "a").st_nlink == os.stat(mnt / "b").st_nlink == 2
    with open(mnt / "a", "ab") as f:
        f.write(b"23")
    assert os.stat(mnt / "b").st_size == 3 and (mnt / "b").read_bytes() == b"123"
    os.chmod(mnt / "b", 0o600)
    assert stat.S_IMODE(os.stat(mnt / "a").st_mode) == 0o600
    os.truncate(mnt / "a", 1)
    assert (mnt / "b").read_bytes() == b"1"
    os.link(mnt / "a", mnt / "c")
    assert os.stat(mnt / "b").st_nlink == 3
    os.unlink(mnt / "c")
    os.rename(mnt / "a", mnt / "b")  # two names of one inode: nothing happens
    assert os.stat(mnt / "a").st_nlink == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_another_users_files_are_theirs():
    root = Path(tempfile.mkdtemp(prefix="fuse-users-"))
    root.chmod(0o755)  # other users must reach the mount point
    volume = MountedVolume(root)
    try:
        _check_another_users_files(volume.start())
    finally:
        volume.stop()
        shutil.rmtree(root, ignore_errors=True)


def _check_another_users_files(mnt: Path) -> None:
    os.mkdir(mnt / "shared")
    os.chmod(mnt / "shared", 0o777)
    os.mkdir(mnt / "private", 0o755)

    def as_nobody() -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    touch = ["touch", str(mnt / "shared" / "mine")]
    subprocess.run(touch, preexec_fn=as_nobody, check=True)
    st = os.stat(mnt / "shared" / "mine")
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    denied = subprocess.run(
        ["touch", str(mnt / "private" / "nope")], preexec_fn=as_nobody, capture_output=True
    )
    assert denied.returncode != 0 and b"Permission denied" in denied.stderr


# ---------------------------------------------------------------------------- data


def test_large_file_round_trips_byte_exact(volume: MountedVolume):
    path = volume.start()
    size = 200 << 20
    data = random.Random(7).randbytes(size)
    write_file(path / "big", data)
    volume.restart()  # empty kernel and engine caches: the reads below come from the store
    rng = random.Random(8)
    with open(path / "big", "rb", buffering=0) as f:
        for _ in range(2000):
            off = rng.randrange(0, size - 4096)
            assert os.pread(f.fileno(), 4096, off) == data[off : off + 4096], off
        assert os.pread(f.fileno(), 1 << 20, size - 100) == data[-100:]
    digest = hashlib.sha256()
    with open(path / "big", "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert digest.digest() == hashlib.sha256(data).digest()


MMAP_DIGEST = textwrap.dedent(
    """
    import hashlib, mmap, sys
    with open(sys.argv[1], "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        print(hashlib.sha256(m).hexdigest(), hashlib.sha256(m[1000:5000]).hexdigest())
    """
)


def test_mmap_read(volume: MountedVolume):
    """Another process maps the file: in the serving process a page fault would hold the GIL the
    FUSE handlers need."""
    path = volume.start()
    data = random.Random(3).randbytes(3 << 20)
    write_file(path / "m", data)
    volume.restart(read_only=True)
    done = subprocess.run(
        [sys.executable, "-c", MMAP_DIGEST, str(path / "m")],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.split() == [
        hashlib.sha256(data).hexdigest(), hashlib.sha256(data[1000:5000]).hexdigest()
    ]


def test_bench_runs_on_the_mount(mnt: Path):
    result = run_bench(
        mnt, big_file_mb=4, small_file_kb=16, small_files=5, threads=2, drop_kernel_caches=False
    )
    assert [r.item for r in result.rows] == [
        "Write big file", "Read big file", "Write small file", "Read small file", "Stat file",
    ]  # fmt: skip
    assert all(r.value > 0 for r in result.rows) and os.listdir(mnt) == []
    assert "|   Write big file |" in result.table()


def test_a_missing_block_reads_as_eio_never_as_wrong_bytes(volume: MountedVolume):
    path = volume.start()
    write_file(path / "victim", random.Random(1).randbytes(6 << 20))
    write_file(path / "intact", b"still here")
    volume.restart(read_only=True)  # a cold cache: nothing read yet
    blocks = volume.block_files()
    first = next(b for b in blocks if b.stat().st_size == 4 << 20)
    first.unlink()
    with open(path / "victim", "rb") as f:
        assert errno_of(lambda: f.read(1 << 20)) == "EIO"
    assert (path / "intact").read_bytes() == b"still here"
