"""Scale: commit, fork and cold read-only mount of a 1,000,000-file version, ``ls`` of a directory
of 100,000 entries through the kernel mount, and the mount's peak RSS.

The version is built fast, not through FUSE: a few files are written through the engine, then
the rest are added straight into the open volume's metadata store in large transactions, each a
clone of one 100-byte file (the records the engine writes for a create plus a clone: attribute,
entry, chunk, slice reference, directory stats and counters). ``/big`` holds ``VOLUME_BENCH_BIG_DIR``
entries (100,000), the rest sit 1,000 to a directory.

The read-only mount and the listings run in a process of their own (a new engine and a cold
local cache, as another machine would mount the version); its peak RSS is that process's.

Run: ``python -m pytest -m bench tests/bench/test_scale.py -s``. Goals (issue: performance):
commit, fork and cold RO mount <= 5 s each, the fork moving no block; ``ls`` of the 100,000
entries <= 2 s. ``VOLUME_BENCH_FILES`` (1,000,000) and ``VOLUME_BENCH_BIG_DIR`` set the sizes;
``VOLUME_BENCH_PROFILE=1`` prints a cProfile of the cold mount.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from volume import ROVolume, Volume
from volume.juicefs import (
    COUNTER_NEXT_INODE,
    COUNTER_TOTAL_INODES,
    COUNTER_USED_SPACE,
    TYPE_FILE,
    Attr,
    unpack_slices,
)
from volume.mount.fuse import fuse_usable
from volume.testing.memory import MemoryObjectStore

FILES = int(os.environ.get("VOLUME_BENCH_FILES", 1_000_000))
BIG_DIR = int(os.environ.get("VOLUME_BENCH_BIG_DIR", 100_000))
PER_DIR = 1000
BATCH = 20_000
GOAL_S, LS_GOAL_S = 5.0, 2.0
PAYLOAD = b"0123456789" * 10


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _build(rw) -> None:
    """FILES files: ``/big/f<n>`` (BIG_DIR of them) and ``/d<k>/f<n>``, each a clone of /seed."""
    fs = rw._mount.pathfs
    engine = rw._mount.engine
    fs.write_bytes("/seed", PAYLOAD)
    seed = fs.lstat("/seed").st_ino
    fs.mkdir("/big")
    rest = FILES - 1 - BIG_DIR
    dirs = [("/big", BIG_DIR)]
    for k in range(-(-rest // PER_DIR)):
        fs.mkdir(f"/d{k:04d}")
        dirs.append((f"/d{k:04d}", min(PER_DIR, rest - k * PER_DIR)))
    inodes = {path: fs.lstat(path).st_ino for path, _ in dirs}
    meta = engine.meta
    with meta.transaction() as tx:
        records = tx.read_chunk(seed, 0)
        seed_attr = tx.get_attr(seed)
    assert seed_attr is not None and records
    (rec,) = unpack_slices(records)
    now = time.time_ns()
    todo = [(path, i) for path, count in dirs for i in range(count)]
    for start in range(0, len(todo), BATCH):
        batch = todo[start : start + BATCH]
        with meta.transaction(write=True) as tx:
            top = tx.add_counter(COUNTER_NEXT_INODE, len(batch))
            per_dir: dict[str, int] = {}
            for ino, (path, i) in enumerate(batch, top - len(batch)):
                parent = inodes[path]
                attr = Attr(
                    type=TYPE_FILE, mode=0o644, uid=0, gid=0, atime_ns=now, mtime_ns=now,
                    ctime_ns=now, nlink=1, length=len(PAYLOAD), parent=parent,
                )  # fmt: skip
                tx.set_attr(ino, attr)
                tx.add_entry(parent, f"f{i:07d}".encode(), ino, TYPE_FILE)
                tx.append_chunk(ino, 0, records)
                per_dir[path] = per_dir.get(path, 0) + 1
            tx.add_slice_ref(rec.id, rec.size, len(batch))
            for path, n in per_dir.items():
                tx.update_dir_stats(inodes[path], n * len(PAYLOAD), n * 4096, n)
            tx.add_counter(COUNTER_USED_SPACE, len(batch) * 4096)
            tx.add_counter(COUNTER_TOTAL_INODES, len(batch))


CHILD = """
import json, os, sys, time, warnings
warnings.simplefilter("ignore")
from volume import ROVolume
version = ROVolume.model_validate_json(open(sys.argv[1]).read())
profile = None
if os.environ.get("VOLUME_BENCH_PROFILE"):
    import cProfile
    profile = cProfile.Profile()
    profile.enable()
start = time.perf_counter()
ro = version.mount(sys.argv[2], transport="fuse")
seconds = time.perf_counter() - start
if profile is not None:
    import io, pstats
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(25)
    print(out.getvalue(), file=sys.stderr)
print(json.dumps({"mount": seconds}), flush=True)
sys.stdin.readline()
with open("/proc/self/status") as f:
    hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM"))
ro.unmount()
print(json.dumps({"peak_rss_mib": hwm / 1024}), flush=True)
"""


def _ls(args: list[str], cwd: Path) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE, check=True)
    return time.perf_counter() - start, done.stdout.count(b"\n")


def _fork_moves(version: ROVolume, bucket: str, monkeypatch: pytest.MonkeyPatch):
    """Fork time, the bytes it moved and the keys it read or wrote, on an in-memory copy of the
    bucket (every get and put of the memory store is recorded while the fork runs)."""
    mem = f"memory://scale-{secrets.token_hex(4)}"
    store = MemoryObjectStore.from_uri(mem)
    prefix = f"{bucket}/"
    for p in Path(bucket).rglob("*"):
        if p.is_file():
            store.put(str(p)[len(prefix) :], p.read_bytes())
    index_uri = version.index.path.replace(f"file://{bucket}", mem)
    in_memory = version.model_copy(
        update={"bucket": mem, "storage": "memory",
                "index": version.index.model_copy(update={"path": index_uri})}
    )  # fmt: skip
    keys: list[str] = []
    for method in ("get", "put"):
        original = getattr(MemoryObjectStore, method)

        def recording(self, key, *args, _original=original, **kwargs):
            keys.append(key)
            return _original(self, key, *args, **kwargs)

        monkeypatch.setattr(MemoryObjectStore, method, recording)
    before = store.stats.copy()
    _, seconds = _timed(lambda: in_memory.fork("scale-fork"))
    moved = store.stats - before
    monkeypatch.undo()
    return seconds, moved.get_bytes + moved.put_bytes, keys


@pytest.mark.timeout(3600)  # building a million files takes minutes
@pytest.mark.skipif(not fuse_usable()[0], reason=f"FUSE is not usable: {fuse_usable()[1]}")
def test_a_million_file_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    warnings.simplefilter("ignore", RuntimeWarning)
    bucket = str(tmp_path / "bucket")
    rw = Volume.new("scale", bucket=bucket).mount(transport="none")
    _, t_build = _timed(lambda: _build(rw))
    version, t_commit = _timed(lambda: rw.commit(f"{FILES} files"))
    rw.unmount()
    t_fork, moved, keys = _fork_moves(version, bucket, monkeypatch)

    doc = tmp_path / "version.json"
    doc.write_text(version.model_dump_json())
    mnt = tmp_path / "mnt"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(doc), str(mnt)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        t_mount = json.loads(child.stdout.readline())["mount"]  # type: ignore[union-attr]
        ls = {}
        for name, args in {
            "ls": ["ls", "big"], "ls -f": ["ls", "-f", "big"], "ls -l": ["ls", "-l", "big"],
            "ls -l (warm)": ["ls", "-l", "big"],
        }.items():
            ls[name] = _ls(args, mnt)
        payload = (mnt / "big" / f"f{BIG_DIR - 1:07d}").read_bytes()
        child.stdin.write("\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        rss = json.loads(child.stdout.readline())["peak_rss_mib"]  # type: ignore[union-attr]
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
    print(
        f"\n{FILES} files, /big {BIG_DIR} entries (built in {t_build:.1f} s, index "
        f"{version.index_bytes / 1e6:.1f} MB); load average {os.getloadavg()[0]:.1f}\n"
        f"commit {t_commit:.2f} s | fork {t_fork:.2f} s ({moved} bytes in {len(keys)} gets/puts, no block) | cold RO "
        f"mount {t_mount:.2f} s   (goal <= {GOAL_S} s each)\n"
        + " | ".join(f"{n} {s:.2f} s" for n, (s, _) in ls.items())
        + f"   (goal <= {LS_GOAL_S} s)\npeak RSS of the mounting process {rss:.0f} MiB"
    )
    assert payload == PAYLOAD
    assert all(lines >= BIG_DIR for _, lines in ls.values())
    assert keys and not [k for k in keys if "/chunks/" in k]  # no block read or written
