"""Compaction keeps every byte: the plan against a byte-array model, and an engine file under
random writes, truncates and reopens with compaction after a few records, against a bytearray.

``-m slow`` runs the file machines with ten times the examples."""

from __future__ import annotations

import os
import random
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

from volume.engine import CompactionPolicy, Engine, PathFS, format_volume, new_format
from volume.engine.check import check_metadata
from volume.engine.compaction import plan_compaction
from volume.juicefs import CHUNK_SIZE, SliceRecord

# --------------------------------------------------------------------------- the plan

SPAN = 4096  # records of the plan tests live in the first SPAN bytes of a chunk


def slice_byte(slice_id: int, off: int) -> int:
    """Byte ``off`` of slice ``slice_id`` in the model (never 0, so holes stand out)."""
    return (slice_id * 7 + off * 13) % 251 + 1


def visible(records: list[SliceRecord], new_slice: bytes = b"", new_id: int = -1) -> bytes:
    """The chunk's first SPAN bytes after laying ``records`` in order, byte by byte."""
    out = bytearray(SPAN)
    for r in records:
        for i in range(r.len):
            if r.id == 0:
                out[r.pos + i] = 0
            elif r.id == new_id:
                out[r.pos + i] = new_slice[r.off + i]
            else:
                out[r.pos + i] = slice_byte(r.id, r.off + i)
    return bytes(out)


@st.composite
def record_lists(draw) -> list[SliceRecord]:
    records = []
    for _ in range(draw(st.integers(1, 25))):
        pos = draw(st.integers(0, SPAN - 1))
        length = draw(st.integers(1, min(SPAN - pos, draw(st.sampled_from([16, 200, SPAN])))))
        if draw(st.integers(0, 5)) == 0:
            records.append(SliceRecord(pos, 0, 0, 0, length))  # a hole (truncate, punch)
            continue
        off = draw(st.integers(0, 64))
        slice_id = draw(st.integers(1, 40))
        records.append(SliceRecord(pos, slice_id, off + length + 10, off, length))
    return records


@settings(max_examples=400, deadline=None)
@given(records=record_lists(), large=st.sampled_from([1, 32, 300, 1 << 20]))
def test_a_plan_shows_the_same_bytes_with_fewer_records(records, large) -> None:
    plan = plan_compaction(records, large)
    if plan is None:
        return
    new_id = 10_000
    new_slice = b"".join(
        bytes(p.length)
        if p.id == 0
        else bytes(slice_byte(p.id, p.off + i) for i in range(p.length))
        for p in plan.copies
    )
    replacement = plan.records(new_id)
    assert visible(replacement, new_slice, new_id) == visible(records)
    assert len(replacement) < len(records)
    for r in replacement:
        assert r.id != 0  # nothing older is left for a hole to hide
        assert 0 <= r.off and r.off + r.len <= r.size
        if r.id == new_id:
            assert r.size == len(new_slice)


def test_tiny_appends_become_one_record() -> None:
    records = [SliceRecord(i * 100, i + 1, 100, 0, 100) for i in range(10)]
    plan = plan_compaction(records, 1 << 20)
    assert plan is not None
    assert plan.records(99) == [SliceRecord(0, 99, 1000, 0, 1000)]


def test_large_pieces_are_referenced_not_copied() -> None:
    base = SliceRecord(0, 1, CHUNK_SIZE, 0, CHUNK_SIZE)
    small = [SliceRecord(i * (8 << 20), 10 + i, 4096, 0, 4096) for i in range(1, 4)]
    # far-apart small overwrites: copying would cost megabytes, so nothing is worth doing
    assert plan_compaction([base, *small], 1 << 20) is None
    # the same overwrites repeated: only the last of each survives, and no byte is copied
    plan = plan_compaction([base, *small, *small, *small], 1 << 20)
    assert plan is not None and plan.copies == []
    assert len(plan.records(99)) == 7


def test_overwritten_records_and_holes_disappear() -> None:
    records = [SliceRecord(0, i, 2 << 20, 0, 2 << 20) for i in range(1, 6)]
    records.append(SliceRecord(1 << 20, 0, 0, 0, 1 << 20))  # truncated to 1 MiB
    plan = plan_compaction(records, 1 << 20)
    assert plan is not None
    assert plan.records(99) == [SliceRecord(0, 5, 2 << 20, 0, 1 << 20)]


# --------------------------------------------------------------------------- an engine file

BLOCK = 64 << 10
offsets = st.one_of(
    st.integers(0, 5 * BLOCK),
    st.sampled_from([0, BLOCK - 1, BLOCK, 2 * BLOCK + 1]),
    st.integers(CHUNK_SIZE - 2 * BLOCK, CHUNK_SIZE + BLOCK),  # across the chunk boundary
)
sizes = st.one_of(st.integers(1, 3000), st.integers(1, 3 * BLOCK), st.sampled_from([BLOCK]))


class CompactedFile(RuleBasedStateMachine):
    """One file written through the engine at random, compared with a bytearray."""

    policy = CompactionPolicy(at_records=3, large_piece=BLOCK, background=False)

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        root = self.dir.name
        self.objects = LocalObjectStore(os.path.join(root, "bucket"))
        self.meta_dir = os.path.join(root, "meta")
        meta = SQLiteMetaStore.open(self.meta_dir)
        fmt = new_format("compact", storage="file", bucket=self.objects.uri, block_size_kib=64)
        format_volume(meta, self.objects, fmt)
        meta.close()
        self.model = bytearray()
        self._mount()

    def _mount(self) -> None:
        self.meta = SQLiteMetaStore.open(self.meta_dir)
        self.engine = Engine(self.meta, self.objects, compaction=self.policy)
        self.fs = PathFS(self.engine)
        self.fd = self.fs.open("/f", os.O_RDWR | os.O_CREAT)

    def _unmount(self) -> None:
        self.fs.close(self.fd)
        self.engine.close()
        self.meta.close()

    @rule(offset=offsets, size=sizes, seed=st.integers(0, 255))
    def pwrite(self, offset: int, size: int, seed: int) -> None:
        data = random.Random(seed).randbytes(size)
        self.fs.write(self.fd, data, offset)
        if offset > len(self.model):
            self.model.extend(bytes(offset - len(self.model)))
        self.model[offset : offset + size] = data

    @rule(size=st.one_of(st.integers(0, 5 * BLOCK), st.just(CHUNK_SIZE + 10)))
    def truncate(self, size: int) -> None:
        self.fs.ftruncate(self.fd, size)
        del self.model[size:]
        self.model.extend(bytes(size - len(self.model)))

    @rule()
    def publish(self) -> None:
        """fsync publishes the buffered slice (a record, maybe a compaction)."""
        self.fs.fsync(self.fd)

    @rule()
    def remount(self) -> None:
        self._unmount()
        self._mount()

    @precondition(lambda self: self.model)
    @rule(offset=offsets, size=sizes)
    def read(self, offset: int, size: int) -> None:
        offset %= len(self.model)
        assert self.fs.read(self.fd, size, offset) == bytes(self.model[offset : offset + size])

    @invariant()
    def same_bytes(self) -> None:
        self.engine.drain()  # background compactions done too
        assert self.fs.fstat(self.fd).st_size == len(self.model)
        for start in range(0, len(self.model), 4 * BLOCK):  # skips the zeros of sparse tails
            if start > 6 * BLOCK and start < CHUNK_SIZE - 3 * BLOCK:
                continue
            got = self.fs.read(self.fd, 4 * BLOCK, start)
            assert got == bytes(self.model[start : start + 4 * BLOCK]), f"at {start}"

    @invariant()
    def consistent_metadata(self) -> None:
        ino = self.fs.fstat(self.fd).st_ino
        assert check_metadata(self.meta, {ino}) == []

    def teardown(self) -> None:
        self._unmount()
        self.dir.cleanup()


class BackgroundCompactedFile(CompactedFile):
    """The same, compacted by the background worker while the machine goes on writing."""

    policy = CompactionPolicy(at_records=3, large_piece=BLOCK)


MACHINE = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCompactedFile = CompactedFile.TestCase
TestCompactedFile.settings = MACHINE
TestBackgroundCompactedFile = BackgroundCompactedFile.TestCase
TestBackgroundCompactedFile.settings = MACHINE


@pytest.mark.slow
@pytest.mark.timeout(0)  # the budget is the number of examples
class TestCompactedFileSlow(CompactedFile.TestCase):
    settings = settings(MACHINE, max_examples=300, stateful_step_count=60)


@pytest.mark.slow
@pytest.mark.timeout(0)
class TestBackgroundCompactedFileSlow(BackgroundCompactedFile.TestCase):
    settings = settings(MACHINE, max_examples=300, stateful_step_count=60)
