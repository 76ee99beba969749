"""One view: the in-process ``.fs`` of a kernel-mounted handle and the kernel mount always show
the same tree and bytes, whichever side changes it (kernel caches at their defaults)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from volume import Volume

pytestmark = pytest.mark.fuse


@pytest.fixture
def rw(tmp_path: Path):
    handle = Volume.new("oneview", bucket=str(tmp_path / "bucket")).mount(
        mount_path=tmp_path / "mnt", attr_cache=60, entry_cache=60, dir_entry_cache=60
    )
    yield handle, tmp_path / "mnt"
    if handle.mounted:
        handle.unmount()


def test_in_process_rename_is_seen_by_the_kernel(rw) -> None:
    handle, mnt = rw
    (mnt / "a.txt").write_text("old a")
    assert (mnt / "a.txt").read_text() == "old a"  # the kernel caches the name and the pages
    handle.fs.mv("/a.txt", "/c.txt")
    assert not (mnt / "a.txt").exists()
    with pytest.raises(FileNotFoundError):
        open(mnt / "a.txt").close()
    assert (mnt / "c.txt").read_text() == "old a"
    assert sorted(os.listdir(mnt)) == ["c.txt"]


def test_in_process_create_remove_and_rewrite_are_seen_by_the_kernel(rw) -> None:
    handle, mnt = rw
    assert not (mnt / "new.txt").exists()  # a negative lookup first
    handle.fs.pipe_file("/new.txt", b"fresh")
    assert (mnt / "new.txt").read_bytes() == b"fresh"
    handle.fs.pipe_file("/new.txt", b"FRESH")  # same size, new bytes
    assert (mnt / "new.txt").read_bytes() == b"FRESH"
    handle.fs.mkdir("/d")
    handle.fs.pipe_file("/d/x", b"x")
    assert (mnt / "d" / "x").read_bytes() == b"x"
    handle.fs.mv("/d", "/e")
    assert not (mnt / "d" / "x").exists() and (mnt / "e" / "x").read_bytes() == b"x"
    handle.fs.rm("/new.txt")
    assert not (mnt / "new.txt").exists()
    assert sorted(os.listdir(mnt)) == ["e"]


def test_kernel_changes_are_seen_in_process(rw) -> None:
    handle, mnt = rw
    (mnt / "k.txt").write_text("kernel")
    assert handle.fs.cat_file("/k.txt") == b"kernel"
    os.rename(mnt / "k.txt", mnt / "m.txt")
    assert not handle.fs.exists("/k.txt") and handle.fs.cat_file("/m.txt") == b"kernel"


def test_both_sides_at_once_agree(rw) -> None:
    """Renames in-process while the kernel side reads: every kernel read sees a name's current
    file or no file, never a file under a name it no longer has."""
    handle, mnt = rw
    for i in range(20):
        handle.fs.pipe_file(f"/f{i}", f"content {i}".encode())
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for i in range(20):
                for name in (f"f{i}", f"g{i}"):
                    try:
                        data = (mnt / name).read_text()
                    except FileNotFoundError:
                        continue
                    if data != f"content {i}":
                        errors.append(f"{name}: {data!r}")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(3):
            for i in range(20):
                handle.fs.mv(f"/f{i}", f"/g{i}")
            for i in range(20):
                handle.fs.mv(f"/g{i}", f"/f{i}")
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors[:5]
    assert sorted(os.listdir(mnt)) == sorted(f"f{i}" for i in range(20))
    time.sleep(0.2)  # the repeated invalidation of names a racing kernel lookup re-cached
    for i in range(20):
        handle.fs.mv(f"/f{i}", f"/h{i}")
        assert not (mnt / f"f{i}").exists() and (mnt / f"h{i}").read_text() == f"content {i}"


def test_in_process_fallocate_and_copy_file_range_are_seen_by_the_kernel(rw) -> None:
    """fallocate takes a handle and copy_file_range changes its destination (third argument):
    the kernel must drop the pages of the file that changed, not of another one."""
    handle, mnt = rw
    (mnt / "src").write_bytes(b"S" * 8192)
    (mnt / "dst").write_bytes(b"d" * 8192)
    assert (mnt / "dst").read_bytes() == b"d" * 8192  # the kernel caches dst's pages
    fs = handle._mount.pathfs
    src = fs.open("/src", os.O_RDONLY)
    dst = fs.open("/dst", os.O_RDWR)
    try:
        assert fs.copy_file_range(src, dst, 4096, 0, 0) == 4096
    finally:
        fs.close(src)
    assert (mnt / "dst").read_bytes() == b"S" * 4096 + b"d" * 4096
    try:
        fs.fallocate(dst, 0x02 | 0x01, 0, 4096)  # PUNCH_HOLE | KEEP_SIZE
    finally:
        fs.close(dst)
    assert (mnt / "dst").read_bytes() == bytes(4096) + b"d" * 4096
