"""The files of a spliced read's reply (``LibfuseSession.read_buf``) are closed by the thread
that served it as soon as it serves its next request, of any kind: libfuse has sent the reply
by then. No mount: the session's call wrapper is driven directly."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from volume.mount.session import LibfuseSession


def _session() -> LibfuseSession:
    session = LibfuseSession.__new__(LibfuseSession)  # no loop: only the call wrapper is used
    session._loop_thread = threading.get_ident()  # (this thread needs no thread state of its own)
    session._kept_states = {}
    session._held = {}
    return session


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_thread_closes_its_last_reply_files_at_its_next_request(tmp_path: Path) -> None:
    block = tmp_path / "block"
    block.write_bytes(b"x" * 8192)
    session = _session()
    mine = [(os.open(block, os.O_RDONLY), 0, 4096), (os.open(block, os.O_RDONLY), 4096, 4096)]
    theirs = [(os.open(block, os.O_RDONLY), 0, 8192)]
    other = threading.get_ident() + 1  # another worker, whose reply may still be in flight
    session._held = {threading.get_ident(): mine, other: theirs}
    try:
        assert session._wrapper(lambda: None) == 0  # a getattr, a statfs: not only a read
        assert not any(_is_open(fd) for fd, _, _ in mine)
        assert all(_is_open(fd) for fd, _, _ in theirs) and session._held == {other: theirs}
        assert session._wrapper(lambda: None) == 0  # nothing held: nothing to close
    finally:
        for fd, _, _ in theirs:
            os.close(fd)
