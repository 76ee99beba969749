"""Many processes on one FUSE mount at once: create, write, read-verify, rename, unlink, fsync in
shared directories and a shared file, for a fixed time (about 20 s here, minutes under -m slow).

Every worker checks what it reads: its private files byte for byte, shared files (published by an
atomic rename) by their embedded checksum, its own slot of a shared file after each pwrite. A
watchdog fails the run with the stack of every thread of the serving process (the FUSE loop and
the engine live here) instead of hanging when the mount stops answering.
"""

from __future__ import annotations

import faulthandler
import os
import subprocess
import sys
import textwrap
import time

import pytest

from volume.engine.check import check_metadata

from .conftest import MountedVolume

pytestmark = pytest.mark.fuse

WORKER = textwrap.dedent(
    """
    import errno, hashlib, os, random, sys, time
    mnt, wid, seconds, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    verify_slots = sys.argv[5] == "1"
    last_slot = None
    rng = random.Random(seed)
    SLOT = 8192
    # names other workers remove or replace meanwhile; ESTALE: libfuse's high-level API has no
    # path for a file replaced between the kernel's lookup and its open (after the kernel's retry)
    RACES = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ESTALE}
    shared_dirs = [os.path.join(mnt, f"shared{i}") for i in range(3)]
    mine = os.path.join(mnt, f"private{wid}")
    os.makedirs(mine, exist_ok=True)
    expected = {}
    ops = 0

    def blob(n):
        body = rng.randbytes(n)
        return hashlib.sha256(body).digest() + body

    def valid(data):
        return len(data) >= 32 and hashlib.sha256(data[32:]).digest() == data[:32]

    def fail(msg):
        print(f"worker {wid}: {msg}", flush=True)
        sys.exit(1)

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        op = rng.choice(["write", "verify", "publish", "read_shared", "unlink", "slot", "list",
                         "rename_private", "truncate"])
        ops += 1
        try:
            if op == "write":
                name = f"p{rng.randrange(20)}"
                data = blob(rng.choice([0, 100, 4096, 70_000, 300_000]))
                with open(os.path.join(mine, name), "wb") as f:
                    f.write(data)
                    if rng.random() < 0.3:
                        f.flush()
                        os.fsync(f.fileno())
                expected[name] = data
            elif op == "verify" and expected:
                name = rng.choice(sorted(expected))
                with open(os.path.join(mine, name), "rb") as f:
                    got = f.read()
                if got != expected[name]:
                    fail(f"private {name}: {len(got)} bytes, not the {len(expected[name])} written")
            elif op == "publish":
                tmp = os.path.join(rng.choice(shared_dirs), f".tmp-{wid}-{ops}")
                with open(tmp, "wb") as f:
                    f.write(blob(rng.choice([10, 5000, 200_000])))
                os.rename(tmp, os.path.join(rng.choice(shared_dirs), f"s{rng.randrange(10)}"))
            elif op == "read_shared":
                d = rng.choice(shared_dirs)
                for name in os.listdir(d):
                    if name.startswith("s"):
                        try:
                            with open(os.path.join(d, name), "rb") as f:
                                data = f.read()
                        except FileNotFoundError:
                            continue
                        if not valid(data):
                            fail(f"shared {d}/{name}: torn or corrupt ({len(data)} bytes)")
            elif op == "unlink":
                os.unlink(os.path.join(rng.choice(shared_dirs), f"s{rng.randrange(10)}"))
            elif op == "slot":
                data = rng.randbytes(SLOT)
                fd = os.open(os.path.join(mnt, "slots"), os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    os.pwrite(fd, data, wid * SLOT)
                    if rng.random() < 0.5:
                        os.fsync(fd)
                    last_slot = data
                    if verify_slots and os.pread(fd, SLOT, wid * SLOT) != data:
                        fail("own slot of the shared file reads back differently")
                finally:
                    os.close(fd)
            elif op == "list":
                os.listdir(rng.choice(shared_dirs + [mine]))
            elif op == "rename_private" and expected:
                a = rng.choice(sorted(expected))
                b = f"p{rng.randrange(20)}"
                os.rename(os.path.join(mine, a), os.path.join(mine, b))
                expected[b] = expected.pop(a)
            elif op == "truncate" and expected:
                name = rng.choice(sorted(expected))
                n = rng.randrange(len(expected[name]) + 1)
                os.truncate(os.path.join(mine, name), n)
                expected[name] = expected[name][:n]
        except OSError as exc:
            if exc.errno not in RACES or op in ("write", "verify", "rename_private", "truncate"):
                fail(f"{op}: {exc!r}")
    print(f"worker {wid}: {ops} operations", flush=True)
    if last_slot is not None:
        print(f"slot {wid} {hashlib.sha256(last_slot).hexdigest()}", flush=True)
    """
)


def run_stress(
    volume: MountedVolume, workers: int, seconds: float, stall: float = 60, hook=None,
    verify_slots: bool = False,
) -> None:
    mnt = volume.start(cache=1.0)
    if hook is not None:
        hook(volume)
    for i in range(3):
        (mnt / f"shared{i}").mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(mnt), str(w), str(seconds), str(1000 + w),
             "1" if verify_slots else "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for w in range(workers)
    ]
    deadline = time.monotonic() + seconds + stall + seconds / 2  # the watchdog
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                pytest.fail(
                    f"the stress run stalled {seconds + stall:.0f} s after its start; the stack of "
                    f"every thread of the serving process is on stderr"
                )
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if any(p.poll() is None for p in procs):
            volume.mount._abort()  # unblock workers stuck on the mount
    outputs = [p.communicate(timeout=30)[0] for p in procs]
    print("\n".join(outputs))
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)
    assert all("operations" in out for out in outputs), outputs
    for i in range(3):  # what is left in the shared directories is whole
        for name in os.listdir(mnt / f"shared{i}"):
            if name.startswith("s"):
                data = (mnt / f"shared{i}" / name).read_bytes()
                import hashlib

                assert hashlib.sha256(data[32:]).digest() == data[:32], name
    import hashlib

    slots = (mnt / "slots").read_bytes() if (mnt / "slots").exists() else b""
    for out in outputs:  # every worker's last write to its slot of the shared file is there
        for line in out.splitlines():
            if line.startswith("slot "):
                _, wid, digest = line.split()
                got = slots[int(wid) * 8192 : (int(wid) + 1) * 8192]
                assert hashlib.sha256(got).hexdigest() == digest, f"slot {wid} of the shared file"
    volume.stop()
    from volume_sqlite import SQLiteMetaStore

    meta = SQLiteMetaStore.open(volume.meta_dir, read_only=True)
    try:
        problems = check_metadata(meta)
    finally:
        meta.close()
    assert not problems, "\n".join(problems[:20])


def test_stress_many_processes_on_one_mount(volume: MountedVolume) -> None:
    """Each worker also reads its own slot of the shared file back after every pwrite.
    Regression: with the page cache invalidated on open (auto_cache) or on a new mtime
    (auto_inval_data), a process that pwrote its slot sometimes read its previous bytes back."""
    seconds = float(os.environ.get("VOLUME_STRESS_SECONDS", "20"))
    run_stress(volume, workers=4, seconds=seconds, verify_slots=True)


@pytest.mark.slow
def test_stress_many_processes_on_one_mount_for_minutes(volume: MountedVolume) -> None:
    run_stress(volume, workers=8, seconds=300, verify_slots=True)


def test_the_watchdog_fails_a_stalled_run_with_every_stack(volume: MountedVolume, capfd) -> None:
    import threading

    release = threading.Event()

    def hang(v: MountedVolume) -> None:
        real = v.engine.write

        def write(*args, **kwargs):
            release.wait(120)
            return real(*args, **kwargs)

        v.engine.write = write

    try:
        with pytest.raises(pytest.fail.Exception, match="stalled"):
            run_stress(volume, workers=2, seconds=1, stall=1, hook=hang)
    finally:
        release.set()
    assert "Thread" in capfd.readouterr().err  # faulthandler's dump of every thread
