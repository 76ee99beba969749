"""Bounded memory while the object store is down: buffered and failed blocks count against the
buffer bound, writers wait and then fail with EIO, and everything resumes when the store returns.

The slow test writes 1 GiB through an outage in a child process and reports its peak RSS.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from volume.engine import Engine, PathFS, format_volume, new_format
from volume.errors import ObjectStoreError, VolumeCommitError
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

BLOCK = 64 << 10


class OutageStore(LocalObjectStore):
    """A local store whose block puts fail (``down``) or stall (``stalled``) on demand."""

    # every block goes through put (not staged in place)
    capabilities = dataclasses.replace(LocalObjectStore.capabilities, staging=False)

    def __init__(self, root: Path):
        super().__init__(root)
        self.down = threading.Event()
        self.stalled = threading.Event()
        self.failed_puts = 0

    def put(self, key, data, *, if_absent=False):
        if "/chunks/" in key:
            while self.stalled.is_set():
                time.sleep(0.01)
            if self.down.is_set():
                self.failed_puts += 1
                raise ObjectStoreError(f"the store is down (put {key})")
        super().put(key, data, if_absent=if_absent)


def make_engine(root: Path, *, buffer: int, timeout: float, block_kib: int = 64):
    meta = SQLiteMetaStore.open(root / "meta")
    objects = OutageStore(root / "bucket")
    fmt = new_format("outage", storage="file", bucket=f"{root}/bucket/", block_size_kib=block_kib)
    format_volume(meta, objects, fmt)
    engine = Engine(meta, objects, buffer_bytes=buffer, io_timeout=timeout, upload_workers=2)
    return meta, objects, engine


def test_writers_fail_with_eio_past_the_bound_and_resume_after_the_outage(tmp_path: Path) -> None:
    # failing attempts back off for about 0.35 s each, two at a time: the timeout leaves room
    meta, objects, engine = make_engine(tmp_path, buffer=512 << 10, timeout=3.0)
    fs = PathFS(engine)
    data = os.urandom(3 << 20)
    objects.down.set()
    fd = fs.open("/f", os.O_CREAT | os.O_WRONLY)
    with pytest.raises(OSError) as info:
        for off in range(0, len(data), BLOCK):
            fs.write(fd, data[off : off + BLOCK], off)
    assert info.value.errno == errno.EIO
    assert objects.failed_puts > 0
    # failed blocks are held, but never more than the bound (plus the block being handed over)
    held = engine.blocks.pending_bytes + engine.blocks.buffered_bytes
    assert held <= (512 << 10) + BLOCK
    with pytest.raises(VolumeCommitError):
        engine.drain(timeout=1.0)
    objects.down.clear()  # the store is back: the same writes go through, and a drain succeeds
    for off in range(0, len(data), BLOCK):
        fs.write(fd, data[off : off + BLOCK], off)
    fs.close(fd)
    engine.drain(timeout=30)
    assert engine.blocks.pending_bytes == engine.blocks.buffered_bytes == 0
    assert fs.read_bytes("/f") == data
    engine.close()
    meta.close()


def test_a_writer_waits_through_a_short_outage(tmp_path: Path) -> None:
    meta, objects, engine = make_engine(tmp_path, buffer=512 << 10, timeout=30.0)
    fs = PathFS(engine)
    data = os.urandom(4 << 20)
    objects.down.set()
    threading.Timer(1.5, objects.down.clear).start()
    started = time.monotonic()
    fd = fs.open("/f", os.O_CREAT | os.O_WRONLY)
    peak = 0
    for off in range(0, len(data), BLOCK):
        fs.write(fd, data[off : off + BLOCK], off)
        peak = max(peak, engine.blocks.pending_bytes + engine.blocks.buffered_bytes)
    fs.close(fd)
    assert time.monotonic() - started >= 1.0  # it waited for the store
    assert peak <= (512 << 10) + BLOCK
    engine.drain(timeout=30)
    assert fs.read_bytes("/f") == data
    engine.close()
    meta.close()


def test_a_stalled_store_holds_writers_at_the_bound(tmp_path: Path) -> None:
    meta, objects, engine = make_engine(tmp_path, buffer=512 << 10, timeout=0.5)
    fs = PathFS(engine)
    objects.stalled.set()
    fd = fs.open("/f", os.O_CREAT | os.O_WRONLY)
    with pytest.raises(OSError) as info:
        for off in range(0, 4 << 20, BLOCK):
            fs.write(fd, b"s" * BLOCK, off)
    assert info.value.errno == errno.EIO
    assert engine.blocks.pending_bytes <= (512 << 10) + BLOCK
    objects.stalled.clear()
    fs.close(fd)
    engine.drain(timeout=30)
    engine.close()
    meta.close()


# --------------------------------------------------------------------------- 1 GiB, peak RSS


def _child(root: str, total: int, buffer: int) -> None:
    """Write ``total`` bytes while the store goes down for 3 s after the first quarter; print
    the peak RSS before and after as JSON."""
    meta, objects, engine = make_engine(Path(root), buffer=buffer, timeout=60.0, block_kib=4096)
    fs = PathFS(engine)
    chunk = os.urandom(1 << 20)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fd = fs.open("/big", os.O_CREAT | os.O_WRONLY)
    started = time.monotonic()
    for i, off in enumerate(range(0, total, len(chunk))):
        if off == total // 4:
            objects.down.set()
            threading.Timer(3.0, objects.down.clear).start()
        fs.write(fd, chunk, off)
    fs.close(fd)
    engine.drain(timeout=120)
    elapsed = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = fs.stat("/big").st_size
    engine.close()
    meta.close()
    print(json.dumps({"base_kib": base, "peak_kib": peak, "size": size, "seconds": elapsed,
                      "failed_puts": objects.failed_puts}))  # fmt: skip


@pytest.mark.slow
def test_one_gib_through_an_outage_keeps_memory_bounded(tmp_path: Path) -> None:
    total, buffer = 1 << 30, 64 << 20
    out = subprocess.run(
        [sys.executable, __file__, str(tmp_path), str(total), str(buffer)],
        capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"1 GiB through a 3 s outage: {result}")
    assert result["size"] == total
    assert result["failed_puts"] > 0
    grown = (result["peak_kib"] - result["base_kib"]) << 10
    assert grown < 3 * buffer, f"peak RSS grew by {grown >> 20} MiB for a {buffer >> 20} MiB bound"


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
