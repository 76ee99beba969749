"""Adversarial allocation: disjointness rests on the domain ledger, not on luck.

* the lifecycle machine with the random counter offset forced to one constant;
* forks of one version racing from 4 processes;
* two machines (two processes) with their handles in one bucket and one volume family;
* a ledger with 2^20-2 claims: the next claims fail with a typed error, never wrap or reuse.
"""

from __future__ import annotations

import heapq
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from volume import Volume, allocator
from volume.allocator import DOMAIN_BITS, FOREIGN_DOMAIN, MAX_DOMAIN, claim_domain, ledger_prefix
from volume.errors import ObjectExists, VolumeSystemError
from volume.stores import ObjectInfo
from volume.testing.faults import WrappedObjectStore, wrap_lifecycle_stores
from volume.testing.lifecycle_machine import LifecycleMachine, index_blocks, read_tree
from volume.testing.memory import MemoryObjectStore

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

FAST = settings(max_examples=4, stateful_step_count=25, deadline=None,
                suppress_health_check=list(HealthCheck))  # fmt: skip


# =========================================================================== constant offsets


class ConstantOffsetMachine(LifecycleMachine):
    """Every fork and migration advances its counters by the same constant."""

    def __init__(self) -> None:
        self._saved = allocator.random_offset
        allocator.random_offset = lambda value: allocator.OFFSET_MIN  # type: ignore[assignment]
        super().__init__()

    def seed_family(self) -> None:
        """A committed volume and two forks of it: equal counters, disjoint lanes."""
        self.new()
        self.mount_rw(0)
        self.write(0, "b", 1, 70_000)
        self.commit(0)
        self.fork_version(0)
        self.fork_version(0)
        self.mount_rw(0)
        self.mount_rw(0)

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            allocator.random_offset = self._saved  # type: ignore[assignment]


class ConstantOffsetMemory(ConstantOffsetMachine):
    def make_bucket(self) -> str:
        return f"memory://constant-{uuid.uuid4().hex}"


def test_constant_counter_offsets_keep_keys_disjoint() -> None:
    case = ConstantOffsetMemory.TestCase
    case.settings = FAST
    case("runTest").runTest()
    assert ConstantOffsetMemory.totals["fork"] >= 2 * ConstantOffsetMemory.totals["runs"] > 0


# =========================================================================== racing forks


FORK_AND_WRITE = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from volume import Volume
locator, name, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
source = Volume.from_locator(locator)
while time.time() < start_at:
    time.sleep(0.001)
child = source.fork(name).mount(transport="none")
fs = child._mount.pathfs
fs.write_bytes("/own", name.encode() * 50_000)
fs.write_bytes("/a", name.encode())
print(json.dumps({"locator": child.finalize(name).produced_by.locator, "name": name}))
"""


def run_racers(argvs: list[list[str]], timeout: float = 300, cwd: str | None = None) -> list[str]:
    """Run ``python -c`` scripts at once; their stdout (each must succeed)."""
    procs = [subprocess.Popen([sys.executable, "-c", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=cwd) for argv in argvs]  # fmt: skip
    outs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err[-3000:]
            outs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outs


def _published(bucket: str, name: str, files: dict[str, bytes]) -> Volume:
    rw = Volume.new(name, bucket=bucket).mount(transport="none")
    for path, data in files.items():
        rw._mount.pathfs.write_bytes("/" + path, data)
    return rw.finalize("seed")


def test_forks_of_one_version_racing_from_four_processes(tmp_path: Path) -> None:
    bucket = str(tmp_path / "bucket")
    seed = _published(bucket, "racer", {"a": b"seed" * 1000, "b": os.urandom(70_000)})
    start = time.time() + 4  # every racer has imported everything by then
    outs = run_racers([[FORK_AND_WRITE, seed.produced_by.locator, f"race-{i}", str(start)]
                       for i in range(4)])  # fmt: skip
    results = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    store = Volume.from_locator(seed.produced_by.locator)
    objects = __import__("volume.locations", fromlist=["object_store"]).object_store(store)
    seed_blocks = set(index_blocks(seed, objects, tmp_path))
    own_domains = []
    for r in results:
        version = Volume.from_locator(r["locator"])
        with version.mount(transport="none") as ro:
            files = read_tree(ro._mount.pathfs)
        assert files == {"a": r["name"].encode(), "b": seed_files_b(seed, tmp_path),
                         "own": r["name"].encode() * 50_000}  # fmt: skip
        new = set(index_blocks(version, objects, tmp_path)) - seed_blocks
        domains = {int(k.rsplit("/", 1)[1].split("_")[0]) >> DOMAIN_BITS for k in new}
        assert len(domains) == 1, domains
        own_domains.append(domains.pop())
    assert len(set(own_domains)) == 4, own_domains
    claims = [o.key for o in objects.list(ledger_prefix("racer"))]
    assert len(claims) == 5  # the seed's session and one per fork, no number twice
    objects.close()


def seed_files_b(seed: Volume, tmp_path: Path) -> bytes:
    with seed.mount(transport="none", meta_dir=tmp_path / f"seed-{secrets.token_hex(3)}") as ro:
        return ro._mount.pathfs.read_bytes("/b")


# =========================================================================== two machines


def _run_shared_machine(bucket: str, locator: str, prefix: str, out: str, examples: int) -> dict:
    warnings.simplefilter("ignore")
    import logging

    logging.disable(logging.WARNING)
    seed = Volume.from_locator(locator)
    with seed.mount(transport="none") as ro:
        seed_files = read_tree(ro._mount.pathfs)

    class Shared(LifecycleMachine):
        name_prefix = prefix

        def make_bucket(self) -> str:
            return bucket

        def drop_bucket(self, bucket: str) -> None:
            pass  # shared with the other machine

        def seed_family(self) -> None:
            source = self.adopt(Volume.from_locator(locator), seed_files)
            tag = self.recorder.tag = self.fresh("fork")
            self._forked(source.vol.fork(self.fresh("child")), tag, source)

        def teardown(self) -> None:
            super().teardown()
            with open(out, "a") as f:
                for ev in self.recorder.events:
                    if ev.op == "put" and ev.ok:
                        f.write(json.dumps([ev.key, f"{prefix}{ev.tag}"]) + "\n")

    case = Shared.TestCase
    case.settings = settings(FAST, max_examples=examples)
    case("runTest").runTest()
    return dict(Shared.totals)


def test_two_machines_share_one_bucket_and_family(tmp_path: Path) -> None:
    bucket = str(tmp_path / "bucket")
    seed = _published(bucket, "shared", {"a": b"x" * 5000})
    outs = [str(tmp_path / f"events-{i}.jsonl") for i in range(2)]
    script = (
        "import json, sys\n"
        "from tests.property.test_lifecycle_allocation import _run_shared_machine\n"
        "print(json.dumps(_run_shared_machine(*sys.argv[1:5], int(sys.argv[5]))))\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    runs = run_racers([[script, bucket, seed.produced_by.locator, f"m{i}-", outs[i], "3"]
                       for i in range(2)], cwd=root)  # fmt: skip
    totals = [json.loads(out.strip().splitlines()[-1]) for out in runs]
    assert all(t["fork"] > 0 for t in totals)
    writer: dict[str, str] = {}
    for out in outs:
        for line in Path(out).read_text().splitlines():
            key, tag = json.loads(line)
            assert key not in writer, f"{key} written by {writer[key]} and {tag}"
            writer[key] = tag
    # every block of the family lies in a domain claimed by the session that wrote it
    domain_of = {int(k.rsplit("/", 1)[1]): t for k, t in writer.items() if "/_volume/domains/" in k}
    for key, tag in writer.items():
        if "/chunks/" in key and key.startswith("shared/"):
            sid = int(key.rsplit("/", 1)[1].split("_")[0])
            assert domain_of.get(sid >> DOMAIN_BITS) == tag, (key, tag)


# =========================================================================== an exhausted ledger


class VirtualLedger(WrappedObjectStore):
    """A store whose ledger of ``fs_name`` already holds claims ``1..present`` (listed, and
    refused by put-if-absent) without storing a million objects."""

    def __init__(self, inner: Any, fs_name: str, present: int) -> None:
        super().__init__(inner)
        self.prefix, self.present = ledger_prefix(fs_name), present

    def _virtual(self, key: str) -> bool:
        tail = key[len(self.prefix) :]
        return key.startswith(self.prefix) and tail.isdigit() and 1 <= int(tail) <= self.present

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        real = list(self.inner.list(prefix))
        if not self.prefix.startswith(prefix):
            return iter(real)
        virtual = (ObjectInfo(f"{self.prefix}{d:07d}", 2) for d in range(1, self.present + 1))
        return heapq.merge(virtual, real, key=lambda o: o.key)

    def put(self, key: str, data: bytes | memoryview, *, if_absent: bool = False) -> None:
        if if_absent and self._virtual(key):
            raise ObjectExists(f"object {key!r} already exists")
        self.inner.put(key, data, if_absent=if_absent)


def test_exhausted_ledger_refuses_claims_and_never_wraps() -> None:
    name = f"ledger-{uuid.uuid4().hex}"
    inner = MemoryObjectStore(name)
    try:
        store = VirtualLedger(inner, "fam", (1 << 20) - 2)
        assert MAX_DOMAIN == (1 << 20) - 2 and FOREIGN_DOMAIN == (1 << 20) - 1
        for _ in range(2):
            with pytest.raises(VolumeSystemError, match="exhausted"):
                claim_domain(store, "fam", "late")
        assert not list(inner.list(""))  # nothing written: no wrap to 0, no reuse of a gap
        store.present = (1 << 20) - 3
        assert claim_domain(store, "fam", "last") == MAX_DOMAIN
        with pytest.raises(VolumeSystemError, match="exhausted"):
            claim_domain(store, "fam", "late")  # the foreign lane is never claimed
        assert [o.key for o in inner.list("")] == [f"fam/_volume/domains/{MAX_DOMAIN:07d}"]
    finally:
        MemoryObjectStore.reset(name)


def test_exhausted_ledger_fails_mounts_and_forks_typed_and_publishes_nothing() -> None:
    bucket = f"memory://ledger-{uuid.uuid4().hex}"
    try:
        seed = _published(bucket, "full", {"a": b"x"})
        inner = MemoryObjectStore.from_uri(bucket)
        before = {o.key for o in inner.list("")}
        with wrap_lifecycle_stores(lambda s: VirtualLedger(s, "full", MAX_DOMAIN)):
            with pytest.raises(VolumeSystemError, match="exhausted"):
                seed.fork("late")
            with pytest.raises(VolumeSystemError, match="exhausted"):
                seed.as_rw().mount(transport="none")
        assert {o.key for o in inner.list("")} == before
    finally:
        MemoryObjectStore.reset(bucket[len("memory://") :])
