"""Compatibility of Redis volumes with the real JuiceFS 1.x client, both directions.

A redis-server started on our committed RDB serves a database the Go client mounts and dumps; a
volume the Go client formatted and wrote with Redis metadata is read by our engine from the
server's RDB, byte for byte.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import pytest
from volume_redis import RedisMetaStore
from volume_redis._server import RedisServer

from tests.jfsclient import SKIP_REASON, juicefs_binary
from volume import ROVolume, Volume
from volume.engine import Engine, PathFS
from volume.dump import dump
from volume_local import LocalObjectStore

from .test_juicefs_compat import (
    PATCH_BASE,
    PATCHES,
    engine_tree,
    juicefs,
    mount_juicefs,
    needs_fuse,
    populate,
    tree,
    umount_juicefs,
)

pytestmark = [
    pytest.mark.skipif(juicefs_binary() is None, reason=SKIP_REASON),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.server,
]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths the client is given stay < 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="jfsr-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def committed(tmp_path: Path) -> ROVolume:
    """A Redis version written by our engine, with the content ``populate`` makes."""
    expected = tmp_path / "expected"
    expected.mkdir()
    populate(expected)
    rw = Volume.new("ours", bucket=str(tmp_path / "bucket"), metadata_store_type="redis")
    rw.mount(transport="none")
    fs = rw._mount.pathfs
    fs.umask = 0o022
    for rel, desc in sorted(tree(expected).items()):
        if desc[0] == "dir":
            fs.mkdir(f"/{rel}")
            fs.chmod(f"/{rel}", desc[1])
        elif desc[0] == "file" and rel not in ("hard.txt", "patched.bin"):
            fs.write_bytes(f"/{rel}", (expected / rel).read_bytes())
    fs.write_bytes("/patched.bin", PATCH_BASE)
    fd = fs.open("/patched.bin", 0o1)
    for off, data in PATCHES:
        fs.write(fd, data, off)
    fs.close(fd)
    fs.link("/d/e/small.txt", "/hard.txt")
    fs.symlink("d/e/small.txt", "/soft")
    version = rw.finalize("for the JuiceFS client")
    assert version.index.format == "redis"
    version._expected = tree(expected)  # type: ignore[attr-defined]
    return version


@pytest.fixture
def served(committed: ROVolume, short_dir: Path) -> Iterator[str]:
    """``unix://`` URL of a redis-server started on a copy of the committed RDB."""
    shutil.copy(committed.index.path[len("file://") :], short_dir / "meta.rdb")
    server = RedisServer(short_dir, "meta.rdb")
    try:
        yield f"unix://{short_dir}/redis.sock"
    finally:
        server.stop()


def our_dump(version: ROVolume) -> str:
    out = io.StringIO()
    with version.mount(transport="none") as ro:
        dump(ro._mount.meta, out)
    return out.getvalue()


def test_juicefs_dump_of_our_rdb_equals_our_dump(
    committed: ROVolume, served: str, tmp_path: Path
) -> None:
    out = tmp_path / "juicefs-dump.json"
    juicefs("dump", served, str(out))
    theirs = out.read_text()
    ours = our_dump(committed)
    assert json.loads(theirs) == json.loads(ours)
    assert theirs == ours


@needs_fuse
def test_juicefs_mounts_our_redis_version(committed: ROVolume, served: str, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mount_juicefs(served, mnt, "--read-only", "--no-bgjob")
    try:
        assert tree(mnt) == committed._expected  # type: ignore[attr-defined]
    finally:
        umount_juicefs(mnt)


@needs_fuse
def test_we_read_what_juicefs_wrote_with_redis_metadata(tmp_path: Path, short_dir: Path) -> None:
    bucket, mnt = tmp_path / "bucket", tmp_path / "mnt"
    server = RedisServer(short_dir, "meta.rdb")
    url = f"unix://{short_dir}/redis.sock"
    try:
        juicefs(
            "format", url, "theirs", "--storage", "file", "--bucket", f"{bucket}/",
            "--trash-days", "1", "--block-size", "1024",
        )  # fmt: skip
        mount_juicefs(url, mnt, "--no-bgjob")
        try:
            populate(mnt)  # overwrites, appends, a truncate, a hard link, a symlink
            (mnt / "d" / "e" / "small.txt").unlink()  # into the trash
            (mnt / "d" / "e" / "small.txt").write_bytes(b"rewritten\n")
            expected = tree(mnt)
        finally:
            umount_juicefs(mnt)
        from redis import Redis

        with Redis(unix_socket_path=server.socket) as client:
            client.save()
        shutil.copy(short_dir / "meta.rdb", tmp_path / "theirs.rdb")
    finally:
        server.stop()
    RedisMetaStore.restore(tmp_path / "theirs.rdb", tmp_path / "copy")
    meta = RedisMetaStore.open(tmp_path / "copy", read_only=True)
    engine = Engine(meta, LocalObjectStore.from_uri(str(bucket)), read_only=True)
    try:
        with warnings.catch_warnings():
            assert engine_tree(PathFS(engine)) == expected
    finally:
        engine.close()
        meta.close()
