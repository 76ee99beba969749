"""Big writes through the kernel reach the blocks by splice: libfuse leaves a write request's data
in a pipe and the engine moves it into the staged block without reading it. Checked on a real
mount: which path the bytes took, that they land intact from any offset and from several
writers at once, and that a write failing part way fails with its errno while the mount goes on
(libfuse then empties the pipe the request's unread bytes were in). Reads: test_fuse_read_splice."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import threading
from pathlib import Path

import pytest
from volume_local import StagedFile

from volume.mount.operations import MAX_IO, request_bytes
from volume.mount.session import RequestStream

from .conftest import MountedVolume

pytestmark = pytest.mark.fuse

MiB = 1 << 20


class CountedStaged(StagedFile):
    """Counts the bytes that arrive as streams; fails the stream writes ``fail`` says to."""

    streamed = 0
    fail: list[int] = []  # errnos for the next stream writes, in order
    lock = threading.Lock()

    def write_stream(self, offset, data):
        with self.lock:
            failure = CountedStaged.fail.pop(0) if CountedStaged.fail else None
        if failure is not None:
            super().write_stream(offset, data[: len(data) // 2])  # part of it lands, then...
            raise OSError(failure, os.strerror(failure))
        super().write_stream(offset, data)
        with self.lock:
            CountedStaged.streamed += len(data)


@pytest.fixture
def mounted(volume: MountedVolume) -> Path:
    CountedStaged.streamed, CountedStaged.fail = 0, []
    volume.objects.staged_class = CountedStaged
    return volume.start()


def test_the_write_size_fits_the_pipe_libfuse_splices_through() -> None:
    size = request_bytes()
    page = os.sysconf("SC_PAGESIZE")
    assert MAX_IO // 2 <= size <= MAX_IO and size % page == 0
    reader, writer = os.pipe()
    try:  # libfuse's pipe holds a whole request: a page of header and the data
        assert fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, size + page) >= size + page
    finally:
        os.close(reader)
        os.close(writer)


def test_big_writes_are_spliced_and_land_intact(volume: MountedVolume, mounted: Path) -> None:
    data = os.urandom(9 * MiB + 4321)
    fd = os.open(mounted / "f", os.O_WRONLY | os.O_CREAT)
    try:
        for off in range(0, len(data), MiB):
            assert os.write(fd, data[off : off + MiB]) == len(data[off : off + MiB])
        assert os.pwrite(fd, data[:3 * MiB + 17], 5 * MiB + 333) == 3 * MiB + 17  # unaligned
    finally:
        os.close(fd)
    expected = bytearray(data)
    expected[5 * MiB + 333 : 8 * MiB + 350] = data[: 3 * MiB + 17]
    assert (mounted / "f").read_bytes() == expected
    assert CountedStaged.streamed >= len(data)  # most of both rounds came through the pipe
    volume.restart()
    assert (mounted / "f").read_bytes() == expected


def test_concurrent_writers_each_get_their_own_bytes(
    volume: MountedVolume, mounted: Path
) -> None:
    payloads = {f"w{i}": os.urandom(6 * MiB + i * 4097) for i in range(4)}
    shared = {i: os.urandom(2 * MiB) for i in range(4)}  # four writers, one file, own regions
    (mounted / "shared").write_bytes(b"")
    errors: list[BaseException] = []

    def writer(name: str, index: int) -> None:
        try:
            with open(mounted / name, "wb", buffering=0) as f:
                data = payloads[name]
                for off in range(0, len(data), 2 * MiB):
                    f.write(data[off : off + 2 * MiB])
            fd = os.open(mounted / "shared", os.O_WRONLY)
            try:
                os.pwrite(fd, shared[index], index * 2 * MiB)
            finally:
                os.close(fd)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{i}", i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    volume.restart()
    for name, data in payloads.items():
        assert (mounted / name).read_bytes() == data
    assert (mounted / "shared").read_bytes() == b"".join(shared[i] for i in range(4))
    assert CountedStaged.streamed >= sum(map(len, payloads.values()))


def test_a_spliced_write_that_fails_fails_with_its_errno_and_the_mount_goes_on(
    volume: MountedVolume, mounted: Path
) -> None:
    head = os.urandom(MiB)
    fd = os.open(mounted / "f", os.O_WRONLY | os.O_CREAT)
    try:
        assert os.write(fd, head) == MiB
        CountedStaged.fail = [errno.ENOSPC]
        with pytest.raises(OSError) as caught:
            os.write(fd, os.urandom(MiB))  # its first request fails half way through
        assert caught.value.errno == errno.ENOSPC
        assert CountedStaged.fail == []
    finally:
        os.close(fd)
    # the rest of the failed request's bytes were dropped from the pipe: later requests, in
    # this thread's pipe or another's, carry their own bytes
    after = os.urandom(5 * MiB + 3)
    (mounted / "g").write_bytes(after)
    with open(mounted / "f", "ab", buffering=0) as f:
        f.write(b"tail" * 300_000)
    assert (mounted / "g").read_bytes() == after
    assert (mounted / "f").read_bytes() == head + b"tail" * 300_000
    volume.restart()
    assert (mounted / "g").read_bytes() == after
    assert (mounted / "f").read_bytes() == head + b"tail" * 300_000


def test_a_store_that_does_not_stage_gets_the_bytes_read_from_the_pipe(
    volume: MountedVolume, monkeypatch: pytest.MonkeyPatch
) -> None:
    caps = volume.objects.capabilities
    monkeypatch.setattr(volume.objects, "capabilities", dataclasses.replace(caps, staging=False))
    read = []
    original = RequestStream._read_next

    def counted(self, n):
        read.append(n)
        return original(self, n)

    monkeypatch.setattr(RequestStream, "_read_next", counted)
    mounted = volume.start()
    data = os.urandom(7 * MiB + 11)
    with open(mounted / "f", "wb", buffering=0) as f:
        for off in range(0, len(data), MiB):
            f.write(data[off : off + MiB])
    assert sum(read) >= len(data) // 2
    assert (mounted / "f").read_bytes() == data
    volume.restart()
    assert (mounted / "f").read_bytes() == data
