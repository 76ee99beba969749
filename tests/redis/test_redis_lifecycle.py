"""Redis volumes through the whole lifecycle: commit, read-only mounts, forks, migration both
ways, store-type mismatches, damaged RDB indexes and a server that dies under a mount."""

from __future__ import annotations

import errno
import io
import json
import os
import secrets
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import redis
from volume_redis import RedisMetaStore
from volume_redis._server import RedisServer

from tests.jfsclient import SKIP_REASON, juicefs_binary
from volume import ROVolume, Volume
from volume.allocator import DOMAIN_BITS, FOREIGN_DOMAIN
from volume.engine.check import check_metadata
from volume.errors import VolumeIndexCorrupt, VolumeMigrateNoop, VolumeStoreMismatch
from volume.dump import dump
from volume.testing.memory import MemoryObjectStore

pytestmark = [
    pytest.mark.server,
    pytest.mark.filterwarnings("ignore:kernel \\(FUSE\\) mounts:RuntimeWarning"),
]

CONTENT = {
    "big.bin": os.urandom(3 << 20),
    "small.txt": b"small",
    "dir/nested.txt": b"nested " * 100,
    "dir/empty": b"",
}


@pytest.fixture
def bucket(tmp_path: Path) -> str:
    return str(tmp_path / "bucket")


@pytest.fixture
def mem_bucket() -> str:
    name = f"memory://redis-{secrets.token_hex(4)}"
    yield name
    MemoryObjectStore.reset(name[len("memory://") :])


def redis_servers_for(meta_dir: Path) -> list[int]:
    """Pids of redis-server processes whose working directory is ``meta_dir``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.path.basename(os.readlink(f"/proc/{entry}/exe"))
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if exe.startswith("redis-") and Path(cwd) == meta_dir.resolve():
            found.append(int(entry))
    return found


def write_tree(rw: Volume, content: dict[str, bytes]) -> None:
    fs = rw._mount.pathfs
    for path, data in content.items():
        if "/" in path:
            fs.makedirs("/" + path.rsplit("/", 1)[0], exist_ok=True)
        fs.write_bytes(f"/{path}", data)
    fs.symlink("small.txt", "/link")
    fs.link("/small.txt", "/dir/hard")
    fs.setxattr("/small.txt", "user.note", b"\x00x")


def read_tree(vol: Volume) -> dict[str, bytes]:
    fs = vol._mount.pathfs
    return {path: fs.read_bytes(f"/{path}") for path in [*CONTENT, "dir/hard"]}


def committed(bucket: str, name: str = "base", store: str = "redis") -> ROVolume:
    rw = Volume.new(name, bucket=bucket, metadata_store_type=store).mount(transport="none")
    write_tree(rw, CONTENT)
    return rw.finalize("base")


def dump_json(vol: Volume) -> dict:
    out = io.BytesIO()
    dump(vol._mount.meta, out)
    return json.loads(out.getvalue())


def test_commit_publishes_an_rdb_and_read_only_mounts_read_it(bucket: str, tmp_path: Path) -> None:
    version = committed(bucket)
    assert version.metadata_store_type == "redis"
    assert (version.index.format, version.index.name) == ("redis", "meta.rdb")
    index = Path(version.index.path[len("file://") :])
    assert index.read_bytes()[:5] == b"REDIS" and version.index_bytes == index.stat().st_size
    meta = tmp_path / "ro-meta"
    with version.mount(meta_dir=meta, transport="none") as ro:
        assert read_tree(ro) == {**CONTENT, "dir/hard": b"small"}
        assert ro._mount.pathfs.readlink("/link") == "small.txt"
        assert len(redis_servers_for(meta)) == 1
    assert redis_servers_for(meta) == []
    left = sorted(p.name for p in meta.iterdir())
    assert left == [".volume-index.json", ".volume.lock", "meta.rdb"]


def test_environment_makes_redis_the_default(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNION_VOLUME_METADATA_STORE", "redis")
    rw = Volume.new("from-env", bucket=bucket)
    assert rw.metadata_store_type == "redis"
    rw.mount(transport="none")
    rw._mount.pathfs.write_bytes("/x", b"1")
    assert rw.finalize().index.format == "redis"


def test_migration_both_ways_keeps_the_namespace_and_moves_no_block(mem_bucket: str) -> None:
    base = committed(mem_bucket, store="sqlite")
    store = MemoryObjectStore.from_uri(mem_bucket)
    before = store.stats.copy()
    to_redis = base.migrate_metadata_store_type("redis")
    back = to_redis.migrate_metadata_store_type("sqlite")
    moved = store.stats - before
    # two index downloads, two indexes and two version documents uploaded: not one block
    assert moved.gets == 2 and moved.get_bytes == base.index_bytes + to_redis.index_bytes
    assert moved.puts == 4
    assert (to_redis.index.format, back.index.format) == ("redis", "sqlite")
    dumps = []
    for version in (base, to_redis, back):
        with version.mount(transport="none") as ro:
            assert read_tree(ro) == {**CONTENT, "dir/hard": b"small"}
            dumps.append(dump_json(ro))
    counters = [d.pop("Counters") for d in dumps]
    assert dumps[0] == dumps[1] == dumps[2]
    for name in ("usedSpace", "usedInodes"):
        assert counters[0][name] == counters[1][name] == counters[2][name]
    assert counters[0]["nextInodes"] < counters[1]["nextInodes"] < counters[2]["nextInodes"]
    assert (store.stats - before).puts == moved.puts  # read-only mounts upload nothing
    with pytest.raises(VolumeMigrateNoop):
        to_redis.migrate_metadata_store_type("redis")


def test_forks_of_a_redis_version_claim_their_own_domains(bucket: str) -> None:
    base = committed(bucket)
    chunks = []
    for name in ("fork-1", "fork-2"):
        rw = base.fork(name).mount(transport="none")
        assert rw._mount.meta.name == "redis"
        rw._mount.pathfs.write_bytes(f"/{name}", os.urandom(10_000))
        new = rw.finalize()
        with new.mount(transport="none") as ro, ro._mount.meta.transaction() as tx:
            # the newest slice (a published nextChunk points at the foreign lane: pins)
            chunks.append(max(sid for sid, _size, _refs in tx.slice_refs()))
    domains = {c >> DOMAIN_BITS for c in chunks}
    assert len(domains) == 2 and 0 not in domains
    ledger = sorted(p.name for p in (Path(bucket) / "base" / "_volume" / "domains").iterdir())
    assert len(ledger) == 3  # the base's first mount and two forks


def test_store_type_mismatch_on_remount(bucket: str, tmp_path: Path) -> None:
    version = committed(bucket)
    wrong = ROVolume.parse({**version.model_dump(), "metadata_store_type": "sqlite"})
    with pytest.raises(VolumeStoreMismatch):
        wrong.mount(transport="none")
    sqlite_version = committed(bucket, name="other", store="sqlite")
    meta = tmp_path / "shared-meta"
    with sqlite_version.mount(meta_dir=meta, transport="none"):
        pass
    with pytest.raises(VolumeStoreMismatch):
        version.mount(meta_dir=meta, transport="none")


@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty"])
def test_a_damaged_rdb_mounts_nothing(bucket: str, tmp_path: Path, damage: str) -> None:
    version = committed(bucket)
    index = Path(version.index.path[len("file://") :])
    data = index.read_bytes()
    damaged = {
        "flipped": data[:200] + bytes([data[200] ^ 0xFF]) + data[201:],
        "truncated": data[: len(data) // 2],
        "empty": b"",
    }[damage]
    index.write_bytes(damaged)
    index_doc = {**version.index.model_dump(), "hash": None}  # past the hash check: the RDB's own
    unchecked = ROVolume.parse({**version.model_dump(), "index": index_doc})
    meta = tmp_path / "meta"
    with pytest.raises(VolumeIndexCorrupt):
        unchecked.mount(meta_dir=meta, transport="none")
    assert sorted(p.name for p in meta.iterdir()) == [".volume.lock"]
    assert redis_servers_for(meta) == [] and not unchecked.mounted


@pytest.mark.filterwarnings("ignore:unmounting RWVolume:RuntimeWarning")
def test_a_server_crash_fails_operations_with_eio_and_publishes_nothing(bucket: str) -> None:
    version = committed(bucket)
    rw = version.fork("crashing").mount(transport="none")
    fs = rw._mount.pathfs
    fs.write_bytes("/before-crash", b"x")
    first = rw.commit("kept")
    os.kill(rw._mount.meta._server.proc.pid, signal.SIGKILL)
    rw._mount.meta._server.proc.wait()
    with pytest.raises(OSError) as failed:
        fs.write_bytes("/after-crash", b"y")
    assert failed.value.errno == errno.EIO
    with pytest.raises(OSError) as failed:
        fs.listdir("/")
    assert failed.value.errno == errno.EIO
    versions = Path(bucket) / "base" / "_volume" / "versions"
    published = sorted(p.name for p in versions.iterdir())
    with pytest.raises(Exception):
        rw.commit("never")
    assert sorted(p.name for p in versions.iterdir()) == published
    meta_dir = rw._mount.meta_dir.path
    try:
        rw.unmount()  # releases everything; the engine may report the lost server while closing
    except OSError as exc:
        assert exc.errno == errno.EIO
    assert not rw.mounted and redis_servers_for(meta_dir) == []
    with first.mount(transport="none") as ro:
        assert ro._mount.pathfs.read_bytes("/before-crash") == b"x"
        assert not ro._mount.pathfs.exists("/after-crash")


@pytest.mark.skipif(
    juicefs_binary() is None or not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"),
    reason=f"{SKIP_REASON}; or /dev/fuse / fusermount3 missing",
)
def test_the_stock_client_writing_a_copy_of_a_redis_index_cannot_hurt_the_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins of a redis index (applied inside a scratch server) hold against the real client:
    mounted read-write on a redis-server started on a copy of a published index, it overwrites,
    truncates and deletes everything with the trash off and runs its background deletes;
    every version still reads back, no block went, its new slices lie in the foreign lane, and
    our metadata check passes on what it left (its new slices have no sliceRef field)."""
    from tests.property.test_lifecycle_foreign import (
        chunk_keys,
        family,
        foreign_writer,
        reads_back,
    )

    monkeypatch.setenv("UNION_VOLUME_METADATA_STORE", "redis")
    bucket = str(tmp_path / "bucket")
    versions = family(bucket)
    assert versions["c2"][0].index.format == "redis"
    before = chunk_keys(bucket)
    short = Path(tempfile.mkdtemp(prefix="jfsf-"))  # unix socket paths stay short
    try:
        shutil.copyfile(versions["c2"][0].index.path[len("file://") :], short / "meta.rdb")
        server = RedisServer(short, "meta.rdb")
        try:
            with redis.Redis(unix_socket_path=server.socket) as raw:
                setting = json.loads(raw.get("setting"))
                raw.set("setting", json.dumps({**setting, "TrashDays": 0}, indent=1))
                foreign_writer(f"unix://{short}/redis.sock", tmp_path / "mnt", bucket)
                raw.save()
        finally:
            server.stop()
        after = chunk_keys(bucket)
        assert before <= after, f"the client deleted {sorted(before - after)[:5]}"
        lanes = {int(k.rsplit("/", 1)[1].split("_")[0]) >> DOMAIN_BITS for k in after - before}
        assert lanes == {FOREIGN_DOMAIN}
        assert reads_back(versions, tmp_path) == dict.fromkeys(versions, True)
        for name, (version, _) in versions.items():
            with version.mount(transport="none", meta_dir=tmp_path / f"check-{name}") as ro:
                assert check_metadata(ro._mount.meta) == []
        RedisMetaStore.restore(short / "meta.rdb", tmp_path / "theirs")
        with RedisMetaStore.open(tmp_path / "theirs", read_only=True) as meta:
            assert check_metadata(meta) == []  # what the client left
    finally:
        shutil.rmtree(short, ignore_errors=True)
