"""Set-user-ID and set-group-ID bits after write, truncate and open(O_TRUNC), against Linux.

Each case runs twice: in a real directory, by a child process that has become the caller
(setgroups/setgid/setuid), and in the engine with the same :class:`Caller`; the resulting mode
(and the errno, if any) must be the same. Linux's rule (``setattr_should_drop_suidgid``): for a
caller without CAP_FSETID, set-user-ID is cleared, and set-group-ID when the group may execute
the file or the caller is not in the file's group; root keeps both.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from volume.engine import Caller, Engine, PathFS, format_volume, new_format
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the Linux side needs root to setuid")

OWNER, GROUP = 2000, 3000
CALLERS = {
    "root": Caller(0, 0),
    "member": Caller(1000, 1000, (GROUP,)),
    "stranger": Caller(1000, 1000),
    "owner": Caller(OWNER, 4000),
}
MODES = [0o4777, 0o2777, 0o2767, 0o6777, 0o6767, 0o6757]
OPS = ["write", "truncate", "ftruncate", "open_trunc"]


def _op(fs, path: str, op: str) -> None:
    """One operation through an ``os``-like interface (os itself or a PathFS)."""
    if op == "write":
        fd = fs.open(path, os.O_WRONLY)
        try:
            fs.write(fd, b"x")
        finally:
            fs.close(fd)
    elif op == "truncate":
        fs.truncate(path, 3)
    elif op == "ftruncate":
        fd = fs.open(path, os.O_WRONLY)
        try:
            fs.ftruncate(fd, 3)
        finally:
            fs.close(fd)
    elif op == "open_trunc":
        fs.close(fs.open(path, os.O_WRONLY | os.O_TRUNC))


class _Os:
    open, write, close, truncate, ftruncate = os.open, os.write, os.close, os.truncate, os.ftruncate


def linux(directory: Path, mode: int, op: str, caller: Caller) -> tuple[int, int]:
    """``(errno or 0, mode after)`` in a real directory."""
    path = directory / f"f{mode:o}{op}{caller.uid}{len(caller.groups)}"
    path.write_bytes(b"hello")
    os.chown(path, OWNER, GROUP)
    os.chmod(path, mode)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes the caller for good, then reports an errno
        code = 0
        try:
            os.setgroups(list(caller.groups))
            os.setgid(caller.gid)
            os.setuid(caller.uid)
            _op(_Os, str(path), op)
        except OSError as exc:
            code = exc.errno or 255
        except BaseException:  # noqa: BLE001 - the child reports, never raises
            code = 254
        os.write(write, bytes([code]))
        os._exit(0)
    os.close(write)
    code = os.read(read, 1)[0]
    os.close(read)
    os.waitpid(pid, 0)
    return code, path.stat().st_mode & 0o7777


@pytest.fixture(scope="module")
def real_dir():
    directory = Path(tempfile.mkdtemp())
    directory.chmod(0o777)  # reachable by the unprivileged callers
    yield directory
    shutil.rmtree(directory)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("suid")
    meta = SQLiteMetaStore.open(root / "meta")
    objects = LocalObjectStore(root / "bucket")
    format_volume(meta, objects, new_format("suid", storage="file", bucket=f"{root}/bucket/"))
    engine = Engine(meta, objects)
    yield engine
    engine.close()
    meta.close()


def volume(engine: Engine, mode: int, op: str, caller: Caller) -> tuple[int, int]:
    root = PathFS(engine)
    path = f"/f{mode:o}{op}{caller.uid}{len(caller.groups)}"
    root.write_bytes(path, b"hello")
    root.chown(path, OWNER, GROUP)
    root.chmod(path, mode)
    try:
        _op(PathFS(engine, caller), path, op)
        code = 0
    except OSError as exc:
        code = exc.errno or 255
    return code, root.stat(path).st_mode & 0o7777


@pytest.mark.parametrize("who", list(CALLERS))
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("mode", MODES, ids=oct)
def test_suid_bits_after_a_change_match_linux(real_dir, engine, mode, op, who) -> None:
    caller = CALLERS[who]
    assert volume(engine, mode, op, caller) == linux(real_dir, mode, op, caller)


def test_a_non_owner_may_clear_suid_bits_but_not_change_others(engine) -> None:
    """What the kernel asks of a FUSE file system after a non-owner's write (JuiceFS allows the
    same): a chmod that only clears set-user-ID/set-group-ID."""
    root = PathFS(engine)
    root.write_bytes("/k", b"k")
    root.chown("/k", OWNER, GROUP)
    root.chmod("/k", 0o6777)
    stranger = PathFS(engine, CALLERS["stranger"])
    stranger.chmod("/k", 0o0777)
    assert root.stat("/k").st_mode & 0o7777 == 0o0777
    with pytest.raises(PermissionError):
        stranger.chmod("/k", 0o0775)


@pytest.fixture
def kernel_mount(tmp_path: Path):
    """A kernel mount of a fresh volume (FUSE), reachable by unprivileged callers."""
    from volume.mount.fuse import FuseMount, fuse_usable

    usable, why = fuse_usable()
    if not usable:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"CI=true and FUSE is not usable here: {why}")
        pytest.skip(f"FUSE is not usable here: {why}")
    root = Path(tempfile.mkdtemp())
    root.chmod(0o755)
    meta = SQLiteMetaStore.open(root / "meta")
    objects = LocalObjectStore(root / "bucket")
    format_volume(meta, objects, new_format("suidk", storage="file", bucket=f"{root}/bucket/"))
    engine = Engine(meta, objects)
    mount = FuseMount.start(
        engine, root / "mnt", read_only=False, attr_cache=0, entry_cache=0, dir_entry_cache=0,
        timeout=10, fsname="volume:suid",
    )  # fmt: skip
    try:
        (root / "mnt").chmod(0o777)
        yield root / "mnt"
    finally:
        mount.stop(10)
        engine.close()
        meta.close()
        shutil.rmtree(root)


@pytest.mark.parametrize("op", OPS)
def test_through_the_kernel_a_strangers_change_succeeds_and_clears_the_bits(
    kernel_mount: Path, real_dir: Path, op: str
) -> None:
    """Issue 9: through FUSE the kernel clears the bits with a chmod as the caller; the mount
    must allow it (it answered EPERM to write(2) and truncate(2) before)."""
    caller = CALLERS["stranger"]
    assert linux(kernel_mount, 0o6777, op, caller) == linux(real_dir, 0o6777, op, caller)
    assert linux(kernel_mount, 0o6777, op, caller) == (0, 0o0777)
