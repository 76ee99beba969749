"""A working copy kept in a ``meta_dir`` for a resume survives gc, however old it gets.

Its slice domains are marked in the bucket (``<Name>/_volume/kept/<d>``) before its session stores
a block, so neither an exit without finalizing nor a SIGKILL leaves fsync'd blocks that gc may
delete; finalizing (or discarding) the copy removes the marks, and gc collects its garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from pathlib import Path

import pytest

from tests.cli.conftest import volume
from volume import Volume
from volume.gc import collect, fsck
from volume.keys import kept_prefix
from volume.metadir import MARKER_FILE
from volume.testing.memory import MemoryObjectStore

LATER = 2 * 3600.0  # past the default grace period: claims and heartbeats are all stale


@pytest.fixture
def store() -> MemoryObjectStore:
    name = f"kept-{uuid.uuid4().hex[:8]}"
    yield MemoryObjectStore.from_uri(f"memory://{name}")
    MemoryObjectStore.reset(name)


def content(name: str, size: int) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def fsync_write(fs, path: str, data: bytes) -> None:
    fd = fs.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
    try:
        fs.write(fd, data)
        fs.fsync(fd)
    finally:
        fs.close(fd)


def kept(store, family: str) -> dict[int, dict]:
    return {
        int(i.key.rpartition("/")[2]): json.loads(store.get(i.key))
        for i in store.list(kept_prefix(family))
    }


def leave_behind(rw) -> None:
    """The process goes away without finalizing (as at exit): the copy stays in its meta_dir."""
    m, rw._mount = rw._mount, None
    m.close(drain=True)


FILES = {f"/d{i % 3}/f{i}": 1000 + 37_000 * i for i in range(8)}  # 1 KB .. 260 KB


def test_a_kept_copy_survives_gc_and_resumes_with_every_byte(store, tmp_path: Path):
    meta_dir = tmp_path / "wc"
    rw = Volume.new("keptvol", bucket=store.uri.rstrip("/")).mount(
        transport="none", meta_dir=meta_dir
    )
    first_domain = int(rw._mount.meta_dir.marker()["domain"])
    assert set(kept(store, "keptvol")) == {first_domain}  # marked at mount, before any block
    fs = rw._mount.pathfs
    for d in ("/d0", "/d1", "/d2"):
        fs.mkdir(d)
    fs.write_bytes("/old", b"x" * 50_000)
    v1 = rw.commit("v1")
    fs.write_bytes("/old", b"y" * 60_000)  # v1's /old becomes garbage once the copy is finalized
    for path, size in FILES.items():
        fsync_write(fs, path, content(path, size))
    leave_behind(rw)

    dry = collect(store, now=time.time() + LATER)
    [family] = dry.families
    assert [k["domain"] for k in family.kept] == [first_domain]
    [mark] = family.kept
    assert mark["meta_dir"] == str(meta_dir.resolve()) and mark["volume"] == "keptvol"
    assert mark["age_seconds"] >= LATER - 60 and mark["host"] and mark["pid"] == os.getpid()
    assert first_domain in family.protected_domains and family.garbage_blocks == 0

    done = collect(store, grace=0, delete=True, now=time.time() + LATER)
    assert done.families[0].deleted_blocks == 0

    rw = rw.mount(transport="none", meta_dir=meta_dir)  # resumed, in a new domain
    second_domain = int(rw._mount.meta_dir.marker()["domain"])
    assert set(kept(store, "keptvol")) == {first_domain, second_domain}
    fs = rw._mount.pathfs
    for path, size in FILES.items():
        assert fs.read_bytes(path) == content(path, size), path
    fs.write_bytes("/late", b"z" * 10_000)
    leave_behind(rw)  # left behind twice: both domains are still kept
    assert collect(store, grace=0, delete=True, now=time.time() + LATER).totals()[
        "deleted_blocks"
    ] == 0

    rw = rw.mount(transport="none", meta_dir=meta_dir)
    fs = rw._mount.pathfs
    assert fs.read_bytes("/late") == b"z" * 10_000
    for path, size in FILES.items():
        assert fs.read_bytes(path) == content(path, size), path
    v2 = rw.finalize("v2")
    assert kept(store, "keptvol") == {}  # finalized: the marks are gone

    # now v1's first /old is the only garbage that is no session's (v1 still names it: kept)
    report = collect(store, grace=0, delete=True, now=time.time() + LATER).families[0]
    assert report.kept == [] and report.unreadable == []
    for version in (v1, v2):
        assert fsck(version).ok
    with v2.mount(transport="none") as ro:
        for path, size in FILES.items():
            assert ro._mount.pathfs.read_bytes(path) == content(path, size)


def test_a_finalized_copy_leaves_its_garbage_to_gc(store, tmp_path: Path):
    """Blocks of a kept copy that its final version does not name go with the next gc."""
    meta_dir = tmp_path / "wc"
    rw = Volume.new("garbage", bucket=store.uri.rstrip("/")).mount(
        transport="none", meta_dir=meta_dir
    )
    rw._mount.reclaimer.stop(drain=False)  # keep the session's own garbage for gc to find
    rw._mount.reclaimer = None
    fs = rw._mount.pathfs
    fsync_write(fs, "/f", b"1" * 20_000)
    fsync_write(fs, "/f", b"2" * 30_000)  # the first content is garbage of the kept domain
    leave_behind(rw)
    later = time.time() + LATER
    assert collect(store, grace=0, now=later).totals()["garbage_blocks"] == 0  # kept

    rw = rw.mount(transport="none", meta_dir=meta_dir)
    v = rw.finalize("v")
    report = collect(store, grace=0, delete=True, now=later).families[0]
    assert report.deleted_blocks == 1 and report.deleted_bytes == 20_000
    assert fsck(v).ok


def test_an_abandoned_copy_drops_its_marks(store, tmp_path: Path):
    rw = Volume.new("dropped", bucket=store.uri.rstrip("/")).mount(
        transport="none", meta_dir=tmp_path / "wc"
    )
    rw._mount.pathfs.write_bytes("/f", b"f" * 1000)
    assert kept(store, "dropped")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rw.unmount()  # an explicit unmount abandons the working copy
    assert kept(store, "dropped") == {}
    assert rw._mount is None


def test_temporary_meta_dirs_mark_nothing(store):
    rw = Volume.new("temp", bucket=store.uri.rstrip("/")).mount(transport="none")
    rw._mount.pathfs.write_bytes("/f", b"f")
    assert kept(store, "temp") == {}  # the copy dies with its process: nothing to keep
    rw.finalize("v")


def test_reusing_a_meta_dir_for_another_volume_drops_the_old_marks(store, tmp_path: Path):
    meta_dir = tmp_path / "wc"
    rw = Volume.new("one", bucket=store.uri.rstrip("/")).mount(transport="none", meta_dir=meta_dir)
    rw._mount.pathfs.write_bytes("/f", b"f")
    leave_behind(rw)
    assert kept(store, "one")
    other = Volume.new("two", bucket=store.uri.rstrip("/")).mount(
        transport="none", meta_dir=meta_dir
    )  # discards the copy of "one" kept there
    assert kept(store, "one") == {} and kept(store, "two")
    other.finalize("v")


# --------------------------------------------------------------------------- SIGKILL

WRITER = textwrap.dedent(
    """
    import hashlib, os, sys
    from volume import Volume
    bucket, meta, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rw = Volume.new("killed", bucket=bucket).mount(transport="none", meta_dir=meta)
    fs = rw._mount.pathfs
    for i in range(count):
        name = f"/f{i}"
        seed = hashlib.sha256(name.encode()).digest()
        data = (seed * (i * 997 // 32 + 2))[: 3000 + i * 997]
        fd = fs.open(name, os.O_CREAT | os.O_WRONLY)
        fs.write(fd, data)
        fs.fsync(fd)
        fs.close(fd)
        print(name, len(data), flush=True)
    print("synced", flush=True)
    fs.write_bytes("/unsynced", b"u" * 5000)  # may or may not survive the kill
    sys.stdin.read()
    """
)


def test_a_sigkilled_copy_survives_volume_gc_and_resumes(tmp_path: Path):
    bucket, meta_dir = tmp_path / "bucket", tmp_path / "wc"
    proc = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", WRITER, str(bucket), str(meta_dir), "12"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    written: dict[str, int] = {}
    try:
        for line in proc.stdout:
            if line.strip() == "synced":
                break
            name, size = line.split()
            written[name] = int(size)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert len(written) == 12

    # the real command, grace 0: the killed session's claim and heartbeat no longer protect it
    result = volume("gc", str(bucket), "--grace", "0s", "--delete", "--json")
    assert result.code == 0, result.err
    report = result.json()
    [family] = report["families"]
    [mark] = family["kept"]
    assert mark["meta_dir"] == str(meta_dir.resolve()) and mark["volume"] == "killed"
    assert report["totals"]["deleted_blocks"] == 0
    assert report["totals"]["protected_blocks"] == report["totals"]["blocks"] >= 12
    text = volume("gc", str(bucket), "--grace", "0s")
    assert text.code == 0 and f"kept working copy: domain {mark['domain']}" in text.out
    assert str(meta_dir.resolve()) in text.out

    rw = Volume.new("killed", bucket=str(bucket)).mount(transport="none", meta_dir=meta_dir)
    fs = rw._mount.pathfs
    for name, size in written.items():
        seed = hashlib.sha256(name.encode()).digest()
        assert fs.read_bytes(name) == (seed * (size // 32 + 2))[:size], name
    v = rw.finalize("after the crash")
    assert not list((bucket / "killed" / "_volume").glob("kept/*"))
    assert fsck(v).ok
    after = volume("gc", str(bucket), "--grace", "0s", "--delete", "--json").json()
    assert after["families"][0]["kept"] == []
    assert fsck(v).ok


def test_volume_gc_forgets_a_kept_copy_whose_meta_dir_is_lost(tmp_path: Path):
    bucket = tmp_path / "bucket"
    rw = Volume.new("lost", bucket=str(bucket)).mount(transport="none", meta_dir=tmp_path / "wc")
    fsync_write(rw._mount.pathfs, "/f", b"f" * 3000)
    leave_behind(rw)
    domain = int(json.loads((tmp_path / "wc" / MARKER_FILE).read_text())["domain"])
    listed = volume("gc", str(bucket), "--grace", "0s")
    assert f"--forget-kept lost/{domain}" in listed.out

    bad = volume("gc", str(bucket), "--forget-kept", "lost/999")
    assert bad.code == 2 and "no kept working copy holds domain 999" in bad.err
    assert volume("gc", str(bucket), "--forget-kept", "nonsense").code == 2

    done = volume("gc", str(bucket), "--grace", "0s", "--delete", "--forget-kept",
                  f"lost/{domain}", "--json")  # fmt: skip
    assert done.code == 0, done.err
    report = done.json()
    assert report["families"][0]["kept"] == [] and report["totals"]["deleted_blocks"] == 1


def test_a_kept_copy_is_never_lost_to_a_read_only_mount_fork_or_migration(store, tmp_path):
    from volume.errors import VolumeStoreMismatch

    meta_dir = tmp_path / "wc"
    rw = Volume.new("guarded", bucket=store.uri.rstrip("/")).mount(
        transport="none", meta_dir=meta_dir
    )
    v1 = rw.commit("v1")
    fsync_write(rw._mount.pathfs, "/unpublished", b"u" * 4000)
    leave_behind(rw)
    for attempt in (
        lambda: v1.mount(transport="none", meta_dir=meta_dir),
        lambda: v1.fork("other", meta_dir=meta_dir),
        lambda: v1.migrate_metadata_store_type("redis", new_meta_dir=meta_dir),
    ):
        with pytest.raises(VolumeStoreMismatch, match="unpublished changes of volume 'guarded'"):
            attempt()
    rw = rw.mount(transport="none", meta_dir=meta_dir)  # still there, resumed
    assert rw._mount.pathfs.read_bytes("/unpublished") == b"u" * 4000
    rw.finalize("v2")
    with v1.mount(transport="none", meta_dir=meta_dir) as ro:  # published: free to reuse
        assert ro._mount.pathfs.listdir("/") == []
