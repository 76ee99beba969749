"""Pins: what makes a published index safe against a foreign writer.

Versions of a family share slices, but an index counts only its own references
(``jfs_chunk_ref.refs``). A stock JuiceFS client mounting a copy of a published index read-write
deletes the blocks of a slice whose count drops to zero, although sibling versions still read
them, and it allocates slice ids from the index's ``nextChunk``. Before an index is uploaded,
its staged snapshot is therefore changed, through :class:`~volume.stores.MetaTxn` only (so
every store type gets it):

* every slice-reference count below :data:`SLICE_PIN` gets :data:`SLICE_PIN` added, so no
  sequence of deletes by one client reaches zero (a count already pinned stays as it is);
* ``nextChunk`` moves to the foreign lane (``FOREIGN_DOMAIN << 42``), a domain the ledger never
  hands to a session of ours, so a foreign writer's new slices cannot collide with ours.

Our own engine never deletes blocks and moves ``nextChunk`` into its claimed lane on every
writable mount, so pins change nothing for it. The rule is in ``spec/index-format.md``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .allocator import DOMAIN_BITS, FOREIGN_DOMAIN
from .juicefs import COUNTER_NEXT_CHUNK
from .stores import MetaStore, MetaTxn

__all__ = ["FOREIGN_CHUNK", "SLICE_PIN", "pin_records", "pin_snapshot"]

#: added to every slice-reference count of a published index
SLICE_PIN = 1 << 30
#: ``nextChunk`` of every published index: the start of the foreign lane
FOREIGN_CHUNK = FOREIGN_DOMAIN << DOMAIN_BITS


def pin_records(tx: MetaTxn) -> int:
    """Pin every slice-reference count and point ``nextChunk`` at the foreign lane; returns
    how many counts were pinned."""
    pinned = 0
    for slice_id, size, refs in list(tx.slice_refs()):
        if refs < SLICE_PIN:
            tx.add_slice_ref(slice_id, size, SLICE_PIN)
            pinned += 1
    if tx.get_counter(COUNTER_NEXT_CHUNK) < FOREIGN_CHUNK:
        tx.set_counter(COUNTER_NEXT_CHUNK, FOREIGN_CHUNK)
    return pinned


def pin_snapshot(store_cls: type[MetaStore], snapshot: Path) -> int:
    """Rewrite the staged snapshot file ``snapshot`` of ``store_cls`` with pins (restored into
    a scratch directory, pinned in one transaction, snapshotted back); returns its new size."""
    with tempfile.TemporaryDirectory(prefix="volume-pin-", dir=snapshot.parent) as scratch:
        store_cls.restore(snapshot, scratch)
        meta = store_cls.open(scratch)
        try:
            with meta.transaction(write=True) as tx:
                pin_records(tx)
            return meta.snapshot(snapshot)
        finally:
            meta.close()
