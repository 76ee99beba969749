"""Lineage-wide gc: what it keeps, what it deletes, and that it never deletes a referenced block."""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli.conftest import volume
from volume import Volume
from volume.gc import LiveMarker, collect, fsck
from volume.testing.memory import MemoryObjectStore

HOUR = 3600.0


@pytest.fixture
def store() -> MemoryObjectStore:
    name = f"gc-{uuid.uuid4().hex[:8]}"
    yield MemoryObjectStore.from_uri(f"memory://{name}")
    MemoryObjectStore.reset(name)


def _blocks(store: MemoryObjectStore, family: str = "gcvol") -> set[str]:
    return {i.key for i in store.list(f"{family}/chunks/")}


def _abandon(version, name: str, data: bytes) -> None:
    """A writable session that writes and goes away without committing."""
    rw = version.fork(name).mount(transport="none")
    rw._mount.pathfs.write_bytes("/abandoned.bin", data)
    rw._mount.engine.drain()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rw.unmount()


def _family(store: MemoryObjectStore):
    rw = Volume.new("gcvol", bucket=store.uri.rstrip("/")).mount(transport="none")
    fs = rw._mount.pathfs
    fs.write_bytes("/kept.txt", b"kept by v1")
    fs.write_bytes("/overwritten.txt", b"first content")
    v1 = rw.commit("v1")
    fs.write_bytes("/overwritten.txt", b"second")  # v1 still references the first content
    fs.write_bytes("/scratch.txt", b"written, then deleted before any commit")
    rw._mount.engine.drain()
    fs.unlink("/scratch.txt")
    v2 = rw.finalize("v2")
    return v1, v2


def test_gc_keeps_what_versions_reference_and_deletes_the_rest(store: MemoryObjectStore):
    v1, v2 = _family(store)
    _abandon(v2, "gc-abandoned", b"never committed" * 1000)
    everything = _blocks(store)

    young = collect(store)  # every domain was claimed just now: all protected
    [family] = young.families
    assert family.name == "gcvol" and family.protected_blocks == len(everything)
    assert family.garbage_blocks == 0

    later = time.time() + 2 * HOUR  # two hours on: no session claimed or marked live since
    dry = collect(store, now=later)
    [family] = dry.families
    assert family.versions >= 2 and family.blocks == len(everything)
    # the abandoned session's file (the scratch file's block went with its mount's reclaimer)
    assert family.garbage_blocks == 1
    assert family.reachable_blocks == len(everything) - 1 and family.protected_blocks == 0
    assert _blocks(store) == everything  # a dry run deletes nothing

    done = collect(store, now=later, delete=True)
    assert done.families[0].deleted_blocks == 1
    assert done.families[0].deleted_bytes == len(b"never committed" * 1000)
    assert len(_blocks(store)) == len(everything) - 1
    for version in (v1, v2):
        assert fsck(version).ok
    with v1.mount(transport="none") as ro:
        assert ro._mount.pathfs.read_bytes("/overwritten.txt") == b"first content"
    assert collect(store, now=later, delete=True).families[0].garbage_blocks == 0


def test_live_sessions_and_unpublished_indexes_are_kept(store: MemoryObjectStore, tmp_path: Path):
    _v1, v2 = _family(store)
    later = time.time() + 2 * HOUR
    rw = v2.fork("gc-live").mount(transport="none")
    rw._mount.pathfs.write_bytes("/in-progress.bin", b"a live session's data")
    rw._mount.engine.drain()
    domain = int(rw._mount.meta_dir.marker()["domain"])
    key = f"gcvol/_volume/live/{domain:07d}"
    store.put(key, json.dumps({"heartbeat_at": later - 30}).encode())
    report = collect(store, now=later).families[0]
    # the scratch file's block went with its mount's reclaimer: nothing else is garbage
    assert report.protected_domains == [domain] and report.garbage_blocks == 0
    assert report.protected_blocks == 1

    # an index uploaded without its document (a publish in progress, or abandoned)
    pending = "gcvol/_volume/versions/20990101T000000000000Z-gc-live-0000abcd/meta.db"
    snap = tmp_path / "snap.db"
    rw._mount.engine.flush()
    rw._mount.meta.snapshot(snap)
    store.put(pending, snap.read_bytes())
    store.put(key, json.dumps({"heartbeat_at": later - 2 * HOUR}).encode())  # a stale marker
    report = collect(store, now=later, delete=True).families[0]
    assert report.abandoned_indexes == [pending] and store.exists(pending)
    assert report.protected_blocks == 0 and report.deleted_blocks == 0
    assert report.stale_markers == [domain] and not store.exists(key)  # --delete removes it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rw.unmount()


def test_a_live_marker_heartbeats_and_goes(store: MemoryObjectStore):
    marker = LiveMarker(store, "fam", 7, interval=0.05)
    key = "fam/_volume/live/0000007"
    first = json.loads(store.get(key))["heartbeat_at"]
    time.sleep(0.3)
    assert json.loads(store.get(key))["heartbeat_at"] > first
    marker.stop()
    assert not store.exists(key)


def test_unreadable_versions_stop_deletion(store: MemoryObjectStore):
    _family(store)
    key = next(
        i.key for i in store.list("gcvol/_volume/versions/") if i.key.endswith("volume.json")
    )
    store.put(key, b"not json")
    report = collect(store, now=time.time() + 2 * HOUR, delete=True).families[0]
    assert report.unreadable and report.deleted_blocks == 0 and report.garbage_blocks >= 1


# --------------------------------------------------------------------------- property


PLANS = st.lists(
    st.lists(st.tuples(st.sampled_from(["write", "overwrite", "delete", "commit"]),
                       st.integers(0, 3), st.integers(1, 3000)), min_size=1, max_size=8),
    min_size=2, max_size=3,
)  # fmt: skip
# how each session ends: finalized, abandoned (unmount), or left behind in its meta_dir (as by an
# exit without finalizing) and resumed after gc ran
FINISH = st.lists(st.sampled_from(["finalize", "abandon", "keep"]), min_size=3, max_size=3)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(plans=PLANS, finish=FINISH)
def test_gc_never_deletes_a_block_a_published_version_references(plans, finish):
    """Sessions write and commit while gc runs with --delete and a short grace period; every
    published version then still has every block it references (and the garbage goes)."""
    _concurrent_gc(plans, finish)


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(plans=PLANS, finish=FINISH)
def test_gc_never_deletes_a_referenced_block_long_run(plans, finish):
    _concurrent_gc(plans, finish)


def _concurrent_gc(plans, finish) -> None:
    name = f"gcprop-{uuid.uuid4().hex[:8]}"
    store = MemoryObjectStore.from_uri(f"memory://{name}")
    tmp = tempfile.TemporaryDirectory(prefix="gcprop-")
    try:
        base = Volume.new("propvol", bucket=f"memory://{name}").mount(transport="none")
        base._mount.pathfs.write_bytes("/base.txt", b"base")
        root = base.finalize("base")
        published = [root]
        lock = threading.Lock()
        stop = threading.Event()
        grace = 0.3

        left: list[tuple[object, Path, dict[str, bytes]]] = []  # kept copies to resume

        def session(i: int, plan) -> None:
            meta_dir = Path(tmp.name) / f"wc-{i}" if finish[i] == "keep" else None
            rw = root.fork(f"prop-{i}").mount(transport="none", meta_dir=meta_dir)
            m = rw._mount
            model = {"/base.txt": b"base"}
            marker = LiveMarker(m.objects, m.engine.fmt.Name, int(m.meta_dir.marker()["domain"]),
                                interval=0.05)  # fmt: skip
            fs = m.pathfs
            for op, f, size in plan:
                path = f"/f{f}"
                if op in ("write", "overwrite"):
                    fs.write_bytes(path, bytes([i + 1]) * size)
                    model[path] = bytes([i + 1]) * size
                elif op == "delete" and fs.exists(path):
                    fs.unlink(path)
                    model.pop(path)
                elif op != "delete":
                    v = rw.commit(op)
                    with lock:
                        published.append(v)
                time.sleep(0.02)
            if finish[i] == "finalize":
                v = rw.finalize("end")
                with lock:
                    published.append(v)
            elif finish[i] == "keep":
                m.engine.drain()
                rw._mount = None
                m.close(drain=True)  # the process goes: the copy stays in meta_dir
                with lock:
                    left.append((rw, meta_dir, model))
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    rw.unmount()
            marker.stop()

        deleted = []

        def collector() -> None:
            while not stop.is_set():
                deleted.append(collect(store, grace=grace, delete=True).totals()["deleted_blocks"])

        gc_thread = threading.Thread(target=collector)
        time.sleep(grace)  # the base session's domain is no longer young
        gc_thread.start()
        workers = [threading.Thread(target=session, args=(i, p)) for i, p in enumerate(plans)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stop.set()
        gc_thread.join()
        time.sleep(grace)
        deleted.append(collect(store, grace=grace, delete=True).totals()["deleted_blocks"])
        for rw, meta_dir, model in left:  # gc ran long after they were left: all still there
            rw = rw.mount(transport="none", meta_dir=meta_dir)
            fs = rw._mount.pathfs
            assert {f"/{n}": fs.read_bytes(f"/{n}") for n in fs.listdir("/")} == model
            published.append(rw.finalize("resumed"))
        time.sleep(grace)
        deleted.append(collect(store, grace=grace, delete=True).totals()["deleted_blocks"])
        assert collect(store, grace=grace).totals()["garbage_blocks"] == 0
        for version in published:
            report = fsck(version)
            assert report.ok, (version.message, report.missing)
    finally:
        MemoryObjectStore.reset(name)
        tmp.cleanup()


# --------------------------------------------------------------------------- the command


def test_volume_gc_command(tmp_path: Path, bucket: Path, published: tuple[str, str]):
    dry = volume("gc", str(bucket), "--json")
    assert dry.code == 0, dry.err
    report = dry.json()
    assert report["delete"] is False and report["grace_seconds"] == 3600
    assert report["totals"]["garbage_blocks"] == 0  # every domain is younger than an hour
    assert report["totals"]["protected_blocks"] == report["totals"]["blocks"] > 0
    blocks = sorted(bucket.glob("clivol/chunks/**/*_*_*"))
    text = volume("gc", str(bucket), "--grace", "0s", "--delete")
    assert text.code == 0 and "deleted: 0 blocks" in text.out and "clivol" in text.out
    assert sorted(bucket.glob("clivol/chunks/**/*_*_*")) == blocks  # all referenced
    assert "not a duration" in volume("gc", str(bucket), "--grace", "soon").err
