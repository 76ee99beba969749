"""LocalObjectStore: the conformance kit, plus the JuiceFS layout, temporary files, symbolic links,
modes, URIs and error mapping of the ``file`` storage."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from volume.errors import (
    InvalidKeyError,
    ObjectExists,
    ObjectNotFound,
    ObjectStoreError,
    VolumeValidationError,
)
from volume.stores import ObjectInfo
from volume.testing import ObjectStoreTests
from volume_local import LocalObjectStore

BLOCK_KEY = "myvol/chunks/0/0/1_0_3"
TEMP_NAME = re.compile(r"\.jfs\.(?P<basename>.*)\.tmp\.\d+")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def local_store(root: Path) -> LocalObjectStore:
    return LocalObjectStore(root)


class TestLocalObjectStore(ObjectStoreTests):
    @pytest.fixture
    def store(self, root: Path) -> LocalObjectStore:
        return LocalObjectStore.from_uri(f"file://{root}")


class TestLocalObjectStoreStagingNamedFiles(TestLocalObjectStore):
    """The kit again, staging named temporary files (as on a file system without O_TMPFILE)."""

    @pytest.fixture
    def store(self, root: Path) -> LocalObjectStore:
        store = LocalObjectStore.from_uri(f"file://{root}")
        store.stages_unnamed = False
        return store


def temporaries(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if TEMP_NAME.fullmatch(path.name)]


def record_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[Any, ...]]:
    """Record the arguments of every call of ``os.<name>`` (which still runs)."""
    calls: list[tuple[Any, ...]] = []
    original: Callable[..., Any] = getattr(os, name)

    def recording(*args: Any) -> Any:
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(os, name, recording)
    return calls


# --------------------------------------------------------------------------- layout


def test_a_key_is_the_file_at_root_slash_key(local_store: LocalObjectStore, root: Path) -> None:
    local_store.put(BLOCK_KEY, b"block")
    assert (root / "myvol" / "chunks" / "0" / "0" / "1_0_3").read_bytes() == b"block"


def test_files_written_as_juicefs_does_are_objects(
    local_store: LocalObjectStore, root: Path
) -> None:
    (root / "other" / "chunks").mkdir(parents=True)
    (root / "other" / "chunks" / "5_0_7").write_bytes(b"juicefs")
    assert local_store.get("other/chunks/5_0_7") == b"juicefs"
    assert list(local_store.list("other/")) == [ObjectInfo("other/chunks/5_0_7", 7)]


def test_capabilities(local_store: LocalObjectStore) -> None:
    caps = local_store.capabilities
    assert (caps.conditional_put, caps.range_reads, caps.local) == (True, True, True)
    assert LocalObjectStore.name == "file"


# --------------------------------------------------------------------------- temporary files


def test_puts_go_through_juicefs_temporary_names(
    local_store: LocalObjectStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replaced = record_calls(monkeypatch, "replace")
    linked = record_calls(monkeypatch, "link")
    local_store.put(BLOCK_KEY, b"a")
    local_store.put("myvol/new", b"b", if_absent=True)
    with pytest.raises(ObjectExists):
        local_store.put("myvol/new", b"c", if_absent=True)
    local_store.put_file("myvol/copy", root / BLOCK_KEY)
    published = [(src, dst) for src, dst in replaced + linked]
    assert len(published) == 4
    for src, dst in published:
        src_dir, src_name = os.path.split(src)
        dst_dir, dst_name = os.path.split(dst)
        assert src_dir == dst_dir, "the temporary file must be in the object's directory"
        match = TEMP_NAME.fullmatch(src_name)
        assert match and match["basename"] == dst_name, src_name
    assert temporaries(root) == []


def test_a_long_name_keeps_its_temporary_name_under_name_max(
    local_store: LocalObjectStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replaced = record_calls(monkeypatch, "replace")
    names = ["a" * 255, "日" * 85]  # 255 bytes each: the longest a file name may be
    for name in names:
        local_store.put(f"long/{name}", name.encode())
        assert local_store.get(f"long/{name}") == name.encode()
    assert all(len(os.path.basename(src).encode()) <= 255 for src, _ in replaced)
    assert temporaries(root) == []


def test_a_failed_put_leaves_no_temporary_and_keeps_errno(
    local_store: LocalObjectStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_store.put(BLOCK_KEY, b"old")

    def full_disk(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(ObjectStoreError, match=re.escape(BLOCK_KEY)) as caught:
        local_store.put(BLOCK_KEY, b"new")
    assert caught.value.errno == errno.ENOSPC
    assert temporaries(root) == []
    assert local_store.get(BLOCK_KEY) == b"old"


def test_a_lost_put_if_absent_leaves_no_temporary(
    local_store: LocalObjectStore, root: Path
) -> None:
    local_store.put(BLOCK_KEY, b"first", if_absent=True)
    with pytest.raises(ObjectExists):
        local_store.put(BLOCK_KEY, b"second", if_absent=True)
    assert temporaries(root) == []
    assert os.stat(root / BLOCK_KEY).st_nlink == 1  # the temporary link is gone


def test_list_skips_temporaries_directories_and_special_files(
    local_store: LocalObjectStore, root: Path
) -> None:
    local_store.put("d/real", b"1")
    (root / "d" / ".jfs.real.tmp.12345").write_bytes(b"in flight")
    (root / "d" / "empty").mkdir()
    (root / "d" / "link").symlink_to(root / "d" / "real")
    os.mkfifo(root / "d" / "fifo")
    assert [info.key for info in local_store.list("d/")] == ["d/real"]


def test_keys_named_like_temporaries_are_refused(local_store: LocalObjectStore) -> None:
    for operation in (
        lambda key: local_store.put(key, b""),
        local_store.get,
        local_store.head,
        local_store.delete,
    ):
        with pytest.raises(InvalidKeyError, match="temporary"):
            operation("d/.jfs.x.tmp.1")


# --------------------------------------------------------------------------- symbolic links


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret").write_bytes(b"secret")
    return directory


def test_a_symlinked_directory_does_not_lead_out_of_the_root(
    local_store: LocalObjectStore, root: Path, outside: Path, tmp_path: Path
) -> None:
    (root / "escape").symlink_to(outside, target_is_directory=True)
    refused: list[Callable[[], object]] = [
        lambda: local_store.get("escape/secret"),
        lambda: local_store.head("escape/secret"),
        lambda: local_store.exists("escape/secret"),
        lambda: local_store.get_file("escape/secret", tmp_path / "copy"),
        lambda: local_store.put("escape/new", b"x"),
        lambda: local_store.put("escape/deeper/new", b"x"),
        lambda: local_store.put("escape/new", b"x", if_absent=True),
        lambda: local_store.delete("escape/secret"),
        lambda: list(local_store.list("escape/")),
        lambda: list(local_store.list("escape/s")),
    ]
    for operation in refused:
        with pytest.raises(InvalidKeyError, match="outside the store root"):
            operation()
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert not (tmp_path / "copy").exists()


def test_a_directory_swapped_for_a_symlink_during_a_put_does_not_lead_out(
    local_store: LocalObjectStore, root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory a put checked is the one its file is created in: a symbolic link put in
    its place between the check and the create cannot redirect the file."""
    import volume_local._store as store_module

    local_store.put("d/first", b"1")
    name_temp = store_module._temp_path_for

    def swap_then_name(path: str) -> str:  # runs between the check and the create
        os.rename(root / "d", root / "moved")
        (root / "d").symlink_to(outside, target_is_directory=True)
        return name_temp(path)

    monkeypatch.setattr(store_module, "_temp_path_for", swap_then_name)
    with pytest.raises(ObjectStoreError):
        local_store.put("d/second", b"2")  # its file landed in the checked directory, not out
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_a_symlinked_file_does_not_lead_out_of_the_root(
    local_store: LocalObjectStore, root: Path, outside: Path
) -> None:
    (root / "leak").symlink_to(outside / "secret")
    with pytest.raises(InvalidKeyError, match="leak"):
        local_store.get("leak")
    assert [info.key for info in local_store.list()] == []  # links are never listed


def test_a_symlink_that_stays_inside_the_root_is_followed(
    local_store: LocalObjectStore, root: Path
) -> None:
    local_store.put("real/x", b"x")
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    assert local_store.get("alias/x") == b"x"


def test_a_fifo_is_not_an_object_and_does_not_block(
    local_store: LocalObjectStore, root: Path
) -> None:
    os.mkfifo(root / "pipe")
    with pytest.raises(ObjectNotFound):
        local_store.get("pipe")


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)]
)
def test_modes_are_juicefs_modes_minus_the_umask(
    local_store: LocalObjectStore, root: Path, umask: int, file_mode: int, dir_mode: int
) -> None:
    previous = os.umask(umask)
    try:
        local_store.put("m/n/o", b"x")
        local_store.put_file("m/n/p", root / "m" / "n" / "o")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(root / "m").st_mode) == dir_mode
    assert stat.S_IMODE(os.stat(root / "m" / "n").st_mode) == dir_mode
    assert stat.S_IMODE(os.stat(root / "m" / "n" / "o").st_mode) == file_mode
    assert stat.S_IMODE(os.stat(root / "m" / "n" / "p").st_mode) == file_mode


# --------------------------------------------------------------------------- staging


def unnamed_open_files(root: Path) -> list[str]:
    """What this process holds open below ``root`` with no name (staged, unsealed objects)."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [t for t in targets if t.startswith(f"{root}/") and t.endswith(" (deleted)")]


def test_a_staged_object_has_no_name_until_it_is_sealed(root: Path) -> None:
    local_store = LocalObjectStore(root, files_ahead=0)  # only the staged objects are open
    previous = os.umask(0o027)
    try:
        staged = local_store.stage(BLOCK_KEY)
        staged.write(0, b"staged bytes")
        assert list((root / BLOCK_KEY).parent.iterdir()) == []
        assert len(unnamed_open_files(root / "myvol/chunks/0/0")) == 1
        staged.seal(BLOCK_KEY, 6)
    finally:
        os.umask(previous)
    assert local_store.get(BLOCK_KEY) == b"staged"
    assert stat.S_IMODE(os.stat(root / BLOCK_KEY).st_mode) == 0o640  # JuiceFS's 0666, umasked
    assert [p.name for p in (root / BLOCK_KEY).parent.iterdir()] == [BLOCK_KEY.rsplit("/")[-1]]
    assert unnamed_open_files(root) == []
    discarded = local_store.stage("myvol/chunks/0/0/2_0_3")
    discarded.write(0, b"abc")
    discarded.discard()
    assert unnamed_open_files(root) == [] and local_store.head(BLOCK_KEY).size == 6


KILLED_WRITER = """
import os, signal, sys
from volume_local import LocalObjectStore
import time
store = LocalObjectStore(sys.argv[1])
store.stages_unnamed = sys.argv[2] == "unnamed"
staged = store.stage("myvol/chunks/0/0/1_0_4194304")
staged.write(0, b"x" * (1 << 20))  # a block being written when the process dies
while store.stages_unnamed and store._ahead.ready() < 2:  # and files made ahead
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("staging", ["unnamed", "named"])
def test_a_writer_killed_mid_block(root: Path, staging: str) -> None:
    """Killed with a block staged: an unnamed one leaves nothing in the bucket; a named
    temporary file (on file systems without O_TMPFILE) stays, never listed as an object."""
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(root), staging])
    assert done.returncode == -signal.SIGKILL
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files == temporaries(root) and len(files) == (0 if staging == "unnamed" else 1)
    assert list(LocalObjectStore(root).list()) == []


def _wait_ready(store: LocalObjectStore, count: int) -> None:
    deadline = time.monotonic() + 30
    while store._ahead.ready() != count:
        assert time.monotonic() < deadline, f"{store._ahead.ready()} files ready, not {count}"
        time.sleep(0.005)


def test_the_next_blocks_take_files_made_ahead(
    local_store: LocalObjectStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = local_store.stage("v/chunks/0/0/1_0_3")  # made by the caller: nothing was ready
    _wait_ready(local_store, 2)
    made_here = []
    opened = os.open

    def recording(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if threading.current_thread() is threading.main_thread():
            made_here.append(path)
        return opened(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording)
    second = local_store.stage("v/chunks/0/0/2_0_3")
    monkeypatch.undo()
    assert made_here == []  # taken, not made
    for n, staged in enumerate((first, second), 1):
        staged.write(0, f"#{n}!".encode())
        staged.seal(f"v/chunks/0/0/{n}_0_3", 3)
    assert [local_store.get(f"v/chunks/0/0/{n}_0_3") for n in (1, 2)] == [b"#1!", b"#2!"]
    _wait_ready(local_store, 2)
    other = local_store.stage("v/chunks/0/1/1000_0_3")  # another directory: made there now
    other.discard()
    _wait_ready(local_store, 2)
    assert [Path(t).parent.name for t in unnamed_open_files(root)] == ["1", "1"]
    local_store.close()
    assert unnamed_open_files(root) == []
    assert [info.key for info in local_store.list("v/")] == ["v/chunks/0/0/1_0_3",
                                                             "v/chunks/0/0/2_0_3"]  # fmt: skip


def test_files_made_ahead_are_closed_when_idle(root: Path) -> None:
    store = LocalObjectStore(root)
    store._ahead.idle_seconds = 0.3
    store.stage(BLOCK_KEY).discard()
    _wait_ready(store, 2)
    _wait_ready(store, 0)  # closed after 0.3 s without a stage
    assert unnamed_open_files(root) == []
    staged = store.stage(BLOCK_KEY)  # and made again for the next stages
    _wait_ready(store, 2)
    staged.discard()
    store.close()


def test_a_file_that_cannot_be_made_ahead_is_made_when_staged(root: Path) -> None:
    store = LocalObjectStore(root)
    attempts = []

    def failing(key: str, path: str) -> int:
        attempts.append(key)
        raise RuntimeError("the disk is gone")

    store._ahead._make = failing  # the thread's maker fails; the writer's own one works
    for n in (1, 2, 3):
        staged = store.stage(f"v/chunks/0/0/{n}_0_1")
        staged.write(0, b"x")
        staged.seal(f"v/chunks/0/0/{n}_0_1", 1)
    assert [store.get(f"v/chunks/0/0/{n}_0_1") for n in (1, 2, 3)] == [b"x"] * 3
    deadline = time.monotonic() + 30
    while not attempts:
        assert time.monotonic() < deadline, "the thread never tried"
        time.sleep(0.005)
    store.stage("v/chunks/0/0/4_0_1").discard()
    time.sleep(0.05)
    assert store._ahead.ready() == 0 and len(attempts) == 1  # tried once for the directory
    store.close()


FORKED = """
import os, sys, time
from volume_local import LocalObjectStore
store = LocalObjectStore(sys.argv[1])
store.stage("v/chunks/0/0/1_0_6").discard()
while store._ahead.ready() < 2:
    time.sleep(0.01)
pid = os.fork()  # the child must not use the parent's files made ahead: they are one inode
who = b"child " if pid == 0 else b"parent"
staged = store.stage(f"v/chunks/0/0/{2 if pid == 0 else 3}_0_6")
time.sleep(0.2)  # both hold their staged file
staged.write(0, who)
staged.seal(f"v/chunks/0/0/{2 if pid == 0 else 3}_0_6", 6)
if pid == 0:
    os._exit(0)
assert os.waitpid(pid, 0)[1] == 0
print(store.get("v/chunks/0/0/2_0_6").decode(), store.get("v/chunks/0/0/3_0_6").decode())
"""


def test_a_forked_child_makes_its_own_files(root: Path) -> None:
    done = subprocess.run([sys.executable, "-c", FORKED, str(root)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["child", "parent"]


def test_a_file_system_without_unnamed_files_stages_named_ones(
    local_store: LocalObjectStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = os.open

    def no_tmpfile(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return opened(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_tmpfile)
    staged = local_store.stage(BLOCK_KEY)
    assert not local_store.stages_unnamed  # asked once, then remembered
    staged.write(0, b"abc")
    assert len(temporaries(root)) == 1
    staged.seal(BLOCK_KEY, 3)
    assert temporaries(root) == [] and local_store.get(BLOCK_KEY) == b"abc"


# --------------------------------------------------------------------------- efficiency


def test_list_walks_only_the_directory_of_the_prefix(
    local_store: LocalObjectStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [
        "name/chunks/0/0/1_0_3",
        "name/chunks/0/1/2_0_3",
        "name/chunks/1/0/3_0_3",
        "other/chunks/0/0/4_0_3",
        "name/meta",
    ]
    for key in keys:
        local_store.put(key, b"abc")
    scanned = record_calls(monkeypatch, "scandir")
    listed = [info.key for info in local_store.list("name/chunks/0/")]
    assert listed == ["name/chunks/0/0/1_0_3", "name/chunks/0/1/2_0_3"]
    chunks0 = root / "name" / "chunks" / "0"
    assert scanned and all(Path(args[0]).is_relative_to(chunks0) for args in scanned), scanned


def test_a_range_read_reads_only_the_range(
    local_store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_store.put(BLOCK_KEY, bytes(range(256)) * 64)
    preads = record_calls(monkeypatch, "pread")
    assert local_store.get(BLOCK_KEY, 1000, 1010) == (bytes(range(256)) * 64)[1000:1010]
    assert [(size, offset) for _, size, offset in preads] == [(10, 1000)]
    preads.clear()
    assert len(local_store.get(BLOCK_KEY)) == 256 * 64
    assert [(size, offset) for _, size, offset in preads] == [(256 * 64, 0)]


@pytest.mark.parametrize(("fsync", "expected"), [(False, 0), (True, 2)])
def test_fsync_option(
    root: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool, expected: int
) -> None:
    store = LocalObjectStore.from_uri(str(root), fsync=fsync)
    synced = record_calls(monkeypatch, "fsync")
    store.put(BLOCK_KEY, b"x")
    assert len(synced) == expected  # the file, then its directory


# --------------------------------------------------------------------------- errors


def test_os_errors_become_store_errors_naming_the_key(local_store: LocalObjectStore) -> None:
    local_store.put("f", b"a file")
    with pytest.raises(ObjectStoreError, match="'f/x'") as caught:
        local_store.put("f/x", b"below a file")
    assert caught.value.errno == errno.ENOTDIR
    assert not isinstance(caught.value, ObjectNotFound)
    with pytest.raises(ObjectNotFound, match="'f/x'") as missing:
        local_store.get("f/x")
    assert missing.value.errno == errno.ENOENT


# --------------------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    "form",
    [
        "file://{root}",
        "file://{root}/",
        "FILE://{root}",
        "{root}",
        "{root}/",
        "file://rel/dir",
        "rel/dir",
    ],
)
def test_from_uri_forms(
    form: str, tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = LocalObjectStore.from_uri(form.format(root=root))
    expected = root if "{root}" in form else tmp_path / "rel" / "dir"
    assert store.root == expected
    assert expected.is_dir()  # created when missing
    assert store.uri == f"file://{expected}/"
    assert LocalObjectStore.from_uri(store.uri).root == expected


def test_the_root_may_be_given_through_a_symlink(tmp_path: Path, root: Path) -> None:
    root.mkdir()
    (tmp_path / "via").symlink_to(root, target_is_directory=True)
    store = LocalObjectStore.from_uri(str(tmp_path / "via"))
    store.put(BLOCK_KEY, b"x")
    assert (root / BLOCK_KEY).read_bytes() == b"x"
    assert [info.key for info in store.list()] == [BLOCK_KEY]


@pytest.mark.parametrize("uri", ["", "   ", "s3://bucket/x", "gs://b", "file://", "/tmp/a\0b"])
def test_bad_uris_are_refused(uri: str) -> None:
    with pytest.raises(VolumeValidationError):
        LocalObjectStore.from_uri(uri)


def test_a_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(VolumeValidationError, match="not a directory"):
        LocalObjectStore.from_uri(str(tmp_path / "file"))


@pytest.mark.parametrize(
    ("options", "message"), [({"fsync": "yes"}, "bool"), ({"mode": 1}, "mode")]
)
def test_bad_options_are_refused(root: Path, options: dict[str, object], message: str) -> None:
    with pytest.raises(VolumeValidationError, match=message):
        LocalObjectStore.from_uri(str(root), **options)
