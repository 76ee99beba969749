"""gc's memory on 1,000,000 block keys in the memory store: peak RSS above the populated store.

Each measurement runs in a fresh child process: populate the store (one family, one published
version, a million unreferenced block keys of an old session), note VmRSS, run the work, read
VmHWM (the peak). The baseline, measured the same way in the same run, is only iterating the
store's listing (the memory store materialises its listing; a cloud store pages it). gc's extra
memory over that baseline is what gc itself holds: bounded (a temporary SQLite table holds the
reachable set, the listing is consumed as it streams), not proportional to the keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

KEYS = int(os.environ.get("VOLUME_BENCH_GC_KEYS", 1_000_000))

CHILD = r"""
import json, sys, time
from volume import Volume
from volume.gc import collect
from volume.testing.memory import MemoryObjectStore

keys, work = int(sys.argv[1]), sys.argv[2]
rw = Volume.new("gcbench", bucket="memory://gcbench").mount(transport="none")
rw._mount.pathfs.write_bytes("/kept.txt", b"kept")
rw.finalize("the one version")
store = MemoryObjectStore.from_uri("memory://gcbench")
objects = store._state.objects
domain = 1 << 42
for i in range(keys):
    sid = domain + 10 + i
    objects[f"gcbench/chunks/{sid // 1_000_000}/{sid // 1000}/{sid}_0_4096"] = b""

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

base = status("VmRSS:")
started = time.perf_counter()
if work == "gc":
    report = collect(store, now=time.time() + 7200).totals()
else:
    report = {"listed": sum(1 for _ in store.list(""))}
seconds = time.perf_counter() - started
print(json.dumps({"base": base, "peak": status("VmHWM:"), "seconds": seconds, "report": report}))
"""


def _measure(work: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(KEYS), work], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_gc_memory_on_a_million_keys() -> None:
    listing = _measure("list")
    gc = _measure("gc")
    mib = 1 << 20
    listing_extra = (listing["peak"] - listing["base"]) / mib
    gc_extra = (gc["peak"] - gc["base"]) / mib
    print(
        f"\n{KEYS} keys: store populated at {gc['base'] / mib:.0f} MiB RSS; listing alone +"
        f"{listing_extra:.0f} MiB peak in {listing['seconds']:.1f} s; gc +{gc_extra:.0f} MiB "
        f"peak in {gc['seconds']:.1f} s; gc beyond the listing {gc_extra - listing_extra:.0f} MiB"
    )
    assert gc["report"]["garbage_blocks"] == KEYS
    assert gc_extra - listing_extra < 64  # gc's own state does not grow with the keys
