"""Allocator disjointness: slice domains from a ledger in the bucket, and counter offsets.

Every writable session claims a domain number ``d`` from create-only objects
``<Name>/_volume/domains/<d>``; its ``nextChunk`` moves to ``d << 42``, so its slice ids are
``d << 42 | n``. Two sessions of one chunk key space therefore never allocate the same slice id,
even when one of them is a stock JuiceFS client mounting our database. Forks and migrations also
move ``nextInode`` / ``nextSession`` by a random offset (defence in depth, the seed's rule).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time

from . import keys
from .errors import ObjectExists, VolumeSystemError
from .juicefs import (
    COUNTER_NEXT_CHUNK,
    COUNTER_NEXT_INODE,
    COUNTER_NEXT_SESSION,
    MIN_INTERNAL_INODE,
)
from .stores import MetaTxn, ObjectStore

DOMAIN_BITS = 42
#: the highest domain a session of ours can claim
MAX_DOMAIN = (1 << 20) - 2
#: the lane no session of ours ever claims: every published index points ``nextChunk`` at it,
#: so a foreign writer (a stock JuiceFS client mounting a copy read-write) allocates only there
FOREIGN_DOMAIN = (1 << 20) - 1
CLAIM_ATTEMPTS = 64
OFFSET_MIN = 1 << 32
OFFSET_SPAN = 1 << 56
# counters stay this far below JuiceFS's reserved (virtual / trash) inode range
COUNTER_CEILING = MIN_INTERNAL_INODE - (1 << 40)


def ledger_prefix(fs_name: str) -> str:
    """Key prefix of a chunk key space's domain ledger."""
    return keys.domains_prefix(fs_name)


def _claimed(objects: ObjectStore, prefix: str) -> list[int]:
    out = []
    for info in objects.list(prefix):
        tail = info.key[len(prefix) :]
        if tail.isdigit():
            out.append(int(tail))
    return out


def claim_domain(objects: ObjectStore, fs_name: str, volume_name: str) -> int:
    """Claim the next unused domain of ``fs_name``'s key space (never reusing a number).

    Claim = list, take max+1, put-if-absent; a lost race retries with the new maximum.
    """
    prefix = ledger_prefix(fs_name)
    record = json.dumps(
        {
            "volume": volume_name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "claimed_at": time.time(),
        }
    ).encode()
    for _ in range(CLAIM_ATTEMPTS):
        domain = max(_claimed(objects, prefix), default=0) + 1
        if domain > MAX_DOMAIN:
            raise VolumeSystemError(
                f"the slice-domain ledger of {fs_name!r} is exhausted ({MAX_DOMAIN} writable "
                f"sessions); start a new volume family"
            )
        try:
            objects.put(keys.domain_key(fs_name, domain), record, if_absent=True)
        except ObjectExists:
            continue
        return domain
    raise VolumeSystemError(
        f"could not claim a slice domain of {fs_name!r} after {CLAIM_ATTEMPTS} attempts: too many "
        f"writers are claiming at once; retry"
    )


def enter_domain(tx: MetaTxn, domain: int) -> None:
    """Move ``nextChunk`` into ``domain``'s lane: to its start, unless it is inside it already
    (a fork's first mount continues where the fork left it). A published index points
    ``nextChunk`` at the foreign lane, above every lane; it is moved down to ours."""
    start = domain << DOMAIN_BITS
    if not start <= tx.get_counter(COUNTER_NEXT_CHUNK) < start + (1 << DOMAIN_BITS):
        tx.set_counter(COUNTER_NEXT_CHUNK, start)


def random_offset(value: int) -> int:
    """A random offset in [2^32, 2^32 + 2^56), shrunk so ``value + offset`` keeps headroom."""
    offset = OFFSET_MIN + secrets.randbelow(OFFSET_SPAN)
    room = COUNTER_CEILING - value
    if room <= 1:
        return 0
    return min(offset, room // 2)


def advance_counters(tx: MetaTxn, *, chunks_too: bool = False) -> None:
    """Advance ``nextInode`` and ``nextSession`` (and ``nextChunk`` when no ledger is usable)
    by random offsets."""
    names = [COUNTER_NEXT_INODE, COUNTER_NEXT_SESSION]
    if chunks_too:
        names.append(COUNTER_NEXT_CHUNK)
    for name in names:
        value = tx.get_counter(name)
        tx.set_counter(name, value + random_offset(value))
