"""Foreign writers cannot hurt a published version (pins, ``spec/index-format.md``).

The stock JuiceFS client mounts a copy of a published index read-write, overwrites, truncates
and deletes everything, and runs its background cleanup with the trash off; afterwards every
version of the family still reads back byte for byte, our metadata check passes on every index,
and the client's new slices all lie in the foreign lane, which no session of ours can claim. The
same run on an index without pins (a copy of the bucket) loses shared blocks: the hazard is real.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from volume_sqlite import SQLiteMetaStore

from tests.jfsclient import SKIP_REASON, juicefs_binary
from volume import ROVolume, Volume
from volume.allocator import DOMAIN_BITS, FOREIGN_DOMAIN
from volume.engine.check import check_metadata
from volume.errors import VolumeError
from volume.pins import FOREIGN_CHUNK, SLICE_PIN
from volume.testing.lifecycle_machine import read_tree

JUICEFS = juicefs_binary()
FUSE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None

pytestmark = [
    pytest.mark.skipif(JUICEFS is None, reason=SKIP_REASON),
    pytest.mark.skipif(not FUSE, reason="/dev/fuse or fusermount3 missing"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


def juicefs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JUICEFS, *args], capture_output=True, text=True, timeout=120, check=check,
        env={**os.environ, "JFS_NO_CHECK_OBJECT_STORAGE": "1"},
    )  # fmt: skip


def family(bucket: str) -> dict[str, tuple[ROVolume, dict[str, bytes]]]:
    """A base with commits and a fork sharing most blocks; name -> (version, content)."""
    big = os.urandom(5 << 20)  # two blocks
    rw = Volume.new("fam", bucket=bucket).mount(transport="none")
    fs = rw._mount.pathfs
    content = {"big": big, "small": b"small" * 100, "d/x": os.urandom(70_000)}
    fs.mkdir("/d")
    for path, data in content.items():
        fs.write_bytes("/" + path, data)
    out = {"c1": (rw.commit("c1"), dict(content))}
    fork = out["c1"][0].fork("side").mount(transport="none")
    fork._mount.pathfs.write_bytes("/side", b"side")
    out["side"] = (fork.finalize("side"), {**content, "side": b"side"})
    fs.truncate("/small", 10)
    content["small"] = content["small"][:10]
    out["c2"] = (rw.finalize("c2"), dict(content))
    return out


def writable_copy(version: ROVolume, where: Path) -> Path:
    """A copy of the version's index with the trash off (so deletes are immediate)."""
    where.mkdir()
    SQLiteMetaStore.restore(version.index.path[len("file://") :], where)
    meta = SQLiteMetaStore.open(where)
    try:
        meta.save_format(dataclasses.replace(meta.load_format(), TrashDays=0))
    finally:
        meta.close()
    return where / SQLiteMetaStore.index_filename


def foreign_writer(index: Path | str, mnt: Path, bucket: str) -> None:
    """The stock client, read-write: overwrite, truncate, delete everything, write anew
    (``index``: a SQLite file, or the URL of a metadata server)."""
    mnt.mkdir()
    url = index if isinstance(index, str) else f"sqlite3://{index}"
    juicefs("mount", url, str(mnt), "-d", "--no-usage-report",
            "--bucket", bucket.rstrip("/") + "/")  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert time.monotonic() < deadline, "juicefs did not mount"
            time.sleep(0.1)
        (mnt / "big").write_bytes(b"overwritten")
        with open(mnt / "d" / "x", "r+b") as f:
            f.seek(100)
            f.write(b"patched")
        os.truncate(mnt / "d" / "x", 50)
        for p in ("big", "small", "d/x", "side"):
            if (mnt / p).exists():
                os.remove(mnt / p)
        (mnt / "fresh").write_bytes(os.urandom(300_000))
        time.sleep(3)  # let the client's background deletes run
    finally:
        juicefs("umount", str(mnt), check=False)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def chunk_keys(bucket: str) -> set[str]:
    root = Path(bucket)
    return {str(p.relative_to(root)) for p in (root / "fam" / "chunks").rglob("*") if p.is_file()}


def reads_back(
    versions: dict[str, tuple[ROVolume, dict[str, bytes]]], tmp: Path
) -> dict[str, bool]:
    out = {}
    for name, (version, content) in versions.items():
        try:
            with version.mount(transport="none", meta_dir=tmp / f"ro-{name}") as ro:
                out[name] = read_tree(ro._mount.pathfs) == content
        except (VolumeError, OSError):
            out[name] = False
    return out


def test_published_indexes_are_pinned(tmp_path: Path) -> None:
    versions = family(str(tmp_path / "bucket"))
    for name, (version, _) in versions.items():
        where = tmp_path / f"check-{name}"
        where.mkdir()
        SQLiteMetaStore.restore(version.index.path[len("file://") :], where)
        with SQLiteMetaStore.open(where, read_only=True) as meta:
            assert check_metadata(meta) == []
            with meta.transaction() as tx:
                refs = [r for _, _, r in tx.slice_refs()]
                assert tx.get_counter("nextChunk") == FOREIGN_CHUNK
        assert refs and all(SLICE_PIN <= r < SLICE_PIN + 100 for r in refs)


def test_stock_client_writing_a_copy_cannot_hurt_the_family(tmp_path: Path) -> None:
    bucket = str(tmp_path / "bucket")
    versions = family(bucket)
    before = chunk_keys(bucket)
    copy = writable_copy(versions["c2"][0], tmp_path / "copy")
    foreign_writer(copy, tmp_path / "mnt", bucket)
    after = chunk_keys(bucket)
    assert before <= after, f"the foreign writer deleted {sorted(before - after)[:5]}"
    new = after - before
    assert new, "the foreign writer stored nothing"
    lanes = {int(k.rsplit("/", 1)[1].split("_")[0]) >> DOMAIN_BITS for k in new}
    assert lanes == {FOREIGN_DOMAIN}
    assert all(reads_back(versions, tmp_path).values())
    for name, (version, _) in versions.items():
        with version.mount(transport="none", meta_dir=tmp_path / f"ro-{name}") as ro:
            assert check_metadata(ro._mount.meta) == []
    with SQLiteMetaStore.open(copy.parent, read_only=True) as meta:  # what the client left
        assert check_metadata(meta) == []
    # a new session of ours after it: its own lane, and the family still intact
    later = versions["c2"][0].fork("later").mount(transport="none")
    later._mount.pathfs.write_bytes("/later", b"later" * 1000)
    v = later.finalize("later")
    with v.mount(transport="none") as ro:
        assert read_tree(ro._mount.pathfs) == {**versions["c2"][1], "later": b"later" * 1000}
    again = tmp_path / "again"
    again.mkdir()
    assert all(reads_back(versions, again).values())


def test_without_pins_the_stock_client_deletes_shared_blocks(tmp_path: Path) -> None:
    """The control: strip the pins from a copy (of the index and of the bucket)."""
    bucket = str(tmp_path / "bucket")
    versions = family(bucket)
    copy = writable_copy(versions["c2"][0], tmp_path / "copy")
    meta = SQLiteMetaStore.open(copy.parent)
    try:
        with meta.transaction(write=True) as tx:
            for sid, size, refs in list(tx.slice_refs()):
                tx.add_slice_ref(sid, size, -SLICE_PIN)
    finally:
        meta.close()
    before = chunk_keys(bucket)
    foreign_writer(copy, tmp_path / "mnt", bucket)
    assert before - chunk_keys(bucket), "without pins the client deletes blocks other versions use"
    assert not all(reads_back(versions, tmp_path).values())
