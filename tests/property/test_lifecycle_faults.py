"""Faults: failed, delayed (reordered) and stopped PUTs at chosen points, and SIGKILL of the
writing process during writes and during commits.

Afterwards every published version (every version document in the bucket) mounts and reads back
exactly its committed content, nothing published references a missing block, and a failed
commit published nothing or a complete version, never half of one.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volume import ROVolume, Volume, locations
from volume.errors import VolumeError
from volume.testing.faults import Fault, FaultPlan, FaultyObjectStore, wrap_lifecycle_stores
from volume.testing.lifecycle_machine import index_blocks, read_tree
from volume.testing.memory import MemoryObjectStore

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SLOW = os.environ.get("VOLUME_LIFECYCLE_STEPS") is not None


def audit(bucket: str, expected: dict[str, dict[str, bytes]], workdir: Path) -> dict[str, ROVolume]:
    """Check every version document under ``bucket``: its index exists with its hash, every
    block it references exists with its size, and it reads back ``expected[message]``."""
    objects = locations.object_store(Volume.empty("audit", bucket=bucket))
    found: dict[str, ROVolume] = {}
    try:
        for info in objects.list(""):
            if not info.key.endswith("/volume.json") or "/_volume/versions/" not in info.key:
                continue
            version = ROVolume.parse(objects.get(info.key))
            index = objects.get(locations.key_of(objects, version.index.path))
            assert "sha256:" + hashlib.sha256(index).hexdigest() == version.index.hash
            for key, size in index_blocks(version, objects, workdir, check=True).items():
                assert objects.head(key).size == size, f"{info.key} references {key}, missing"
            assert version.message in expected, f"a version nobody committed: {version.message}"
            with version.mount(transport="none") as ro:
                got = read_tree(ro._mount.pathfs)
            assert got == expected[version.message], f"{version.message} reads back wrong"
            found[version.message] = version
    finally:
        objects.close()
    return found


# =========================================================================== injected faults

POINTS = {
    # pattern of the keys whose puts are hit
    "block": r"/chunks/",
    "index": r"/_volume/versions/[^/]+/meta\.(db|rdb)$",
    "document": r"/_volume/versions/[^/]+/volume\.json$",  # between index and document
    "claim": r"/_volume/domains/",
    "any": r".",
}


@settings(max_examples=40 if SLOW else 12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    point=st.sampled_from(sorted(POINTS)),
    action=st.sampled_from(["fail", "stop", "delay"]),
    after=st.integers(0, 6),
    times=st.sampled_from([1, 2, 20]),
    sizes=st.lists(st.sampled_from([1, 5000, 70_000, 300_000]), min_size=1, max_size=5),
)
def test_faults_at_chosen_points_publish_whole_versions_or_nothing(
    tmp_path_factory: pytest.TempPathFactory, point: str, action: str, after: int, times: int,
    sizes: list[int],
) -> None:  # fmt: skip
    workdir = tmp_path_factory.mktemp("faults")
    bucket = f"memory://faults-{uuid.uuid4().hex}"
    expected: dict[str, dict[str, bytes]] = {}
    try:
        rw = Volume.new("victim", bucket=bucket).mount(transport="none")
        fs = rw._mount.pathfs
        fs.write_bytes("/base", b"base" * 3000)
        expected["c1"] = {"base": b"base" * 3000}
        rw.commit("c1")
        content = dict(expected["c1"])
        for i, size in enumerate(sizes):
            data = random.Random(i).randbytes(size)
            content[f"f{i}"] = data
        plan = FaultPlan([Fault(POINTS[point], action, after=after, times=times, seconds=0.05)])
        # the mount's store was opened before the plan: wrap it in place
        rw._mount.objects = FaultyObjectStore(rw._mount.objects, plan)
        rw._mount.engine.blocks.objects = rw._mount.objects
        failed = False
        try:
            for name, data in content.items():
                if name != "base":
                    fs.write_bytes("/" + name, data)
            expected["c2"] = dict(content)
            rw.commit("c2")
        except (VolumeError, OSError):
            failed = True
        found = audit(bucket, expected, workdir)  # c2 is there complete, or not at all
        assert "c1" in found
        if failed:
            assert plan.injected > 0
        # the store comes back: the same handle (or, when its writes were lost, a new session
        # from the last version) publishes a complete version
        plan.resume()
        try:
            expected["c3"] = read_tree(rw._mount.pathfs)
            rw.finalize("c3")
        except (VolumeError, OSError):
            last = found.get("c2", found["c1"])
            rw2 = last.fork("again").mount(transport="none")
            expected["c3"] = read_tree(rw2._mount.pathfs)
            rw2.finalize("c3")
        found = audit(bucket, expected, workdir)
        assert "c3" in found
    finally:
        MemoryObjectStore.reset(bucket[len("memory://") :])


def test_stop_between_index_and_document_publishes_nothing(tmp_path: Path) -> None:
    bucket = f"memory://faults-{uuid.uuid4().hex}"
    try:
        rw = Volume.new("torn", bucket=bucket).mount(transport="none")
        rw._mount.pathfs.write_bytes("/a", b"a" * 10_000)
        plan = FaultPlan([Fault(POINTS["document"], "stop")])
        rw._mount.objects = FaultyObjectStore(rw._mount.objects, plan)
        with pytest.raises(VolumeError):
            rw.commit("torn")
        store = MemoryObjectStore.from_uri(bucket)
        keys = [o.key for o in store.list("torn/_volume/versions/")]
        assert len(keys) == 1 and keys[0].endswith("/meta.db")  # an orphan index, no document
        assert audit(bucket, {}, tmp_path) == {}
        plan.resume()
        version = rw.finalize("whole")
        assert audit(bucket, {"whole": {"a": b"a" * 10_000}}, tmp_path) == {"whole": version}
    finally:
        MemoryObjectStore.reset(bucket[len("memory://") :])


def test_fault_during_fork_claim_is_typed_and_publishes_nothing(tmp_path: Path) -> None:
    bucket = f"memory://faults-{uuid.uuid4().hex}"
    try:
        rw = Volume.new("src", bucket=bucket).mount(transport="none")
        rw._mount.pathfs.write_bytes("/a", b"a")
        base = rw.finalize("base")
        plan = FaultPlan([Fault(POINTS["claim"], "fail", times=100)])
        with (
            wrap_lifecycle_stores(lambda s: FaultyObjectStore(s, plan)),
            pytest.raises(VolumeError),
        ):
            base.fork("child")
        assert set(audit(bucket, {"base": {"a": b"a"}}, tmp_path)) == {"base"}
    finally:
        MemoryObjectStore.reset(bucket[len("memory://") :])


# =========================================================================== SIGKILL

WRITER = r"""
import random, sys, warnings
warnings.simplefilter("ignore")
from volume import Volume
bucket = sys.argv[1]
rw = Volume.new("victim", bucket=bucket).mount(transport="none")
fs = rw._mount.pathfs
print("ready", flush=True)
for k in range(10_000):
    for path, data in ops(k):
        if data is None:
            if fs.exists("/" + path):
                fs.unlink("/" + path)
        else:
            fs.write_bytes("/" + path, data)
    print("committing", k, flush=True)
    rw.commit(f"c{k}")
    print("committed", k, flush=True)
"""


def ops(k: int) -> list[tuple[str, bytes | None]]:
    """The writer's step ``k``: (path, new content or None for a delete). Sent to the writer
    as source, so both sides replay the same steps."""
    import random

    out: list[tuple[str, bytes | None]] = [
        (f"f{k % 4}", random.Random(k).randbytes((37_000 * k) % 600_001))
    ]
    if k % 3 == 0:
        out.append((f"f{(k + 1) % 4}", None))
    return out


OPS = "from __future__ import annotations\n" + inspect.getsource(ops)


def _expected_versions(upto: int) -> dict[str, dict[str, bytes]]:
    content: dict[str, bytes] = {}
    out = {}
    for k in range(upto + 1):
        for path, data in ops(k):
            if data is None:
                content.pop(path, None)
            else:
                content[path] = data
        out[f"c{k}"] = dict(content)
    return out


@pytest.mark.parametrize("when", ["writing", "committing"])
def test_sigkill_of_the_writer_leaves_every_published_version_whole(
    tmp_path: Path, when: str
) -> None:
    kills = 8 if SLOW else 3
    rnd = random.Random(when)
    for n in range(kills):
        bucket = str(tmp_path / f"bucket-{n}")
        proc = subprocess.Popen([sys.executable, "-c", OPS + WRITER, bucket],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            target = rnd.randrange(1, 6)
            while True:
                line = proc.stdout.readline().split()
                assert line, proc.stderr.read()[-2000:]
                if int(line[1]) >= target and line[0] == (
                    "committing" if when == "committing" else "committed"
                ):
                    break
            time.sleep(rnd.uniform(0, 0.05 if when == "committing" else 0.3))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        found = audit(bucket, _expected_versions(target + 40), tmp_path)
        assert found, "nothing was published before the kill"
        # the family goes on: a fork of the newest version writes and commits
        newest = max(found.values(), key=lambda v: v.produced_by.locator)
        rw = newest.fork("survivor").mount(transport="none")
        rw._mount.pathfs.write_bytes("/after", b"after")
        rw.finalize("after")
