"""The remote data path on S3 (moto behind a counting proxy): block reads through a bounded LRU
``cache_dir`` that survives a remount, sequential prefetch, parallel uploads under a bounded
buffer, and a commit that returns only when every block is stored."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from volume_s3 import S3ObjectStore
from volume_sqlite import SQLiteMetaStore

from volume import Volume
from volume.engine import Engine, PathFS, format_volume, new_format

from .conftest import S3_BUCKET
from .proxy import CountingProxy

MiB = 1 << 20


@pytest.fixture
def proxied(s3_env, unique_prefix):
    proxy = CountingProxy(s3_env.url)
    store = S3ObjectStore.from_uri(f"s3://{S3_BUCKET}/{unique_prefix}", endpoint=proxy.url)
    yield proxy, store
    store.close()
    proxy.close()


def _volume(tmp_path: Path, store: S3ObjectStore, name: str = "datapath") -> Path:
    meta_dir = tmp_path / "meta"
    meta = SQLiteMetaStore.open(meta_dir)
    fmt = new_format(name, storage="s3", bucket=store.format_bucket, block_size_kib=1024)
    format_volume(meta, store, fmt)
    meta.close()
    return meta_dir


def _engine(meta_dir: Path, store, **kw) -> Engine:
    return Engine(SQLiteMetaStore.open(meta_dir), store, **kw)


def _close(engine: Engine) -> None:
    engine.close()
    engine.meta.close()


def _cache_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_block_reads_go_through_a_bounded_lru_cache_dir_that_survives_remount(
    proxied, tmp_path
) -> None:
    proxy, store = proxied
    meta_dir = _volume(tmp_path, store)
    data = random.Random(3).randbytes(8 * MiB)
    engine = _engine(meta_dir, store)
    PathFS(engine).write_bytes("/f", data)
    _close(engine)

    cache = tmp_path / "cache"
    bound = 3 * MiB
    engine = _engine(meta_dir, store, cache_dir=cache, cache_dir_bytes=bound, cache_bytes=0)
    proxy.reset_counts()
    assert PathFS(engine).read_bytes("/f") == data
    assert proxy.block_requests() >= 8  # every block came from the store once
    _close(engine)
    size = _cache_size(cache)
    assert 0 < size <= bound, size  # bounded, verified on disk

    # a remount with the same cache_dir: the most recently read blocks are served from disk
    engine = _engine(meta_dir, store, cache_dir=cache, cache_dir_bytes=bound, cache_bytes=0,
                     readahead_blocks=0)  # fmt: skip
    proxy.reset_counts()
    fs = PathFS(engine)
    fd = fs.open("/f")
    assert fs.read(fd, MiB, 7 * MiB) == data[7 * MiB :]
    assert proxy.block_requests() == 0, proxy.block_gets  # the last block: cached
    assert fs.read(fd, MiB, 0) == data[:MiB]
    assert proxy.block_requests() == 1, proxy.block_gets  # the first: evicted (LRU)
    fs.close(fd)
    _close(engine)
    assert _cache_size(cache) <= bound


def test_sequential_reads_prefetch_ahead(proxied, tmp_path) -> None:
    proxy, store = proxied
    meta_dir = _volume(tmp_path, store)
    data = random.Random(4).randbytes(8 * MiB)
    engine = _engine(meta_dir, store)
    PathFS(engine).write_bytes("/f", data)
    _close(engine)

    engine = _engine(meta_dir, store, readahead_blocks=3, cache_bytes=64 * MiB)
    fs = PathFS(engine)
    fd = fs.open("/f")
    proxy.reset_counts()
    offset = 0
    while offset < 2 * MiB:  # read the first two blocks sequentially, in 128 KiB reads
        assert fs.read(fd, 128 << 10, offset) == data[offset : offset + (128 << 10)]
        offset += 128 << 10
    deadline = time.monotonic() + 10
    while proxy.block_requests() < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    fetched = set(proxy.block_gets)
    # blocks beyond what was read were fetched in the background
    assert any(name.split("_")[1] in ("2", "3", "4") for name in fetched), fetched
    fs.close(fd)
    _close(engine)


def test_uploads_run_in_parallel_under_a_bounded_buffer_and_commit_waits(
    s3_env, unique_prefix, tmp_path, monkeypatch
) -> None:
    proxy = CountingProxy(s3_env.url)
    proxy.block_put_delay = 0.3  # a network slower than the writer
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        rw = Volume.new("uploads", bucket=f"s3://{S3_BUCKET}/{unique_prefix}").mount(
            meta_dir=tmp_path / "meta", transport="none", upload_workers=4, buffer_size_mb=16
        )
        engine = rw._mount.engine
        fs = PathFS(engine)
        fd = fs.open("/big", os.O_WRONLY | os.O_CREAT)
        chunk = random.Random(5).randbytes(MiB)
        peak = 0
        started = time.monotonic()
        for n in range(32):  # 32 MiB: 8 blocks of 4 MiB
            fs.write(fd, chunk, n * MiB)
            peak = max(peak, engine.blocks.pending_bytes + engine.blocks.buffered_bytes)
        fs.close(fd)
        # the writer was held back by the buffer: 8 uploads of 0.3 s, at most 4 at a time
        assert time.monotonic() - started >= 0.3
        assert peak <= 16 * MiB, peak  # the buffer bound holds while the network lags
        version = rw.commit("after a slow upload")
        # commit returned: every block is stored (read straight from moto, not the proxy)
        direct = S3ObjectStore.from_uri(f"s3://{S3_BUCKET}/{unique_prefix}", endpoint=s3_env.url)
        blocks = [i for i in direct.list("uploads/chunks/")]
        assert sum(i.size for i in blocks) == 32 * MiB
        assert proxy.max_in_flight_puts >= 2, proxy.max_in_flight_puts  # parallel uploads
        assert proxy.max_in_flight_puts <= 4
        assert version.index is not None
        rw.finalize("done")
        direct.close()
    finally:
        proxy.close()
