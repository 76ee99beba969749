"""The FUSE mount against Linux: the engine's differential state machine, with the kernel between.

The subject is a plain :class:`~volume.testing.fsmachine.OsDir` over the mount path, so every
step goes through the system calls, the kernel's caches, libfuse and the translator; the oracle is
a plain temporary directory. The default run takes about a minute; ``-m slow`` runs a large budget
(``VOLUME_FSMACHINE_EXAMPLES`` examples).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import precondition, rule

from volume.mount.fuse import FuseMount
from volume.stores import MetaStore, ObjectStore
from volume.engine.check import check_metadata
from volume.testing.fsmachine import (
    EngineMachine,
    FSAdapter,
    OpenFile,
    OsDir,
    file_slots,
    outcome,
    paths,
)
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

pytestmark = pytest.mark.fuse

QUICK = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(
    QUICK,
    max_examples=int(os.environ.get("VOLUME_FSMACHINE_EXAMPLES", 1000)),
    stateful_step_count=80,
)
RELEASE_WAIT = 5.0  # seconds: the kernel releases closed files asynchronously


class FuseMachine(EngineMachine):
    """The engine over SQLite and a local bucket, mounted with the default cache times."""

    def open_stores(self, workdir: str) -> tuple[MetaStore, ObjectStore]:
        return (
            SQLiteMetaStore.open(os.path.join(workdir, "meta")),
            LocalObjectStore.from_uri(os.path.join(workdir, "bucket")),
        )

    def make_subject(self, workdir: str) -> FSAdapter:
        super().make_subject(workdir)  # formats the volume and opens self.engine
        self.mount = FuseMount.start(
            self.engine, Path(workdir) / "mnt", read_only=False, attr_cache=1.0,
            entry_cache=1.0, dir_entry_cache=1.0, timeout=30, fsname="volume:fsmachine",
        )  # fmt: skip
        self.orphans: list[OpenFile] = []  # open files unlinked before an rmdir
        return OsDir(str(self.mount.mount_path), umask=self.umask)

    def check_subject(self, open_files: list[OpenFile]) -> None:
        # The kernel releases a closed file after close() returns: wait until the translator
        # holds one handle per open file, then check the metadata with the inodes they hold.
        operations = self.mount.operations
        handles = sum(not f.is_dir for f in open_files)
        deadline = time.monotonic() + RELEASE_WAIT
        while len(operations.open_inodes) > handles and time.monotonic() < deadline:
            time.sleep(0.002)
        problems = check_metadata(self.meta, set(operations.open_inodes))
        assert not problems, "check_metadata found problems:\n" + "\n".join(problems)

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        inodes = {}
        for f in self.files:
            if not f.is_dir and not any(f is o for o in self.orphans):
                inodes[id(f)] = os.fstat(f.subject_fd).st_ino
        if self.same(f"rmdir({path!r})", lambda fs: fs.rmdir(path))[0] == "ok":
            # libfuse kept open files that lost their name under hidden names in it: see fstat
            hidden = self.mount.operations.hidden_paths.items()
            gone = {ino for name, ino in hidden if name.startswith(path.rstrip("/") + "/")}
            self.orphans += [f for f in self.files if inodes.get(id(f)) in gone]

    @precondition(lambda self: self.files)
    @rule(slot=file_slots)
    def fstat(self, slot: int) -> None:
        """As the machine's, but for the known differences: libfuse's high-level API forgets a
        removed directory, and the hidden name of an open file that lost its name (unlinked, or
        renamed over) once the directory holding that hidden name is removed, so fstat of such a
        descriptor says ESTALE."""
        f = self._file(slot)
        if (f.is_dir and self._unlinked(f)) or any(f is o for o in self.orphans):
            subject = outcome(lambda: self.subject.fstat(f.subject_fd))
            if subject == ("errno", "ESTALE"):
                return
        super().fstat(slot)

    @staticmethod
    def _unlinked(f: OpenFile) -> bool:
        return os.fstat(f.oracle_fd).st_nlink == 0

    def close_subject(self) -> None:
        try:
            self.mount.stop()
        finally:
            super().close_subject()


TestFuseDifferential = FuseMachine.TestCase
TestFuseDifferential.settings = QUICK


@pytest.mark.slow
@pytest.mark.timeout(0)  # the budget is the number of examples
class TestFuseDifferentialSlow(FuseMachine.TestCase):
    settings = SLOW
