"""Steady memory for the benchmarks: every page the servers get costs the same.

A virtual machine whose balloon driver reports free pages to the host (Linux's free page
reporting, ``page_reporting``) hands its freed memory back, and the host backs a page again only
when the guest next touches it. Filling such a page costs several times a page the guest has
kept: writing 1 GiB into a new file took 2.0 s with the pages reported, 0.4 s without. Every
write phase fills new page-cache pages, so which server happens to get reported pages, rather
than the servers, decided the write rows, and by far more than their difference.

:func:`steady_memory` holds reporting off for the run (the ``page_reporting_order`` parameter
set above the largest free block's order; restored after) and touches the free memory once, so
that every page handed out later is backed. It needs root; it reports what it could do.
"""

from __future__ import annotations

import contextlib
import mmap
import time
from pathlib import Path
from typing import Iterator

ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")
PAGETYPEINFO = Path("/proc/pagetypeinfo")
HEADROOM = 2 << 30  # free memory left untouched
CHUNK = 64 << 20


def _largest_order() -> int:
    """The largest order of a free block (the columns of the free-page table)."""
    for line in PAGETYPEINFO.read_text().splitlines():
        if "at order" in line:
            return int(line.split()[-1])
    raise OSError(f"no order columns in {PAGETYPEINFO}")


def _free_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemFree:"):
            return int(line.split()[1]) << 10
    return 0


def _touch(total: int) -> None:
    """Fill ``total`` bytes of new anonymous memory, then give it back (kept by the guest)."""
    zeros = bytes(CHUNK)
    with mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as memory:
        for off in range(0, total - CHUNK + 1, CHUNK):
            memory[off : off + CHUNK] = zeros


@contextlib.contextmanager
def steady_memory() -> Iterator[str]:
    """Hold free page reporting off and touch the free memory; yields what was done."""
    if not ORDER.exists():
        yield "no free page reporting here"
        return
    try:
        saved = ORDER.read_text().strip()
        ORDER.write_text(str(_largest_order() + 1))
    except OSError as exc:
        yield f"free page reporting left on (it could not be held off: {exc})"
        return
    try:
        total = max(_free_bytes() - HEADROOM, 0) // CHUNK * CHUNK
        start = time.monotonic()
        _touch(total)
        yield (
            f"free page reporting held off (order {saved} -> {ORDER.read_text().strip()}); "
            f"{total >> 30} GiB of free memory touched in {time.monotonic() - start:.0f} s"
        )
    finally:
        ORDER.write_text(saved)
