"""Progress of the long verbs (commit, finalize, migrate): the callback type, the context that
carries one to them (:func:`reporting_progress`) and the meter that calls it."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from typing import TYPE_CHECKING, Callable, Iterator, Optional

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("volume.progress")

#: ``progress(done, total, unit)``: how far a long call (commit, finalize, migrate) has come.
#: ``done`` never decreases, ``total`` never decreases (it grows only when work appears that was
#: not known up front: writes arriving during a commit, the index once its size is known), and
#: the last call has ``done == total``. Called from the working thread or a sampler thread,
#: never two at a time. See :func:`reporting_progress`.
Progress = Callable[[int, int, str], None]
PROGRESS_INTERVAL = 0.1  # seconds between two samples of a commit's pending uploads
_progress: contextvars.ContextVar[Optional[Progress]] = contextvars.ContextVar(
    "volume_progress", default=None
)


@contextlib.contextmanager
def reporting_progress(progress: Optional[Progress]) -> Iterator[None]:
    """Report the progress of every commit, finalize and migrate this thread makes inside the
    ``with`` block to ``progress`` (a :data:`Progress`), leaving the handles' signatures alone::

        with reporting_progress(lambda done, total, unit: print(done, total, unit)):
            rw.finalize("nightly")

    Commit and finalize count bytes: the buffered writes and pending block uploads (known up
    front), then the index upload. Migrate counts inodes: the version's inode count is the
    total, and an inode is half done once dumped, done once loaded.
    """
    token = _progress.set(progress)
    try:
        yield
    finally:
        _progress.reset(token)


class Meter:
    """Monotone ``(done, total, unit)`` reports to a :data:`Progress` callback (or nowhere)."""

    def __init__(self, callback: Optional[Progress], unit: str, total: int = 0):
        self.callback, self.unit = callback or _progress.get(), unit
        self.done, self.total = 0, max(total, 0)
        self._lock = threading.Lock()
        self._report()

    def _report(self) -> None:
        if self.callback is not None:
            try:
                self.callback(self.done, self.total, self.unit)
            except Exception:  # noqa: BLE001 - a display never fails the work it shows
                log.debug("progress callback failed", exc_info=True)

    def update(self, *, done: Optional[int] = None, remaining: Optional[int] = None,
               add_total: int = 0) -> None:  # fmt: skip
        """Raise the total by ``add_total``; then move ``done`` up to ``done``, or to what leaves
        ``remaining`` (the total grows when more than that remains)."""
        with self._lock:
            before = (self.done, self.total)
            self.total += max(add_total, 0)
            if remaining is not None:
                self.total = max(self.total, self.done + max(remaining, 0))
                done = self.total - max(remaining, 0)
            if done is not None:
                self.done = min(max(self.done, done), self.total)
            if (self.done, self.total) != before:
                self._report()

    def finish(self) -> None:
        self.update(done=self.total)

    @contextlib.contextmanager
    def sampling(self, remaining: Callable[[], int]) -> Iterator[None]:
        """Sample ``remaining()`` every :data:`PROGRESS_INTERVAL` while the block runs (and once
        more after it succeeded)."""
        if self.callback is None:
            yield
            return
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(PROGRESS_INTERVAL):
                with contextlib.suppress(Exception):  # only a display: never fails the work
                    self.update(remaining=remaining())

        sampler = threading.Thread(target=sample, name="volume-progress", daemon=True)
        sampler.start()
        try:
            yield
        finally:
            stop.set()
            sampler.join()
        self.update(remaining=remaining())


def unstored_bytes(engine: "Engine") -> int:
    """Bytes a drain of ``engine`` still has to store (buffered writes and pending uploads)."""
    blocks = engine.blocks
    return int(blocks.buffered_bytes) + int(blocks.pending_bytes)


