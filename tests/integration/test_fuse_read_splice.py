"""Reads through the kernel are answered with where their bytes lie: the session hands libfuse
the block files' ranges (``read_buf``) and libfuse splices them into /dev/fuse. Checked on a
real mount: that whole sequential requests take that path, that the bytes arrive intact from any
offset, across blocks and from several readers at once, that what is not in a block file yet (a
hole, bytes still being written) is read into memory instead, that a missing block fails the
read with EIO while the mount goes on, and that no descriptor of a block file outlives the
replies it served."""

from __future__ import annotations

import errno
import os
import random
import threading
from pathlib import Path

import pytest

from volume.mount.fuse import _mount_at
from volume.mount.operations import EngineOperations, read_request_bytes, request_bytes

from .conftest import MountedVolume

pytestmark = pytest.mark.fuse

MiB = 1 << 20
BLOCK = 4 * MiB


class Answers:
    """What :meth:`EngineOperations.read_spans` answered: the spans of each read, or None."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.threads: set[int] = set()  # the threads that served them
        self.spans: list[list[tuple[int, int, int]] | None] = []
        self.lock = threading.Lock()
        original = EngineOperations.read_spans

        def counted(ops, path, size, offset, fh):
            spans = original(ops, path, size, offset, fh)
            with self.lock:
                self.sizes.append(size)
                self.threads.add(threading.get_ident())
                self.spans.append(None if spans is None else list(spans))
            return spans

        monkeypatch.setattr(EngineOperations, "read_spans", counted)

    def in_memory(self) -> int:
        return sum(s is None for s in self.spans)


def _uncached_read(path: Path, offset: int = 0, size: int | None = None) -> bytes:
    """Bytes of ``path`` read through the mount, none of its pages cached by the kernel."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if size is not None:
            return os.pread(fd, size, offset)
        return b"".join(iter(lambda: os.read(fd, MiB), b""))
    finally:
        os.close(fd)


def _block_fds(volume: MountedVolume) -> list[str]:
    """This process's descriptors open on files below the bucket."""
    open_files = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (e.g. the listing's own descriptor)
        if target.startswith(str(volume.bucket)):
            open_files.append(target)
    return open_files


def test_the_read_size_leaves_room_for_two_files_in_the_pipe() -> None:
    page = os.sysconf("SC_PAGESIZE")
    # libfuse splices a reply when header + data + a page per part and two more fit its pipe
    assert read_request_bytes() + 16 + page * (1 + 2 + 1) <= request_bytes() + page
    assert read_request_bytes() >= request_bytes() // 2


def test_sequential_reads_come_as_whole_requests_answered_with_file_ranges(
    volume: MountedVolume, monkeypatch: pytest.MonkeyPatch
) -> None:
    mounted = volume.start()
    size = read_request_bytes()
    data = os.urandom(12 * MiB)
    (mounted / "f").write_bytes(data)
    if os.geteuid() == 0:  # only root may set a mount's readahead
        bdi = _mount_at(mounted)[1]
        assert Path(f"/sys/class/bdi/{bdi}/read_ahead_kb").read_text().strip() == str(size >> 10)
    answers = Answers(monkeypatch)
    assert _uncached_read(mounted / "f") == data
    assert max(answers.sizes) == size
    # all but the first few (readahead ramps up) and the last are whole: none a sliver
    assert sum(n == size for n in answers.sizes) >= len(data) // size - 3, answers.sizes
    assert answers.in_memory() == 0, answers.spans
    assert any(spans and len(spans) == 2 for spans in answers.spans)  # across a block boundary


def test_reads_from_any_offset_and_from_several_readers_land_intact(
    volume: MountedVolume, monkeypatch: pytest.MonkeyPatch
) -> None:
    mounted = volume.start()
    data = os.urandom(3 * BLOCK + 12345)
    (mounted / "f").write_bytes(data)
    volume.restart()  # a fresh engine: every block read from its file
    answers = Answers(monkeypatch)
    rng = random.Random(7)
    cases = [(BLOCK - 5, 10), (2 * BLOCK - MiB, 2 * MiB), (len(data) - 100, 4096), (0, 1)]
    cases += [(rng.randrange(len(data)), rng.randrange(1, 3 * MiB)) for _ in range(40)]
    for offset, size in cases:
        assert _uncached_read(mounted / "f", offset, size) == data[offset : offset + size]
    assert _uncached_read(mounted / "f", len(data), 10) == b""  # past the end: nothing

    failures: list[BaseException] = []

    def reader(seed: int) -> None:
        local = random.Random(seed)
        try:
            for _ in range(15):
                offset, size = local.randrange(len(data)), local.randrange(1, 2 * MiB)
                got = _uncached_read(mounted / "f", offset, size)
                assert got == data[offset : offset + size], (offset, size)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]
    assert answers.in_memory() == 0
    assert sum(1 for spans in answers.spans if spans and len(spans) == 2) >= 2


def test_holes_and_bytes_still_being_written_are_read_from_memory(
    volume: MountedVolume, monkeypatch: pytest.MonkeyPatch
) -> None:
    mounted = volume.start()
    payload = os.urandom(3 * MiB)
    with open(mounted / "sparse", "wb") as f:
        f.truncate(2 * BLOCK)
        f.seek(BLOCK - 1000)
        f.write(payload)
    expected = bytearray(2 * BLOCK)
    expected[BLOCK - 1000 : BLOCK - 1000 + len(payload)] = payload
    answers = Answers(monkeypatch)
    assert _uncached_read(mounted / "sparse") == expected
    assert answers.in_memory() >= 1  # the reads touching the hole
    assert any(answers.spans)  # ... and those within the written bytes are file ranges

    with open(mounted / "growing", "wb", buffering=0) as writer:
        writer.write(payload[:300_000])  # staged, not sealed: in no block file yet
        assert _uncached_read(mounted / "growing") == payload[:300_000]
        writer.write(payload[300_000:])
        assert _uncached_read(mounted / "growing", 250_000, 100_000) == payload[250_000:350_000]


def test_a_missing_block_fails_the_read_with_eio_and_the_mount_goes_on(
    volume: MountedVolume,
) -> None:
    mounted = volume.start()
    data = os.urandom(BLOCK + 10)
    (mounted / "lost").write_bytes(data)
    (mounted / "kept").write_bytes(b"still here")
    mounted = volume.restart()
    blocks = [p for p in volume.block_files() if p.name.endswith(f"_{BLOCK}")]
    assert len(blocks) == 1
    blocks[0].unlink()
    with pytest.raises(OSError) as caught:
        _uncached_read(mounted / "lost", 0, MiB)
    assert caught.value.errno == errno.EIO
    assert _uncached_read(mounted / "lost", BLOCK, 10) == data[BLOCK:]  # its other block
    assert (mounted / "kept").read_bytes() == b"still here"


def test_no_block_file_stays_open_past_the_replies_it_served(
    volume: MountedVolume, monkeypatch: pytest.MonkeyPatch
) -> None:
    mounted = volume.start()
    data = os.urandom(2 * BLOCK)
    for name in "abcd":
        (mounted / name).write_bytes(data)
    answers = Answers(monkeypatch)

    def reader(name: str) -> None:
        for offset in range(0, len(data), MiB // 2):
            assert _uncached_read(mounted / name, offset, MiB) == data[offset : offset + MiB]

    threads = [threading.Thread(target=reader, args=(name,)) for name in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    opened = sum(len(spans) for spans in answers.spans if spans)
    assert opened > 40
    # each serving thread keeps the files of its last reply only, until its next request
    assert len(_block_fds(volume)) <= 2 * len(answers.threads)
    volume.stop()
    volume.objects.close()  # (its files made ahead for the next writes)
    assert _block_fds(volume) == []
