"""The seed API end to end on the embedded defaults (local or in-memory bucket + SQLite)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import warnings
from pathlib import Path

import pytest

from volume import ROVolume, RWVolume, Volume
from volume.allocator import DOMAIN_BITS
from volume.errors import (
    VolumeAlreadyMounted,
    VolumeBucketNotEmpty,
    VolumeCommitError,
    VolumeMigrateNoop,
    VolumeNoIndex,
    VolumeNotForkable,
    VolumeNotMounted,
    VolumeStoreMismatch,
    VolumeUsageError,
)
from volume.lineage import action, walk
from volume.testing.memory import MemoryObjectStore

pytestmark = pytest.mark.filterwarnings("ignore:kernel \\(FUSE\\) mounts:RuntimeWarning")


@pytest.fixture
def bucket(tmp_path: Path) -> str:
    return str(tmp_path / "bucket")


@pytest.fixture
def mem_bucket() -> str:
    name = f"memory://lc-{secrets.token_hex(4)}"
    yield name
    MemoryObjectStore.reset(name[len("memory://") :])


def memory_store(uri: str) -> MemoryObjectStore:
    return MemoryObjectStore.from_uri(uri)


def files(vol: Volume) -> dict[str, bytes]:
    fs = vol._mount.pathfs
    return {name: fs.read_bytes(f"/{name}") for name in sorted(fs.listdir("/"))}


def write(vol: Volume, name: str, data: bytes) -> None:
    vol._mount.pathfs.write_bytes(f"/{name}", data)


def committed(bucket: str, name: str = "base", content: dict[str, bytes] | None = None) -> ROVolume:
    rw = Volume.new(name, bucket=bucket).mount(transport="none")
    for path, data in (content or {"a.txt": b"alpha"}).items():
        write(rw, path, data)
    return rw.finalize("base")


# =========================================================================== declare


def test_declare_does_no_io(tmp_path: Path) -> None:
    bucket = tmp_path / "never-created"
    vol = Volume.empty("decl", bucket=str(bucket))
    rw = Volume.new(bucket=str(bucket))
    assert not bucket.exists()
    assert type(vol) is Volume and type(rw) is RWVolume
    assert rw.name.startswith("vol-") and len(rw.name) == 12
    assert vol.metadata_store_type == "sqlite" and vol.index is None


def test_bucket_and_store_type_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNION_VOLUME_BUCKET", "s3://from-env/prefix")
    monkeypatch.setenv("UNION_VOLUME_METADATA_STORE", "redis")
    vol = Volume.empty("envvol", region="eu-west-1")
    assert (vol.bucket, vol.storage, vol.metadata_store_type) == ("s3://from-env/prefix", "s3", "redis")
    assert vol.region == "eu-west-1"


def test_missing_bucket_says_how_to_pass_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNION_VOLUME_BUCKET", raising=False)
    with pytest.raises(VolumeUsageError, match="UNION_VOLUME_BUCKET") as err:
        Volume.new("nobucket")
    assert "bucket=" in str(err.value)


# =========================================================================== mount


def test_first_mount_formats_and_refuses_non_empty_prefix(bucket: str) -> None:
    rw = Volume.new("fresh", bucket=bucket).mount(transport="none")
    assert (Path(bucket) / "fresh" / "juicefs_uuid").read_text() == rw._mount.engine.fmt.UUID
    rw.unmount()
    again = Volume.new("fresh", bucket=bucket)
    with pytest.raises(VolumeBucketNotEmpty, match="fresh/") as err:
        again.mount(transport="none")
    assert "choose another volume name" in str(err.value)
    assert not again.mounted


def test_meta_dir_cannot_be_mounted_twice(bucket: str, tmp_path: Path) -> None:
    base = committed(bucket)
    meta = tmp_path / "meta"
    base.mount(meta_dir=meta, transport="none")
    other = base.as_ro()
    with pytest.raises(VolumeAlreadyMounted, match=str(meta)):
        other.mount(meta_dir=meta, transport="none")
    base.unmount()
    other.mount(meta_dir=meta, transport="none")  # free again
    other.unmount()


def test_ro_mount_refuses_writes_and_needs_an_index(bucket: str) -> None:
    base = committed(bucket)
    with base.mount(transport="none") as ro:
        with pytest.raises(OSError) as err:
            write(ro, "new.txt", b"x")
        assert err.value.errno == 30  # EROFS
        for refused in (
            lambda fs: fs.unlink("/a.txt"),
            lambda fs: fs.mkdir("/d"),
            lambda fs: fs.rename("/a.txt", "/b.txt"),
            lambda fs: fs.chmod("/a.txt", 0o600),
            lambda fs: fs.setxattr("/a.txt", "user.k", b"v"),
            lambda fs: fs.truncate("/a.txt", 0),
        ):
            with pytest.raises(OSError) as err:
                refused(ro._mount.pathfs)
            assert err.value.errno == 30
        assert files(ro) == {"a.txt": b"alpha"}
    with pytest.raises(VolumeNoIndex):
        Volume.empty("blank", bucket=bucket).as_ro().mount(transport="none")


def test_ro_mount_reuses_a_matching_local_index(mem_bucket: str, tmp_path: Path) -> None:
    base = committed(mem_bucket)
    store = memory_store(mem_bucket)
    meta = tmp_path / "meta"
    base.mount(meta_dir=meta, transport="none").unmount()
    before = store.stats.copy()
    base.mount(meta_dir=meta, transport="none")
    assert files(base) == {"a.txt": b"alpha"}
    base.unmount()
    moved = store.stats - before
    assert moved.get_bytes < base.index_bytes  # the index was not downloaded again


def test_store_type_mismatch_is_refused(bucket: str) -> None:
    base = committed(bucket)
    lying = base.model_copy(update={"index": base.index.model_copy(update={"format": "redis"})})
    with pytest.raises(VolumeStoreMismatch, match="redis"):
        lying.mount(transport="none")


def test_unknown_transport_is_a_usage_error(bucket: str) -> None:
    with pytest.raises(VolumeUsageError, match="transport"):
        Volume.new("trans", bucket=bucket).mount(transport="nfs")
    assert not (Path(bucket) / "trans").exists()


# =========================================================================== commit


def test_commit_is_keep_alive_and_chains(bucket: str) -> None:
    rw = Volume.new("chain", bucket=bucket).mount(transport="none")
    write(rw, "one", b"1")
    c1 = rw.commit("c1")
    write(rw, "two", b"2")
    c2 = rw.commit("c2")
    assert rw.mounted
    c3 = rw.finalize("c3")
    assert not rw.mounted
    assert c1.parent_produced_by is None
    assert c2.parent_produced_by == c1.produced_by
    assert c3.parent_produced_by == c2.produced_by
    assert [v.message for v in walk(c3)] == ["c2", "c1"]
    with c1.mount(transport="none") as ro:
        assert files(ro) == {"one": b"1"}
    with pytest.raises(VolumeNotMounted):
        rw.finalize()
    with pytest.raises(VolumeNotMounted):
        rw.commit()


def test_version_document_is_the_volume_json(bucket: str) -> None:
    base = committed(bucket)
    doc = Path(base.produced_by.locator[len("file://") :])
    assert json.loads(doc.read_text()) == json.loads(base.model_dump_json())
    assert Volume.from_locator(base.produced_by.locator) == base
    assert base.index.path.startswith(f"file://{bucket}/base/_volume/versions/")
    assert base.index.hash.startswith("sha256:")
    assert base.used_bytes == 8192 - 4096 and base.inode_count == 1
    assert base.index_bytes == Path(base.index.path[len("file://") :]).stat().st_size


def test_deprecated_commit_warns_and_finalizes(bucket: str) -> None:
    rw = Volume.new("old", bucket=bucket).mount(transport="none")
    write(rw, "f", b"x")
    with pytest.warns(DeprecationWarning):
        version = Volume.commit(rw, message="legacy")
    assert version.message == "legacy" and not rw.mounted


def test_unmount_abandons_loudly(bucket: str) -> None:
    rw = Volume.new("abandon", bucket=bucket).mount(transport="none")
    write(rw, "lost", b"x")
    with pytest.warns(RuntimeWarning, match="abandons"):
        rw.unmount()
    versions = Path(bucket) / "abandon" / "_volume" / "versions"
    assert not versions.exists()


def test_failed_drain_publishes_nothing_and_keeps_the_mount(mem_bucket: str) -> None:
    rw = Volume.new("flaky", bucket=mem_bucket).mount(transport="none")
    store = memory_store(mem_bucket)
    store.fail_next("put", OSError(5, "injected outage"), count=50)
    write(rw, "data", b"x" * 1000)
    with pytest.raises(VolumeCommitError, match="nothing was published"):
        rw.commit("during outage")
    assert not [o for o in store.list("flaky/_volume/versions/")]
    assert rw.mounted and files(rw) == {"data": b"x" * 1000}
    store.clear_faults()
    version = rw.finalize("after outage")
    with version.mount(transport="none") as ro:
        assert files(ro) == {"data": b"x" * 1000}


# =========================================================================== fork


def test_fork_moves_no_block_bytes(mem_bucket: str) -> None:
    base = committed(mem_bucket, content={"big": os.urandom(3 << 20), "small": b"s"})
    store = memory_store(mem_bucket)
    keys_before = {o.key for o in store.list("")}
    before = store.stats.copy()
    child = base.fork("child")
    moved = store.stats - before
    assert moved.get_bytes == base.index_bytes  # the index, and not one block
    # the domain claim and the fork point's version document: no index, no block
    assert moved.puts == 2 and moved.put_bytes < 4096
    new_keys = {o.key for o in store.list("")} - keys_before
    assert len(new_keys) == 2 and {k.split("/")[2] for k in new_keys} == {"domains", "versions"}
    assert child.parent_produced_by == base.produced_by and child.index == base.index
    assert child.produced_by.locator.endswith("/volume.json")
    keys_before_mount = {o.key for o in store.list("")}
    child.mount(transport="none")
    assert sorted(files(child)) == ["big", "small"]
    # mounting the fork writes no block and no index: only its live-session marker for gc
    added = {o.key for o in store.list("")} - keys_before_mount
    assert len(added) == 1 and "/_volume/live/" in added.pop()


def test_fork_and_parent_are_isolated_both_ways(bucket: str) -> None:
    base = committed(bucket)
    left = base.fork("left").mount(transport="none")
    right = base.fork("right").mount(transport="none")
    write(left, "a.txt", b"left wins")
    write(right, "r.txt", b"right only")
    lv, rv = left.finalize("l"), right.finalize("r")
    with base.mount(transport="none") as ro:
        assert files(ro) == {"a.txt": b"alpha"}
    with lv.mount(transport="none") as ro:
        assert files(ro) == {"a.txt": b"left wins"}
    with rv.mount(transport="none") as ro:
        assert files(ro) == {"a.txt": b"alpha", "r.txt": b"right only"}


def test_a_file_unlinked_while_open_at_commit_is_gone_from_the_next_writable_mount(
    bucket: str,
) -> None:
    """The committed index keeps the open file as a sustained inode, as JuiceFS would; read-only
    mounts never see it and the first writable mount of the version deletes it."""
    rw = Volume.new("base", bucket=bucket).mount(transport="none")
    fs = rw._mount.pathfs
    write(rw, "kept", b"k")
    write(rw, "scratch", b"s" * 100_000)
    fd = fs.open("/scratch")
    fs.unlink("/scratch")
    version = rw.commit("while scratch is open")
    fs.close(fd)
    rw.finalize("closed")
    assert version.inode_count == 2  # the sustained inode still counts, as in JuiceFS
    index = version.index.path[len("file://") :]
    with sqlite3.connect(index) as db:
        assert len(db.execute("SELECT * FROM jfs_sustained").fetchall()) == 1
    with version.mount(transport="none") as ro:
        assert files(ro) == {"kept": b"k"}
    fork = version.fork("fork").mount(transport="none")
    assert files(fork) == {"kept": b"k"}
    clean = fork.finalize("nothing changed")
    assert clean.inode_count == 1
    assert clean.used_bytes == version.used_bytes - 100_000 - (-100_000 % 4096)
    with sqlite3.connect(clean.index.path[len("file://") :]) as db:
        assert db.execute("SELECT * FROM jfs_sustained").fetchall() == []
        assert db.execute("SELECT count(*) FROM jfs_node").fetchone()[0] == 2  # root, kept


def slice_ids(version: ROVolume) -> set[int]:
    conn = sqlite3.connect(version.index.path[len("file://") :])
    with conn:
        return {r[0] for r in conn.execute("SELECT chunkid FROM jfs_chunk_ref")}


def test_forks_allocate_in_disjoint_domains(bucket: str) -> None:
    base = committed(bucket)
    versions = []
    for name in ("dom-1", "dom-2", "dom-3"):
        rw = base.fork(name).mount(transport="none")
        write(rw, f"{name}.bin", os.urandom(10_000))
        versions.append(rw.finalize())
    new_ids = [slice_ids(v) - slice_ids(base) for v in versions]
    domains = [{i >> DOMAIN_BITS for i in ids} for ids in new_ids]
    assert all(len(d) == 1 for d in domains)
    assert len(set.union(*domains)) == 3  # three different lanes
    ledger = sorted(p.name for p in (Path(bucket) / "base" / "_volume" / "domains").iterdir())
    assert len(ledger) == 4  # the base's first mount and three forks


def test_live_fork_keeps_the_parent_mounted(bucket: str) -> None:
    rw = Volume.new("live", bucket=bucket).mount(transport="none")
    write(rw, "x", b"1")
    child = rw.fork("live-child")
    assert rw.mounted
    write(rw, "y", b"2")
    child.mount(transport="none")
    assert files(child) == {"x": b"1"}
    child.unmount()
    assert files(rw) == {"x": b"1", "y": b"2"}
    rw.finalize()


def test_fork_without_index_is_refused(bucket: str) -> None:
    with pytest.raises(VolumeNotForkable, match="commit"):
        Volume.empty("noidx", bucket=bucket).as_ro().fork("child")
    assert not Path(bucket).exists()


def test_two_mounts_of_one_fork_handle_use_different_domains(bucket: str) -> None:
    base = committed(bucket)
    handle = base.fork("twice")
    doc = handle.model_dump_json()
    a = RWVolume.model_validate_json(doc).mount(transport="none")
    b = RWVolume.model_validate_json(doc).mount(transport="none")
    write(a, "a", b"a" * 100)
    write(b, "b", b"b" * 100)
    va, vb = a.finalize(), b.finalize()
    ids_a, ids_b = slice_ids(va) - slice_ids(base), slice_ids(vb) - slice_ids(base)
    assert ids_a and ids_b and not ids_a & ids_b


# =========================================================================== migrate


def test_migrate_to_the_same_type_or_without_index(bucket: str) -> None:
    base = committed(bucket)
    with pytest.raises(VolumeMigrateNoop):
        base.migrate_metadata_store_type("sqlite")
    with pytest.raises(VolumeNoIndex):
        Volume.empty("empty", bucket=bucket).migrate_metadata_store_type("redis")


# =========================================================================== lineage


def test_produced_by_defaults_to_this_process(bucket: str) -> None:
    base = committed(bucket)
    assert base.produced_by.name == f"process:{socket.gethostname()}"
    with action("etl", project="p", domain="d"):
        v = committed(bucket, "inside")
    assert (v.produced_by.name, v.produced_by.project, v.produced_by.domain) == ("etl", "p", "d")
    assert v.produced_by.locator.endswith("/volume.json")


def test_walk_is_cycle_safe(tmp_path: Path) -> None:
    docs = {name: tmp_path / f"{name}.json" for name in ("a", "b")}
    for name, other in (("a", "b"), ("b", "a")):
        vol = ROVolume(
            name=f"cyc-{name}",
            bucket=str(tmp_path),
            produced_by={"name": name, "locator": f"file://{docs[name]}"},
            parent_produced_by={"name": other, "locator": f"file://{docs[other]}"},
        )
        docs[name].write_text(vol.model_dump_json())
    start = Volume.from_locator(f"file://{docs['a']}")
    assert [v.name for v in walk(start)] == ["cyc-b"]


def test_walk_stops_without_parent(bucket: str) -> None:
    assert list(walk(committed(bucket))) == []


# =========================================================================== bucket layout (spec)

LAYOUT = [
    r"juicefs_uuid",
    r"chunks/(\d+)/(\d+)/(\d+)_(\d+)_(\d+)",
    r"_volume/domains/\d{7}",
    r"_volume/versions/\d{8}T\d{12}Z-[a-z0-9-]+-[0-9a-f]{8}/(meta\.db|volume\.json)",
]


def test_bucket_matches_spec_layout(bucket: str) -> None:
    import re

    from volume.juicefs import slice_blocks

    base = committed(bucket, content={"f": os.urandom(5 << 20)})
    child = base.fork("layout-child").mount(transport="none")
    write(child, "g", b"g" * 10)
    version = child.finalize()
    root = Path(bucket) / "base"
    keys = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    for key in keys:
        assert any(re.fullmatch(rx, key) for rx in LAYOUT), key
    for key in keys:  # block keys: id/1e6, id/1e3 and a bsize no larger than the block size
        if m := re.fullmatch(LAYOUT[1], key):
            d1, d2, sid, _indx, bsize = map(int, m.groups())
            assert (d1, d2) == (sid // 1_000_000, sid // 1000) and bsize <= 4 << 20
    versions = {k.split("/")[2] for k in keys if k.startswith("_volume/versions/")}
    assert len(versions) == 3  # the base, the fork point and the fork's commit
    fork_point = Path(version.parent_produced_by.locator[len("file://") :]).parent.name
    for v in versions - {fork_point}:
        assert {f"_volume/versions/{v}/meta.db", f"_volume/versions/{v}/volume.json"} <= set(keys)
    assert {k for k in keys if fork_point in k} == {f"_volume/versions/{fork_point}/volume.json"}
    conn = sqlite3.connect(version.index.path[len("file://") :])
    with conn:
        refs = conn.execute("SELECT chunkid, size FROM jfs_chunk_ref").fetchall()
    for sid, size in refs:  # every referenced block exists with its exact size
        for indx, bsize in slice_blocks(size, 4 << 20):
            key = root / "chunks" / str(sid // 1_000_000) / str(sid // 1000) / f"{sid}_{indx}_{bsize}"
            assert key.stat().st_size == bsize


# =========================================================================== migrate end to end

from volume_sqlite import SQLiteMetaStore  # noqa: E402


class TwinSQLiteStore(SQLiteMetaStore):
    """A second store type with SQLite underneath: lets migration run end to end without Redis."""

    name = "sqlite-twin"


@pytest.fixture
def twin_store_type(monkeypatch: pytest.MonkeyPatch) -> str:
    from importlib import metadata

    from volume import plugins

    original = plugins._entry_points
    real = original(plugins.META_STORES)
    twin = metadata.EntryPoint(
        "sqlite-twin", f"{__name__}:TwinSQLiteStore", plugins.META_STORES
    )

    def entry_points(group: str) -> dict:
        if group == plugins.META_STORES:
            return {**real, "sqlite-twin": twin}
        return original(group)

    plugins.load.cache_clear()
    monkeypatch.setattr(plugins, "_entry_points", entry_points)
    yield "sqlite-twin"
    plugins.load.cache_clear()


def test_migrate_moves_no_block_and_advances_counters(mem_bucket: str, twin_store_type: str) -> None:
    base = committed(mem_bucket, content={"big": os.urandom(2 << 20), "small": b"s"})
    store = memory_store(mem_bucket)
    before = store.stats.copy()
    migrated = base.migrate_metadata_store_type(twin_store_type)
    moved = store.stats - before
    assert moved.get_bytes == base.index_bytes  # the source index, and not one block
    assert moved.puts == 2 and moved.put_bytes == migrated.index_bytes + len(
        migrated.model_dump_json(indent=2)
    )  # the new index and its version document
    assert type(migrated) is ROVolume
    assert (migrated.metadata_store_type, migrated.index.format) == (twin_store_type,) * 2
    assert migrated.parent_produced_by == base.produced_by
    assert (migrated.used_bytes, migrated.inode_count) == (base.used_bytes, base.inode_count)
    with migrated.mount(transport="none") as ro:
        assert sorted(files(ro)) == ["big", "small"]
        with ro._mount.meta.transaction() as tx:
            assert tx.get_counter("nextInode") > (1 << 32)
    with pytest.raises(VolumeMigrateNoop):
        migrated.migrate_metadata_store_type(twin_store_type)


# =========================================================================== damaged indexes


@pytest.mark.parametrize("damage", ["flipped", "truncated", "missing"])
def test_damaged_index_leaves_nothing_trusted(bucket: str, tmp_path: Path, damage: str) -> None:
    from volume.errors import VolumeIndexCorrupt

    base = committed(bucket)
    index = Path(base.index.path[len("file://") :])
    data = index.read_bytes()
    if damage == "flipped":
        index.write_bytes(data[:5000] + bytes([data[5000] ^ 0xFF]) + data[5001:])
    elif damage == "truncated":
        index.write_bytes(data[: len(data) // 2])
    else:
        index.unlink()
    meta = tmp_path / "meta"
    for attempt in (lambda: base.mount(meta_dir=meta, transport="none"),
                    lambda: base.fork("damaged-fork", meta_dir=meta)):  # fmt: skip
        with pytest.raises(VolumeIndexCorrupt):
            attempt()
        assert sorted(p.name for p in meta.iterdir()) == [".volume.lock"]
    assert not base.mounted


# =========================================================================== block cache in cache_dir


def test_cache_dir_serves_later_mounts_without_block_traffic(mem_bucket: str, tmp_path: Path) -> None:
    payload = os.urandom(6 << 20)
    base = committed(mem_bucket, content={"data": payload})
    store = memory_store(mem_bucket)
    cache = tmp_path / "cache"
    with base.mount(cache_dir=cache, transport="none") as ro:
        assert files(ro) == {"data": payload}
    cached = [p for p in cache.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in cached) == len(payload)
    assert all("/chunks/" in str(p) for p in cached)
    before = store.stats.copy()
    with base.mount(cache_dir=cache, transport="none") as ro:
        assert files(ro) == {"data": payload}
    assert (store.stats - before).get_bytes == base.index_bytes  # the index, not one block


def test_disk_cache_stays_within_its_bound(tmp_path: Path) -> None:
    from volume.engine.diskcache import DiskCache

    cache = DiskCache(tmp_path / "c", capacity=10_000)
    for i in range(10):
        cache.put(f"v/chunks/0/0/{i}_0_3000", bytes([i]) * 3000)
    assert cache.size <= 10_000
    assert cache.get("v/chunks/0/0/9_0_3000") == bytes([9]) * 3000
    assert cache.get("v/chunks/0/0/0_0_3000") is None  # the oldest went first
    reopened = DiskCache(tmp_path / "c", capacity=10_000)
    assert reopened.size == cache.size


# =========================================================================== lineage table (spec/volume.md)


def test_lineage_new_and_empty_have_no_producer(bucket: str) -> None:
    for vol in (Volume.new("lin-new", bucket=bucket), Volume.empty("lin-empty", bucket=bucket)):
        assert vol.produced_by is None and vol.parent_produced_by is None


def test_lineage_commit_and_finalize_name_the_handles_previous_version(bucket: str) -> None:
    rw = Volume.new("lin-commit", bucket=bucket).mount(transport="none")
    write(rw, "a", b"1")
    with action("first", run_name="r1"):
        c1 = rw.commit("c1")
    assert (c1.produced_by.name, c1.produced_by.run_name) == ("first", "r1")
    assert c1.produced_by.locator and c1.parent_produced_by is None
    assert rw.produced_by == c1.produced_by  # the handle now stands for its last version
    with action("second"):
        c2 = rw.finalize("c2")
    assert c2.produced_by.name == "second" and c2.parent_produced_by == c1.produced_by
    assert Volume.from_locator(c2.produced_by.locator) == c2


def test_lineage_chains_across_remounts_and_json(bucket: str) -> None:
    rw = Volume.new("lin-remount", bucket=bucket)
    c1 = rw.mount(transport="none").finalize("c1")
    c2 = rw.mount(transport="none").finalize("c2")
    assert c2.parent_produced_by == c1.produced_by
    rebuilt = RWVolume.model_validate_json(rw.model_dump_json())
    c3 = rebuilt.mount(transport="none").finalize("c3")
    assert c3.parent_produced_by == c2.produced_by
    assert [v.message for v in walk(c3)] == ["c2", "c1"]


def test_lineage_fork_has_its_own_document_and_its_commits_pass_through_it(bucket: str) -> None:
    base = committed(bucket)
    with action("forker", project="p"):
        child = base.fork("lin-child")
    by = child.produced_by
    assert (by.name, by.project) == ("forker", "p") and by.locator.endswith("/volume.json")
    assert child.parent_produced_by == base.produced_by
    point = Volume.from_locator(by.locator)  # the fork point: the source's index, the fork's name
    assert type(point) is ROVolume and point.name == "lin-child" and point.index == base.index
    assert point.produced_by == by and point.parent_produced_by == base.produced_by
    with point.mount(transport="none") as ro:
        assert files(ro) == {"a.txt": b"alpha"}
    version = child.mount(transport="none").finalize("after fork")
    assert version.parent_produced_by == by
    assert [(v.name, v.produced_by.locator) for v in walk(version)] == [
        ("lin-child", by.locator), ("base", base.produced_by.locator)]  # fmt: skip


def test_lineage_live_fork_names_the_fork_point_commit(bucket: str) -> None:
    rw = Volume.new("lin-live", bucket=bucket).mount(transport="none")
    write(rw, "x", b"1")
    child = rw.fork("lin-live-kid")
    point_commit = Volume.from_locator(child.parent_produced_by.locator)
    assert point_commit.name == "lin-live" and point_commit.produced_by == rw.produced_by
    later = rw.finalize("later")
    assert later.parent_produced_by == point_commit.produced_by


def test_lineage_migrate_names_its_source(mem_bucket: str, twin_store_type: str) -> None:
    base = committed(mem_bucket)
    with action("mover"):
        migrated = base.migrate_metadata_store_type(twin_store_type)
    assert migrated.produced_by.name == "mover" and migrated.produced_by.locator
    assert migrated.parent_produced_by == base.produced_by
    assert [v.produced_by for v in walk(migrated)] == [base.produced_by]


def test_from_locator_of_nothing_is_typed(tmp_path: Path) -> None:
    from volume.errors import VolumeIndexCorrupt

    with pytest.raises(VolumeUsageError, match="empty"):
        Volume.from_locator("")
    with pytest.raises(VolumeIndexCorrupt, match="no version document"):
        Volume.from_locator(str(tmp_path / "missing.json"))


# =========================================================================== index locations


def located(base: ROVolume, path: str, **index: object) -> ROVolume:
    return base.model_copy(update={"index": base.index.model_copy(update={"path": path, **index})})


def test_index_as_a_plain_path_in_a_file_bucket(bucket: str) -> None:
    base = committed(bucket)
    plain = located(base, base.index.path[len("file://") :])
    with plain.mount(transport="none") as ro:
        assert files(ro) == {"a.txt": b"alpha"}
    child = plain.fork("plain-child").mount(transport="none")
    assert files(child) == {"a.txt": b"alpha"}
    child.unmount()


@pytest.mark.parametrize("form", ["plain", "file-uri", "fsspec-chain"])
def test_index_outside_the_bucket(mem_bucket: str, tmp_path: Path, form: str) -> None:
    base = committed(mem_bucket)
    elsewhere = tmp_path / "elsewhere" / "copy.db"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(memory_store(mem_bucket).get(base.index.path[len(mem_bucket) + 1 :]))
    path = {"plain": str(elsewhere), "file-uri": f"file://{elsewhere}",
            "fsspec-chain": f"simplecache::file://{elsewhere}"}[form]  # fmt: skip
    outside = located(base, path)
    with outside.mount(transport="none") as ro:
        assert files(ro) == {"a.txt": b"alpha"}


def test_index_outside_the_bucket_cannot_smuggle_other_content(bucket: str, tmp_path: Path) -> None:
    from volume.errors import VolumeIndexCorrupt

    base = committed(bucket)
    other = committed(bucket, "other", {"evil.txt": b"not the base"})
    smuggled = located(base, other.index.path[len("file://") :])  # base's hash, other's bytes
    unhashed = located(base, str(tmp_path / "copy.db"), hash=None)
    Path(unhashed.index.path).write_bytes(Path(base.index.path[len("file://") :]).read_bytes())
    meta = tmp_path / "meta"
    for vol, says in ((smuggled, "does not match its recorded hash"), (unhashed, "no hash")):
        with pytest.raises(VolumeIndexCorrupt, match=says):
            vol.mount(meta_dir=meta, transport="none")
        with pytest.raises(VolumeIndexCorrupt, match=says):
            vol.fork("smuggled-fork", meta_dir=meta)
        assert not vol.mounted
        assert sorted(p.name for p in meta.iterdir()) == [".volume.lock"]  # nothing mounted


def test_a_reused_local_index_must_match_the_hash_too(bucket: str, tmp_path: Path) -> None:
    from volume.errors import VolumeIndexCorrupt

    base = committed(bucket)
    meta = tmp_path / "meta"
    with base.mount(meta_dir=meta, transport="none"):
        pass
    forged = located(base, base.index.path, hash="sha256:" + "0" * 64)
    with pytest.raises(VolumeIndexCorrupt, match="does not match"):
        forged.mount(meta_dir=meta, transport="none")


def test_only_an_index_that_matched_its_hash_skips_the_stores_damage_checks(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from volume_sqlite import SQLiteMetaStore

    real, seen = SQLiteMetaStore.restore.__func__, []

    def spy(cls, index_path, meta_dir, *, verified=False, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(verified)
        return real(cls, index_path, meta_dir, verified=verified, **kwargs)

    base = committed(bucket)
    monkeypatch.setattr(SQLiteMetaStore, "restore", classmethod(spy))
    for vol in (base, located(base, base.index.path, hash=None)):  # hashed, then not
        with vol.mount(transport="none") as ro:
            assert files(ro) == {"a.txt": b"alpha"}
    assert seen == [True, False]


# =========================================================================== smaller seed rules


def test_file_buckets_are_declared_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Volume.empty("rel-a", bucket="vols").bucket == str(tmp_path / "vols")
    assert Volume.new("rel-b", bucket="file://vols").bucket == f"file://{tmp_path / 'vols'}"
    assert Volume.new("rel-c", bucket="s3://b/vols").bucket == "s3://b/vols"
    rw = Volume.new("rel-d", bucket="vols")
    version = rw.mount(transport="none").finalize()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with ROVolume.model_validate_json(version.model_dump_json()).mount(transport="none") as ro:
        assert files(ro) == {}
    assert not (elsewhere / "vols").exists()


def test_an_empty_name_is_refused_the_same_way_everywhere(bucket: str) -> None:
    from volume.errors import VolumeValidationError

    base = committed(bucket)
    calls = [lambda: Volume.new("", bucket=bucket), lambda: Volume.empty("", bucket=bucket),
             lambda: base.fork(""), lambda: Volume.fork(base, "")]  # fmt: skip
    messages = set()
    for call in calls:
        with pytest.raises(VolumeValidationError, match="JuiceFS rule") as info:
            call()
        messages.add(str(info.value).split("volume name")[-1])
    assert len(messages) == 1
    assert Volume.new(bucket=bucket).name.startswith("vol-")  # only None auto-names


def test_committing_a_read_only_mount_is_a_typed_error(bucket: str) -> None:
    from volume import lifecycle
    from volume.errors import VolumeReadOnly

    base = committed(bucket)
    versions = Path(bucket) / "base" / "_volume" / "versions"
    before = sorted(versions.iterdir())
    with base.mount(transport="none") as ro:
        with pytest.warns(DeprecationWarning), pytest.raises(VolumeReadOnly, match="fork"):
            ro.commit(message="nope")
        with pytest.raises(VolumeReadOnly, match="read-only"):
            lifecycle.commit(ro, "nope")  # type: ignore[arg-type]
        assert ro.mounted
    assert sorted(versions.iterdir()) == before


@pytest.mark.parametrize("writeback", [True, False])
def test_writeback_false_makes_each_close_wait_for_its_blocks(mem_bucket: str, writeback: bool) -> None:
    rw = Volume.new("wbk", bucket=mem_bucket).mount(writeback=writeback, transport="none")
    store = memory_store(mem_bucket)
    write(rw, "stored", b"s" * 5000)
    if not writeback:  # the close returned only once the block was in the store
        assert any("/chunks/" in o.key for o in store.list("wbk/"))
    store.fail_next("put", OSError(5, "injected outage"), count=1000)
    if writeback:
        write(rw, "buffered", b"b" * 5000)  # acknowledged before upload
    else:
        with pytest.raises(OSError) as info:
            write(rw, "buffered", b"b" * 5000)
        assert info.value.errno == 5 and "writeback=False" in str(info.value)
    store.clear_faults()
    version = rw.finalize()
    with version.mount(transport="none") as ro:
        assert files(ro) == {"buffered": b"b" * 5000, "stored": b"s" * 5000}


def test_writeback_must_be_a_bool(bucket: str) -> None:
    with pytest.raises(VolumeUsageError, match="writeback"):
        Volume.new("wbx", bucket=bucket).mount(writeback="no", transport="none")  # type: ignore[arg-type]
    assert not Path(bucket).exists()


# =========================================================================== the legacy Volume handle


def test_volume_mounts_writable_until_committed_then_read_only(bucket: str, tmp_path: Path) -> None:
    from volume.errors import VolumeReadOnly

    vol = Volume.empty("legacy", bucket=bucket)
    with pytest.raises(VolumeNoIndex):
        vol.mount(read_only=True, transport="none")
    vol.mount(mount_path=tmp_path / "mnt", transport="none")
    assert vol.mounted and type(vol) is Volume
    vol.fs.pipe_file("/f", b"legacy")
    with pytest.warns(DeprecationWarning):
        version = vol.commit(mount_path=tmp_path / "mnt", message="v1")
    assert not vol.mounted and vol.index == version.index
    with pytest.raises(VolumeReadOnly, match="fork"):
        vol.mount(read_only=False, transport="none")
    with vol.mount(transport="none") as ro:  # committed: read-only by default
        assert ro.fs.cat_file("/f") == b"legacy"
        with pytest.raises(OSError):
            ro.fs.pipe_file("/g", b"x")
    with pytest.raises(VolumeUsageError, match="upload_delay"):
        vol.mount(upload_delay="5s", transport="none")


@pytest.mark.parametrize("by", ["mount_path", "meta_dir"])
def test_deprecated_commit_finds_the_mount_from_a_rebuilt_handle(bucket: str, tmp_path: Path, by: str) -> None:
    where = {"mount_path": tmp_path / "mnt", "meta_dir": tmp_path / "meta"}
    vol = Volume.empty("rebuilt", bucket=bucket).mount(transport="none", **where)
    vol.fs.pipe_file("/f", b"x")
    rebuilt = Volume.model_validate_json(vol.model_dump_json())
    with pytest.warns(DeprecationWarning, match="deprecated"):
        version = rebuilt.commit(**{by: where[by]}, timeout=30, message="from json")
    assert version.message == "from json" and not vol.mounted
    with version.mount(transport="none") as ro:
        assert ro.fs.cat_file("/f") == b"x"


def test_deprecated_commit_of_nothing_names_the_path(bucket: str, tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(VolumeNotMounted) as info:
        Volume.empty("nothing", bucket=bucket).commit(mount_path=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    with pytest.warns(DeprecationWarning), pytest.raises(VolumeNotMounted, match="meta_dir"):
        Volume.empty("nothing", bucket=bucket).commit(meta_dir=tmp_path / "none")


def test_volume_fork_by_mount_path_is_a_live_fork(bucket: str, tmp_path: Path) -> None:
    vol = Volume.empty("forkme", bucket=bucket).mount(mount_path=tmp_path / "mnt", transport="none")
    vol.fs.pipe_file("/f", b"1")
    with pytest.raises(VolumeNotForkable):
        Volume.empty("unmounted", bucket=bucket).fork("x")
    child = Volume.model_validate_json(vol.model_dump_json()).fork("forkme-kid", tmp_path / "mnt")
    assert vol.mounted and type(child) is RWVolume
    vol.fs.pipe_file("/g", b"2")
    child.mount(transport="none")
    assert files(child) == {"f": b"1"}
    child.unmount()
    with pytest.warns(DeprecationWarning):
        later = vol.commit()  # the live fork left the source mounted and writable
    assert later.parent_produced_by == child.parent_produced_by  # the fork point's commit


def test_the_mounts_timeout_bounds_the_engines_waits(bucket: str) -> None:
    """Writers held back by a full upload buffer fail with EIO after the mount's ``timeout``
    (issue: bounded memory under outages), not after an engine default."""
    rw = Volume.new("timeouts", bucket=bucket).mount(transport="none", timeout=7)
    try:
        assert rw._mount.engine.io_timeout == 7
    finally:
        rw.unmount()


# =========================================================================== progress


def check_progress(calls: list[tuple[int, int, str]], unit: str) -> None:
    """Monotone in done and total, done never past total, and the last call done == total."""
    assert calls and {u for _d, _t, u in calls} == {unit}
    for (d0, t0, _), (d1, t1, _) in zip(calls, calls[1:]):
        assert d1 >= d0 and t1 >= t0
    assert all(0 <= d <= t for d, t, _u in calls)
    assert calls[-1][0] == calls[-1][1] > 0


def test_commit_and_finalize_report_bytes_up_front_and_end_at_the_total(
    mem_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from volume import reporting_progress

    put = MemoryObjectStore.put

    def slow_put(self, key, data, **kwargs):  # block uploads take a while: the bar has work
        if "/chunks/" in key:
            time.sleep(0.05)
        return put(self, key, data, **kwargs)

    rw = Volume.new("progress", bucket=mem_bucket).mount(transport="none")
    monkeypatch.setattr(MemoryObjectStore, "put", slow_put)
    for i in range(24):
        write(rw, f"f{i}", bytes([i]) * 65_536)
    calls: list[tuple[int, int, str]] = []
    with reporting_progress(lambda *a: calls.append(a)):
        v1 = rw.commit("v1")
    check_progress(calls, "bytes")
    # the blocks still to upload were known up front (first call), then the index was added
    assert 0 < calls[0][1] <= 24 * 65_536 and calls[0][0] < calls[0][1]
    assert calls[-1][1] == calls[0][1] + v1.index_bytes
    assert len({d for d, _t, _u in calls}) >= 3  # it moved in between

    calls.clear()
    write(rw, "late", b"l" * 100_000)
    with reporting_progress(lambda *a: calls.append(a)):
        v2 = rw.finalize("v2")
    check_progress(calls, "bytes")
    assert calls[-1][1] >= v2.index_bytes + 100_000
    reported = len(calls)
    rw = v2.fork("after").mount(transport="none")
    write(rw, "x", b"x")
    rw.finalize("outside the block")
    assert len(calls) == reported  # nothing is reported outside it


def test_migrate_reports_inodes(bucket: str, twin_store_type: str) -> None:
    from volume import reporting_progress

    rw = Volume.new("migrating", bucket=bucket).mount(transport="none")
    fs = rw._mount.pathfs
    fs.mkdir("/d")
    for i in range(5000):  # past the dump's and the load's reporting interval
        fs.write_bytes(f"/d/f{i}", b"x")
    base = rw.finalize("base")
    calls: list[tuple[int, int, str]] = []
    with reporting_progress(lambda *a: calls.append(a)):
        moved = base.migrate_metadata_store_type(twin_store_type)
    check_progress(calls, "inodes")
    assert calls[0][1] == calls[-1][1] >= 5001 and len(calls) >= 3
    assert moved.inode_count == base.inode_count
