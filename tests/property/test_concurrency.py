"""Several threads drive several handles on the same inodes; every read is checked against a model.

What is legal under concurrency: the operations that change or observe a file's bytes (write,
read, ftruncate, truncate by path, fstat, fallocate, copy_file_range) run under that file's model lock, so the model holds
exactly the bytes the engine must return. Everything else runs without it, truly concurrently
with them: opening and closing handles on the same inode (the deadlock of issue 9), fsync,
flushing every open file, renames that swap the two names, unlinking a name and creating a new
file there (open handles keep the old inode), and background compaction and uploads under a
small upload buffer. A watchdog fails the example after ``STALL_S`` seconds with every thread's
stack (faulthandler) instead of hanging the run.

``-m slow`` runs the long profile.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

from volume.engine import RENAME_EXCHANGE, CompactionPolicy, Engine, PathFS, format_volume, new_format
from volume.engine.check import check_metadata

STALL_S = 60.0
NAMES = ("/a", "/b")
SLOTS = 2  # handles per thread
SPAN = 400_000  # offsets stay below this (several 64 KiB blocks)

offsets = st.one_of(st.integers(0, 2000), st.integers(0, SPAN))
sizes = st.one_of(st.integers(1, 300), st.integers(1, 70_000))
slot = st.integers(0, SLOTS - 1)
name = st.sampled_from(NAMES)

operation = st.one_of(
    st.tuples(st.just("write"), slot, offsets, sizes, st.integers(1, 250)),
    st.tuples(st.just("write"), slot, offsets, sizes, st.integers(1, 250)),
    st.tuples(st.just("read"), slot, offsets, sizes),
    st.tuples(st.just("read"), slot, offsets, sizes),
    st.tuples(st.just("ftruncate"), slot, offsets),
    st.tuples(st.just("truncate"), name, offsets),
    st.tuples(st.just("fstat"), slot),
    st.tuples(st.just("reopen"), slot, name, st.booleans()),
    st.tuples(st.just("reopen"), slot, name, st.just(False)),
    st.tuples(st.just("fsync"), slot),
    st.tuples(st.just("flush_all")),
    st.tuples(st.just("swap")),
    st.tuples(st.just("fallocate"), slot, st.sampled_from([0x00, 0x01, 0x03, 0x10]), offsets, sizes),
    st.tuples(st.just("clone"), slot, slot, offsets, offsets, sizes),
    st.tuples(st.just("replace"), name),
)
programs = st.lists(st.lists(operation, min_size=1, max_size=25), min_size=2, max_size=4)


def pattern(seed: int, offset: int, size: int) -> bytes:
    """Bytes that depend on where they are written, so misplaced data is caught."""
    return bytes((seed + (offset + i) * 7) % 251 + 1 for i in range(size))


@dataclass
class World:
    """The model: which file each name holds, and each file's bytes, behind per-file locks."""

    fs: PathFS
    names: dict[str, int] = field(default_factory=lambda: {"/a": 0, "/b": 1})
    models: dict[int, bytearray] = field(default_factory=lambda: {0: bytearray(), 1: bytearray()})
    locks: dict[int, threading.Lock] = field(
        default_factory=lambda: {0: threading.Lock(), 1: threading.Lock()}
    )
    ns_lock: threading.Lock = field(default_factory=threading.Lock)  # names -> files

    def new_file(self) -> int:
        fid = len(self.models)
        self.models[fid] = bytearray()
        self.locks[fid] = threading.Lock()
        return fid


def resize(model: bytearray, size: int) -> None:
    if size < len(model):
        del model[size:]
    else:
        model.extend(bytes(size - len(model)))


def run_thread(world: World, ops: list[tuple]) -> None:
    fs = world.fs
    handles: list[tuple[int, int]] = []
    with world.ns_lock:
        for i in range(SLOTS):
            path = NAMES[i % len(NAMES)]
            handles.append((fs.open(path, os.O_RDWR), world.names[path]))
    try:
        for op in ops:
            kind = op[0]
            if kind == "write":
                _, s, offset, size, seed = op
                fd, fid = handles[s]
                data = pattern(seed, offset, size)
                with world.locks[fid]:
                    assert fs.write(fd, data, offset) == size
                    model = world.models[fid]
                    if len(model) < offset + size:
                        resize(model, offset + size)
                    model[offset : offset + size] = data
            elif kind == "read":
                _, s, offset, size = op
                fd, fid = handles[s]
                with world.locks[fid]:
                    got = fs.read(fd, size, offset)
                    expected = bytes(world.models[fid][offset : offset + size])
                assert got == expected, f"file {fid}: read({offset}, {size}) differs from the model"
            elif kind == "ftruncate":
                _, s, size = op
                fd, fid = handles[s]
                with world.locks[fid]:
                    fs.ftruncate(fd, size)
                    resize(world.models[fid], size)
            elif kind == "truncate":
                _, path, size = op
                with world.ns_lock:
                    fid = world.names[path]
                    with world.locks[fid]:
                        fs.truncate(path, size)
                        resize(world.models[fid], size)
            elif kind == "fstat":
                fd, fid = handles[op[1]]
                with world.locks[fid]:
                    assert fs.fstat(fd).st_size == len(world.models[fid])
            elif kind == "reopen":
                _, s, path, trunc = op
                fs.close(handles[s][0])  # concurrently with everything on the inode
                with world.ns_lock:
                    fid = world.names[path]
                    if trunc:
                        with world.locks[fid]:
                            fd = fs.open(path, os.O_RDWR | os.O_TRUNC)
                            resize(world.models[fid], 0)
                    else:
                        fd = fs.open(path, os.O_RDWR)
                handles[s] = (fd, fid)
            elif kind == "fallocate":
                _, s, mode, offset, size = op
                fd, fid = handles[s]
                with world.locks[fid]:
                    fs.fallocate(fd, mode, offset, size)
                    model = world.models[fid]
                    if mode & 0x12:  # punch a hole, zero a range: zeros inside the file
                        end = min(offset + size, len(model))
                        if offset < end:
                            model[offset:end] = bytes(end - offset)
                    if not mode & 0x01 and offset + size > len(model):
                        resize(model, offset + size)
            elif kind == "clone":
                _, s_in, s_out, off_in, off_out, size = op
                (fd_in, fin), (fd_out, fout) = handles[s_in], handles[s_out]
                with contextlib.ExitStack() as stack:
                    for fid in sorted({fin, fout}):  # the test's own lock order
                        stack.enter_context(world.locks[fid])
                    src, dst = world.models[fin], world.models[fout]
                    n = max(min(size, len(src) - off_in), 0)
                    if fin == fout and n and off_out < off_in + n and off_in < off_out + n:
                        with pytest.raises(OSError):  # overlapping ranges of one file
                            fs.copy_file_range(fd_in, fd_out, size, off_in, off_out)
                        continue
                    assert fs.copy_file_range(fd_in, fd_out, size, off_in, off_out) == n
                    piece = bytes(src[off_in : off_in + n])
                    if n:
                        if len(dst) < off_out + n:
                            resize(dst, off_out + n)
                        dst[off_out : off_out + n] = piece
            elif kind == "fsync":
                fs.fsync(handles[op[1]][0])
            elif kind == "flush_all":
                fs.engine.flush()
            elif kind == "swap":
                with world.ns_lock:
                    fs.rename("/a", "/b", RENAME_EXCHANGE)
                    world.names["/a"], world.names["/b"] = world.names["/b"], world.names["/a"]
            elif kind == "replace":
                path = op[1]
                with world.ns_lock:
                    fs.unlink(path)  # open handles keep the old inode
                    fs.close(fs.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    world.names[path] = world.new_file()
    finally:
        for fd, _ in handles:
            fs.close(fd)


def run_program(program: list[list[tuple]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        meta = SQLiteMetaStore.open(root / "meta")
        objects = LocalObjectStore(root / "bucket")
        fmt = new_format("conc", storage="file", bucket=f"{root}/bucket/", block_size_kib=64)
        format_volume(meta, objects, fmt)
        engine = Engine(
            meta, objects, upload_workers=2, buffer_bytes=256 << 10, io_timeout=STALL_S,
            compaction=CompactionPolicy(at_records=4, large_piece=32 << 10),
        )  # fmt: skip
        fs = PathFS(engine)
        for path in NAMES:
            fs.write_bytes(path, b"")
        world = World(fs)
        errors: list[BaseException] = []

        def body(ops: list[tuple]) -> None:
            try:
                run_thread(world, ops)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=body, args=(ops,), daemon=True) for ops in program]
        for t in threads:
            t.start()
        deadline = time.monotonic() + STALL_S
        for t in threads:
            t.join(max(deadline - time.monotonic(), 0))
        if any(t.is_alive() for t in threads):
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            pytest.fail(f"the engine stalled for {STALL_S} s (deadlock?); stacks are on stderr")
        if errors:
            raise errors[0]
        for path in NAMES:
            assert fs.read_bytes(path) == bytes(world.models[world.names[path]]), path
        engine.drain(timeout=STALL_S)
        assert engine.blocks.pending_bytes == engine.blocks.buffered_bytes == 0
        assert check_metadata(meta) == []
        engine.close()
        meta.close()


FAST = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=int(os.environ.get("VOLUME_CONCURRENCY_EXAMPLES", "400")))


@FAST
@given(programs)
def test_threads_on_shared_inodes(program: list[list[tuple]]) -> None:
    run_program(program)


@pytest.mark.slow
@SLOW
@given(programs)
def test_threads_on_shared_inodes_long(program: list[list[tuple]]) -> None:
    run_program(program)


def test_writer_against_openers_regression() -> None:
    """Issue 9's deadlock as a program: scattered writes while other threads open and close."""
    writer = [("write", 0, off * 9973 % SPAN, 100, 3) for off in range(200)]
    opener = [("reopen", 0, "/a", False), ("reopen", 1, "/b", False)] * 100
    run_program([writer, opener, opener])
