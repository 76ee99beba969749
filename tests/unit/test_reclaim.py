"""A writable mount reclaims its own garbage, and marks its slice domain live for gc.

Every bucket here is a memory store, so the tests look at exactly which blocks it holds.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import volume.gc
from volume import Volume
from volume.gc import collect, fsck
from volume.testing.memory import MemoryObjectStore

pytestmark = pytest.mark.filterwarnings("ignore:kernel \\(FUSE\\) mounts:RuntimeWarning")

FAR = 100 * 3600.0


@pytest.fixture
def store() -> MemoryObjectStore:
    name = f"reclaim-{uuid.uuid4().hex[:8]}"
    yield MemoryObjectStore.from_uri(f"memory://{name}")
    MemoryObjectStore.reset(name)


def chunk_bytes(store: MemoryObjectStore, family: str) -> tuple[int, int]:
    """(blocks, bytes) under the family's chunks/."""
    infos = list(store.list(f"{family}/chunks/"))
    return len(infos), sum(i.size for i in infos)


def settle(rw) -> None:
    """Every write published and stored, every compaction done, every reclaim decided."""
    rw._mount.engine.drain()
    assert rw._mount.reclaimer.wait_idle(30)


def read_version(version) -> dict[str, bytes]:
    ro = version.mount(transport="none")
    try:
        fs = ro._mount.pathfs
        return {n: fs.read_bytes(f"/{n}") for n in sorted(fs.listdir("/"))}
    finally:
        ro.unmount()


def test_overwriting_a_file_keeps_only_the_live_blocks(store: MemoryObjectStore):
    rw = Volume.new("owr", bucket=store.uri.rstrip("/")).mount(transport="none")
    fs = rw._mount.pathfs
    for i in range(20):
        fs.write_bytes("/f.bin", bytes([i]) * (1 << 20))
    settle(rw)
    assert chunk_bytes(store, "owr") == (1, 1 << 20)
    assert rw._mount.reclaimer.stats.slices == 19
    v1 = rw.commit("v1")
    for i in range(20, 30):  # v1's blocks stay; the working copy's garbage goes
        fs.write_bytes("/f.bin", bytes([i]) * (1 << 20))
    fs.write_bytes("/g.bin", b"g" * 5000)
    fs.truncate("/g.bin", 0)
    settle(rw)
    assert chunk_bytes(store, "owr") == (2, 2 << 20)
    assert read_version(v1) == {"f.bin": bytes([19]) * (1 << 20)}
    v2 = rw.finalize("v2")
    assert read_version(v2) == {"f.bin": bytes([29]) * (1 << 20), "g.bin": b""}
    assert collect(store, now=time.time() + FAR).totals()["garbage_blocks"] == 0


def test_a_published_version_reads_after_its_slices_are_overwritten(store: MemoryObjectStore):
    rw = Volume.new("pub", bucket=store.uri.rstrip("/")).mount(transport="none")
    fs = rw._mount.pathfs
    fs.write_bytes("/a", b"A" * 300_000)
    fs.write_bytes("/b", b"B" * 10)
    v1 = rw.commit("v1")
    fork_point = rw.fork("pub-fork")  # a fork of the live handle: one more published snapshot
    fs.write_bytes("/a", b"a" * 1000)
    fs.unlink("/b")
    for _ in range(5):
        fs.write_bytes("/c", os.urandom(70_000))
    settle(rw)
    assert rw._mount.reclaimer.stats.slices == 4  # four of the five /c slices; never /a, /b
    assert read_version(v1) == {"a": b"A" * 300_000, "b": b"B" * 10}
    assert fsck(v1).ok
    child = fork_point.mount(transport="none")
    assert child._mount.pathfs.read_bytes("/a") == b"A" * 300_000
    child.finalize("child")
    rw.finalize("v2")


def test_open_unlinked_and_cloned_slices_are_kept_until_their_last_reference(
    store: MemoryObjectStore,
):
    rw = Volume.new("keep", bucket=store.uri.rstrip("/")).mount(transport="none")
    fs = rw._mount.pathfs
    fs.write_bytes("/src", b"S" * 100_000)
    fd_in = fs.open("/src", os.O_RDONLY)
    fd_out = fs.open("/dst", os.O_WRONLY | os.O_CREAT)
    assert fs.copy_file_range(fd_in, fd_out, 100_000, 0, 0) == 100_000  # a clone: refs 2
    fs.close(fd_out)
    fs.unlink("/src")  # still open: sustained
    settle(rw)
    assert chunk_bytes(store, "keep")[0] == 1
    assert fs.read(fd_in, 100_000, 0) == b"S" * 100_000
    fs.close(fd_in)  # the clone still references the slice
    settle(rw)
    assert fs.read_bytes("/dst") == b"S" * 100_000
    assert chunk_bytes(store, "keep")[0] == 1
    fs.unlink("/dst")
    settle(rw)
    assert chunk_bytes(store, "keep") == (0, 0)
    rw.finalize("empty")


OPS = st.lists(
    st.tuples(
        st.sampled_from(["write", "pwrite", "truncate", "delete", "clone", "commit"]),
        st.integers(0, 2), st.integers(0, 2), st.integers(0, 200_000),
    ),
    min_size=1, max_size=25,
)  # fmt: skip


def _run_plan(ops) -> None:
    name = f"reclaimprop-{uuid.uuid4().hex[:8]}"
    store = MemoryObjectStore.from_uri(f"memory://{name}")
    try:
        rw = Volume.new("prop", bucket=f"memory://{name}").mount(transport="none")
        fs = rw._mount.pathfs
        model: dict[str, bytes] = {}
        published = []
        for step, (op, f, g, n) in enumerate(ops):
            path, other = f"/f{f}", f"/f{g}"
            if op == "write":
                data = bytes([step % 251 + 1]) * n
                fs.write_bytes(path, data)
                model[path] = data
            elif op == "pwrite":
                data = bytes([step % 251 + 1]) * (n % 70_000 + 1)
                off = n // 2
                fd = fs.open(path, os.O_WRONLY | os.O_CREAT)
                fs.write(fd, data, off)
                fs.close(fd)
                cur = bytearray(model.get(path, b""))
                cur.extend(bytes(max(0, off - len(cur))))
                cur[off : off + len(data)] = data
                model[path] = bytes(cur)
            elif op == "truncate" and path in model:
                fs.truncate(path, n // 3)
                model[path] = (model[path] + bytes(n))[: n // 3]
            elif op == "delete" and path in model:
                fs.unlink(path)
                del model[path]
            elif op == "clone" and path in model and path != other:
                fd_in = fs.open(path, os.O_RDONLY)
                fd_out = fs.open(other, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                fs.copy_file_range(fd_in, fd_out, len(model[path]), 0, 0)
                fs.close(fd_out)
                fs.close(fd_in)
                model[other] = model[path]
            elif op == "commit":
                published.append((rw.commit(f"step {step}"), dict(model)))
            settle(rw)  # compactions never race a truncate: nothing leaks by accident
        published.append((rw.finalize("end"), dict(model)))
        for version, expected in published:
            got = read_version(version)
            assert got == {k[1:]: v for k, v in expected.items()}, version.message
            assert fsck(version).ok
        # every block left is reachable from a published version (volume.gc's reachability)
        report = collect(store, now=time.time() + FAR).families[0]
        assert report.garbage_blocks == 0, report
    finally:
        MemoryObjectStore.reset(name)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=OPS)
def test_reclaim_keeps_every_published_block_and_leaves_no_garbage(ops):
    _run_plan(ops)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=OPS)
def test_reclaim_property_long_run(ops):
    _run_plan(ops)


# --------------------------------------------------------------------------- gc liveness


def test_gc_never_deletes_the_blocks_of_a_live_library_mount(
    store: MemoryObjectStore, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(volume.gc, "HEARTBEAT_SECONDS", 0.05)
    grace = 0.5
    rw = Volume.new("live", bucket=store.uri.rstrip("/")).mount(transport="none")
    fs = rw._mount.pathfs
    fs.write_bytes("/unpublished.bin", b"u" * 200_000)
    rw._mount.engine.drain()
    time.sleep(2 * grace)  # the domain's claim is older than the grace period
    deleted: list[int] = []
    stop = threading.Event()

    def collector() -> None:
        while not stop.is_set():
            deleted.append(collect(store, grace=grace, delete=True).totals()["deleted_blocks"])

    t = threading.Thread(target=collector)
    t.start()
    for i in range(5):
        fs.write_bytes(f"/more{i}.bin", bytes([i]) * 50_000)
        rw._mount.engine.drain()
        time.sleep(0.1)
    stop.set()
    t.join()
    assert deleted and sum(deleted) == 0
    assert fs.read_bytes("/unpublished.bin") == b"u" * 200_000
    version = rw.commit("kept")
    assert fsck(version).ok
    # control: without the marker, the same gc deletes what the session has not published yet
    fs.write_bytes("/late.bin", b"l" * 1000)
    rw._mount.engine.drain()
    rw._mount.live.stop()
    time.sleep(grace)
    assert collect(store, grace=grace, delete=True).totals()["deleted_blocks"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rw.unmount()


# --------------------------------------------------------------------------- compaction


def test_slices_compacted_away_are_reclaimed(tmp_path):
    """In-place overwrites stack records (the hidden slices stay referenced); the compaction
    that drops them frees them, and the reclaimer deletes their blocks."""
    from volume_local import LocalObjectStore
    from volume_sqlite import SQLiteMetaStore

    from volume.allocator import DOMAIN_BITS, enter_domain
    from volume.engine import CompactionPolicy, Engine, PathFS, format_volume, new_format
    from volume.engine.reclaim import Reclaimer

    objects = LocalObjectStore(tmp_path / "bucket")
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    format_volume(meta, objects, new_format("cmp", storage="file", bucket=objects.uri,
                                            block_size_kib=64))  # fmt: skip
    with meta.transaction(write=True) as tx:
        enter_domain(tx, 5)
    engine = Engine(meta, objects, compaction=CompactionPolicy(at_records=8, background=False))
    reclaimer = Reclaimer(engine, 5)
    fs = PathFS(engine)
    fd = fs.open("/f", os.O_WRONLY | os.O_CREAT)
    for i in range(8):  # each overwrite hides the previous slice; the 8th record compacts
        fs.write(fd, bytes([i + 1]) * (2 << 20), 0)
        fs.fsync(fd)
    fs.close(fd)
    engine.drain()
    assert reclaimer.wait_idle(30)
    keys = [i.key for i in objects.list("cmp/chunks/")]
    assert reclaimer.stats.slices == 7 and len(keys) == 32  # one 2 MiB slice of 64 KiB blocks
    assert all(int(k.rsplit("/", 1)[1].split("_")[0]) >> DOMAIN_BITS == 5 for k in keys)
    assert fs.read_bytes("/f") == bytes([8]) * (2 << 20)
    reclaimer.stop()
    engine.close()
    meta.close()


# --------------------------------------------------------------------------- concurrency


def test_commits_racing_writers_and_the_reclaimer_lose_no_published_block(
    store: MemoryObjectStore,
):
    """Writers overwrite, truncate and delete while the handle commits again and again: every
    block of every published version is still there (fsck), and the garbage went."""
    rw = Volume.new("race", bucket=store.uri.rstrip("/")).mount(transport="none")
    fs = rw._mount.pathfs
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        i = 0
        try:
            while not stop.is_set():
                i += 1
                path = f"/w{w}-{i % 3}"
                fs.write_bytes(path, bytes([i % 250 + 1]) * (1000 + i * 37 % 90_000))
                if i % 5 == 0:
                    fs.truncate(path, 500)
                if i % 7 == 0:
                    fs.unlink(path)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    versions = []
    for n in range(6):
        time.sleep(0.05)
        versions.append(rw.commit(f"c{n}"))
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    reclaimer = rw._mount.reclaimer
    versions.append(rw.finalize("end"))
    assert reclaimer.stats.slices > 0
    assert rw._mount is None
    for v in versions:
        report = fsck(v)
        assert report.ok, (v.message, report.missing)
    totals = collect(store, now=time.time() + FAR).totals()
    assert totals["reachable_blocks"] > 0


def test_in_place_rewrites_are_compacted_and_reclaimed(store: MemoryObjectStore):
    """pwrite over a whole file (no O_TRUNC) stacks records; the rewrite that hides every earlier
    one asks for a compaction (no copy), which frees the hidden slices."""
    rw = Volume.new("inplace", bucket=store.uri.rstrip("/")).mount(transport="none")
    fs = rw._mount.pathfs
    for i in range(6):
        fd = fs.open("/db", os.O_WRONLY | os.O_CREAT)
        fs.write(fd, bytes([i + 1]) * (3 << 20), 0)
        fs.close(fd)
    settle(rw)
    assert chunk_bytes(store, "inplace") == (1, 3 << 20)
    fd = fs.open("/db", os.O_WRONLY)
    fs.write(fd, b"x" * 1000, 5000)  # a small in-place write hides nothing whole: kept
    fs.close(fd)
    settle(rw)
    assert chunk_bytes(store, "inplace")[0] == 2
    expected = bytearray(bytes([6]) * (3 << 20))
    expected[5000:6000] = b"x" * 1000
    assert fs.read_bytes("/db") == bytes(expected)
    assert read_version(rw.finalize("end")) == {"db": bytes(expected)}


def test_the_copy_of_a_compaction_that_lost_a_race_is_reclaimed(tmp_path):
    """A compaction whose chunk was truncated while it copied commits nothing: its new slice is
    nobody's, and its blocks go."""
    from volume_sqlite import SQLiteMetaStore

    from volume.allocator import enter_domain
    from volume.engine import CompactionPolicy, Engine, PathFS, format_volume, new_format
    from volume.engine.reclaim import Reclaimer

    from .test_engine_compaction import GatedReads, scattered_writes, start_gated_compaction

    objects = GatedReads(tmp_path / "bucket")
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    format_volume(meta, objects, new_format("race", storage="file", bucket=objects.uri,
                                            block_size_kib=64))  # fmt: skip
    with meta.transaction(write=True) as tx:
        enter_domain(tx, 3)
    engine = Engine(meta, objects, compaction=CompactionPolicy(at_records=10_000, background=False))
    reclaimer = Reclaimer(engine, 3)
    fs = PathFS(engine)
    model = bytearray(os.urandom(300_000))
    fs.write_bytes("/f", bytes(model))
    fd = fs.open("/f", os.O_RDWR)
    scattered_writes(fs, fd, model, 30)
    ino = fs.fstat(fd).st_ino
    with reclaimer._lock:  # no decision until the compaction is done (it reads the old slices)
        thread, result = start_gated_compaction((objects, tmp_path / "meta"), engine, ino)
        fs.ftruncate(fd, 0)  # every slice of the chunk is freed while the compaction copies
        objects.go.set()
        thread.join()
    assert result == [False]
    engine.drain()
    assert reclaimer.wait_idle(30)
    assert list(objects.list("race/chunks/")) == []  # the 31 slices and the copy
    assert reclaimer.stats.slices == 32
    fs.close(fd)
    reclaimer.stop()
    engine.close()
    meta.close()


def test_a_resumed_working_copy_never_deletes_its_earlier_sessions_blocks(
    store: MemoryObjectStore, tmp_path
):
    """A crashed session's working copy is resumed in a new slice domain: the slices the earlier
    session wrote (published or not) are never the resumed session's to delete."""
    meta_dir = tmp_path / "wc"
    rw = Volume.new("resume", bucket=store.uri.rstrip("/")).mount(
        transport="none", meta_dir=meta_dir
    )
    fs = rw._mount.pathfs
    fs.write_bytes("/a", b"A" * 70_000)
    v1 = rw.commit("v1")
    fs.write_bytes("/b", b"B" * 80_000)  # written after the commit: unpublished
    rw._mount.engine.drain()
    m, rw._mount = rw._mount, None
    m.close(drain=True)  # the process "dies": the working copy stays in meta_dir, in use
    before = {i.key for i in store.list("resume/chunks/")}
    assert len(before) == 2

    rw = rw.mount(transport="none", meta_dir=meta_dir)  # resumed, in a fresh domain
    fs = rw._mount.pathfs
    assert fs.read_bytes("/b") == b"B" * 80_000
    fs.write_bytes("/a", b"a" * 1000)
    fs.unlink("/b")
    for i in range(3):
        fs.write_bytes("/c", bytes([i]) * 5000)
    settle(rw)
    after = {i.key for i in store.list("resume/chunks/")}
    assert before <= after and len(after) == 4  # + the new /a and the last /c
    assert rw._mount.reclaimer.stats.slices == 2
    assert read_version(v1) == {"a": b"A" * 70_000}
    v2 = rw.finalize("v2")
    assert read_version(v2) == {"a": b"a" * 1000, "c": bytes([2]) * 5000}
