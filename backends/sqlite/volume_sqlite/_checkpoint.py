"""Checkpoint a writable store's WAL from a thread and connection of its own.

SQLite's automatic checkpoint runs inside the ``COMMIT`` that pushes the WAL past 1,000 pages:
it copies the WAL into the database file and fsyncs both (``synchronous=NORMAL`` syncs at
checkpoints only). The store's one connection is shared by every thread under one lock, so each
such commit held up every other metadata read and write of the mount for two fsyncs (about 15 ms
here, far more while the disk flushes other writes).

A :class:`Checkpointer` does that work beside the lock instead. The store's connection keeps an
automatic checkpoint only as a bound, at :data:`INLINE_PAGES`: a background checkpoint copies
what it can without waiting for anyone (``PASSIVE``), but SQLite starts the WAL file over only
when a write finds every frame copied, which a steady stream of writes may never let happen.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Rows changed between two background checkpoints (a row changed is about a page written, so
#: this matches SQLite's own default of 1,000 WAL pages).
CHANGES_PER_CHECKPOINT = 1000
#: WAL pages after which the committing connection checkpoints itself, as SQLite does by default
#: at 1,000: reached only when the background checkpoints never let the WAL start over.
INLINE_PAGES = 10_000

_CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"
# A PASSIVE checkpoint answers busy, having copied nothing, when it meets a commit updating the
# WAL's index (it may not wait for the write lock to read it); it is tried again shortly.
_BUSY_TRIES = 100
_BUSY_PAUSE_S = 0.01


class Checkpointer:
    """Run ``PRAGMA wal_checkpoint(PASSIVE)`` on ``db_path`` after every
    :data:`CHANGES_PER_CHECKPOINT` committed row changes, on a daemon thread started at the
    first one (a short-lived store never starts it).

    :meth:`committed` is called by the store after each write commit, under its lock.
    :meth:`close` waits for a running checkpoint and closes the thread's connection; the store
    closes its own connection after it, so that one still removes the WAL.
    """

    def __init__(self, db_path: Path) -> None:
        self._db_path = db_path
        self._at = 0  # the store connection's total_changes at the last request
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.done = 0  # checkpoints run, not counting busy ones (for tests and curious callers)

    def committed(self, total_changes: int) -> None:
        """Note the store connection's ``total_changes`` after a write commit."""
        if total_changes - self._at < CHANGES_PER_CHECKPOINT or self._closing:
            return
        self._at = total_changes
        if self._thread is None:
            thread = threading.Thread(
                target=self._run, name=f"checkpoint:{self._db_path.name}", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had: the inline bound still holds
                log.warning("cannot start a thread to checkpoint %s: %s", self._db_path, exc)
                return
            self._thread = thread
        self._wake.set()

    def close(self) -> None:
        """Stop the thread, after the checkpoint it may be running."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._db_path, isolation_level=None)
        except sqlite3.Error as exc:
            log.warning("cannot open %s to checkpoint it: %s", self._db_path, exc)
            return  # the store's own automatic checkpoint still bounds the WAL
        try:
            conn.execute("PRAGMA synchronous=NORMAL")  # checkpoints fsync the WAL and the file
            while True:
                self._wake.wait()
                self._wake.clear()
                for _ in range(_BUSY_TRIES):
                    if self._closing:
                        return
                    try:
                        busy = conn.execute(_CHECKPOINT).fetchone()[0]
                    except sqlite3.Error as exc:  # a full disk, say: the next one tries again
                        log.warning("checkpointing %s failed: %s", self._db_path, exc)
                        break
                    if not busy:
                        self.done += 1
                        break
                    time.sleep(_BUSY_PAUSE_S)
        finally:
            conn.close()
