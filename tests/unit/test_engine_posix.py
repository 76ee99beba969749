"""POSIX rules the differential test cannot show (it runs as root): permissions, ownership,
sticky directories, name limits, and a read-only engine."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from volume.engine import Caller, Engine, PathFS, format_volume, new_format
from volume.engine.posix import XATTR_CREATE, XATTR_REPLACE
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

ALICE = Caller(uid=1000, gid=1000)
BOB = Caller(uid=1001, gid=1001)
BOB_IN_ALICES_GROUP = Caller(uid=1001, gid=1001, groups=(1000,))


@pytest.fixture
def engine(tmp_path: Path):
    objects = LocalObjectStore.from_uri(str(tmp_path / "bucket"))
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    format_volume(meta, objects, new_format("posix", storage="file", bucket=f"{tmp_path}/bucket/"))
    eng = Engine(meta, objects)
    yield eng
    eng.close()
    meta.close()


def as_user(engine: Engine, caller: Caller) -> PathFS:
    return PathFS(engine, caller=caller, umask=0o022)


def shared_dir(engine: Engine, path: str, mode: int) -> PathFS:
    """A directory made by root with exactly ``mode`` (mkdir alone would apply the umask)."""
    root = as_user(engine, Caller())
    root.mkdir(path)
    root.chmod(path, mode)
    return root


def errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as err:
        fn(*args)
    return err.value.errno


def test_write_permission_on_directories(engine: Engine) -> None:
    root = as_user(engine, Caller())
    root.mkdir("/shared", 0o755)
    alice = as_user(engine, ALICE)
    assert errno_of(alice.write_bytes, "/shared/x", b"x") == errno.EACCES
    assert errno_of(alice.mkdir, "/shared/d") == errno.EACCES
    root.chown("/shared", ALICE.uid, ALICE.gid)
    alice.write_bytes("/shared/x", b"x")
    st = alice.stat("/shared/x")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 1000, 0o644)


def test_read_and_search_permissions(engine: Engine) -> None:
    alice, bob = as_user(engine, ALICE), as_user(engine, BOB)
    shared_dir(engine, "/home", 0o777)
    alice.mkdir("/home/alice", 0o700)
    alice.write_bytes("/home/alice/secret", b"s")
    assert errno_of(bob.listdir, "/home/alice") == errno.EACCES
    assert errno_of(bob.stat, "/home/alice/secret") == errno.EACCES  # no search permission
    alice.chmod("/home/alice", 0o711)
    assert bob.stat("/home/alice/secret").st_size == 1
    assert bob.read_bytes("/home/alice/secret") == b"s"  # 0644 by the umask
    alice.chmod("/home/alice/secret", 0o600)
    assert errno_of(bob.read_bytes, "/home/alice/secret") == errno.EACCES
    alice.chmod("/home/alice/secret", 0o640)
    assert errno_of(bob.read_bytes, "/home/alice/secret") == errno.EACCES
    assert as_user(engine, BOB_IN_ALICES_GROUP).read_bytes("/home/alice/secret") == b"s"


def test_only_owner_chmods_and_only_root_gives_away(engine: Engine) -> None:
    shared_dir(engine, "/tmp", 0o1777)
    alice, bob = as_user(engine, ALICE), as_user(engine, BOB)
    alice.write_bytes("/tmp/a", b"a")
    assert errno_of(bob.chmod, "/tmp/a", 0o777) == errno.EPERM
    assert errno_of(alice.chown, "/tmp/a", BOB.uid, -1) == errno.EPERM
    assert errno_of(alice.chown, "/tmp/a", -1, BOB.gid) == errno.EPERM  # not her group
    alice.chmod("/tmp/a", 0o6755)
    as_user(engine, Caller()).chown("/tmp/a", BOB.uid, -1)
    st = alice.stat("/tmp/a")
    assert st.st_uid == BOB.uid and not st.st_mode & 0o4000  # chown clears set-user-id


def test_sticky_directory(engine: Engine) -> None:
    shared_dir(engine, "/tmp", 0o1777)
    alice, bob = as_user(engine, ALICE), as_user(engine, BOB)
    alice.write_bytes("/tmp/alices", b"a")
    assert errno_of(bob.unlink, "/tmp/alices") == errno.EPERM
    assert errno_of(bob.rename, "/tmp/alices", "/tmp/mine") == errno.EPERM
    alice.unlink("/tmp/alices")


def test_setgid_directory_passes_its_group_on(engine: Engine) -> None:
    root = shared_dir(engine, "/team", 0o2777)
    root.chown("/team", 0, 4242)
    alice = as_user(engine, ALICE)
    alice.mkdir("/team/sub")
    alice.write_bytes("/team/f", b"")
    assert alice.stat("/team/f").st_gid == 4242
    sub = alice.stat("/team/sub")
    assert sub.st_gid == 4242 and sub.st_mode & 0o2000


def test_name_limits(engine: Engine) -> None:
    fs = as_user(engine, Caller())
    fs.write_bytes("/" + "n" * 255, b"")
    assert errno_of(fs.write_bytes, "/" + "n" * 256, b"") == errno.ENAMETOOLONG
    assert errno_of(fs.mkdir, "/" + "d" * 256) == errno.ENAMETOOLONG
    assert errno_of(engine.mkdir, 1, b"a/b", 0o755) == errno.EINVAL
    assert errno_of(engine.mkdir, 1, b"a\0b", 0o755) == errno.EINVAL
    assert errno_of(engine.mkdir, 1, b"", 0o755) == errno.EINVAL
    assert errno_of(fs.symlink, "t" * 4096, "/long-link") == errno.ENAMETOOLONG


def test_xattr_flags_and_namespaces(engine: Engine) -> None:
    fs = as_user(engine, Caller())
    fs.write_bytes("/f", b"")
    assert errno_of(fs.setxattr, "/f", "user.k", b"v", XATTR_REPLACE) == errno.ENODATA
    fs.setxattr("/f", "user.k", b"v", XATTR_CREATE)
    assert errno_of(fs.setxattr, "/f", "user.k", b"w", XATTR_CREATE) == errno.EEXIST
    assert errno_of(fs.setxattr, "/f", "nonamespace", b"v") == errno.EOPNOTSUPP
    assert errno_of(fs.getxattr, "/f", "user.missing") == errno.ENODATA
    assert errno_of(as_user(engine, ALICE).setxattr, "/f", "trusted.k", b"v") == errno.EPERM
    assert fs.listxattr("/f") == ["user.k"]


def test_read_only_engine_refuses_every_write(tmp_path: Path) -> None:
    objects = LocalObjectStore.from_uri(str(tmp_path / "bucket"))
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    format_volume(meta, objects, new_format("ro", storage="file", bucket=f"{tmp_path}/bucket/"))
    writer = Engine(meta, objects)
    PathFS(writer).write_bytes("/f", b"data")
    writer.close()
    meta.close()
    meta = SQLiteMetaStore.open(tmp_path / "meta", read_only=True)
    ro = PathFS(Engine(meta, objects, read_only=True))
    for call in (
        lambda: ro.write_bytes("/g", b""),
        lambda: ro.open("/f", os.O_WRONLY),
        lambda: ro.mkdir("/d"),
        lambda: ro.unlink("/f"),
        lambda: ro.truncate("/f", 0),
        lambda: ro.utime("/f"),
        lambda: ro.symlink("f", "/l"),
        lambda: ro.link("/f", "/h"),
    ):
        assert errno_of(call) == errno.EROFS
    assert ro.read_bytes("/f") == b"data"
    meta.close()
