"""Unnamed files made ahead, by a background thread, for the next blocks to be staged.

Making a file is the slow step of staging a block on some file systems: ext4 without a journal
looks past every recently deleted inode for a free one (about 0.2 ms a file where a test suite
or a benchmark has just deleted thousands), and a writer waited for it once per block. A
mount writing a big file stages one block after another in the same directory, so a file made
ahead there is what the next block takes, and the writer no longer waits for the making.

Files made ahead have no name: nothing is left of them once they are closed, whether used or
not, or their process is gone.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from typing import Callable


#: files kept ready
COUNT = 2
#: seconds without a take after which the thread closes its files and ends (the next take
#: starts it again)
IDLE_SECONDS = 10.0

_instances: "weakref.WeakSet[FilesAhead]" = weakref.WeakSet()


class FilesAhead:
    """Unnamed files made by ``make(key, path)`` (an open descriptor) in the directory of the
    key last staged, ``count`` kept ready; :meth:`take` hands one out when it has one for the
    asked key's directory. A failure to make one stops the making until the directory changes
    (the writer then makes its file itself and meets the error)."""

    def __init__(self, make: Callable[[str, str], int], count: int = COUNT,
                 idle_seconds: float = IDLE_SECONDS) -> None:  # fmt: skip
        self._make = make
        self.count = count
        self.idle_seconds = idle_seconds
        self._reset()
        _instances.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._ready: deque[int] = deque()
        self._directory: str | None = None  # where files are made, for
        self._key = self._path = ""  # the key (and its path) last asked for there
        self._failed = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._last_take = time.monotonic()

    def take(self, key: str, path: str) -> int | None:
        """A file made ahead in ``path``'s directory (the caller owns the descriptor), else
        None; either way the next ones are made there."""
        directory = os.path.dirname(path)
        with self._cond:
            if self._closed or self.count <= 0:
                return None
            fd = None
            if directory == self._directory:
                if self._ready:
                    fd = self._ready.popleft()
            else:
                self._close_ready()
                self._directory, self._failed = directory, False
            self._key, self._path = key, path
            self._last_take = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="volume-files-ahead", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return fd

    def ready(self) -> int:
        """How many files are ready now."""
        with self._cond:
            return len(self._ready)

    def close(self, timeout: float = 10.0) -> None:
        """Close the ready files and end the thread, waiting up to ``timeout`` seconds for a
        file it is making (closed too)."""
        with self._cond:
            self._closed = True
            self._close_ready()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _close_ready(self) -> None:
        while self._ready:
            os.close(self._ready.popleft())

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._closed and (
                    self._directory is None or self._failed or len(self._ready) >= self.count
                ):
                    idle = self._last_take + self.idle_seconds - time.monotonic()
                    if idle <= 0:
                        self._close_ready()
                        self._thread = None
                        return
                    cond.wait(idle)
                if self._closed:
                    self._thread = None
                    return
                directory, key, path = self._directory, self._key, self._path
            try:
                fd = self._make(key, path)
            except Exception:  # noqa: BLE001 - stage makes its file itself and meets the error
                with cond:
                    if directory == self._directory:
                        self._failed = True
                continue
            with cond:
                if directory == self._directory and not self._closed:
                    self._ready.append(fd)
                else:
                    os.close(fd)


def _after_fork_in_child() -> None:
    """A forked child has copies of the parent's ready files, which the parent hands out too,
    and no thread making more: it closes its copies and starts afresh."""
    for ahead in list(_instances):
        ready, closed = list(ahead._ready), ahead._closed
        ahead._reset()
        ahead._closed = closed
        for fd in ready:
            os.close(fd)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
