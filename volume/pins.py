"""Pins: what makes a published index safe against a foreign writer.

Versions of a family share slices, but an index counts only its own references
(``jfs_chunk_ref.refs``). A stock JuiceFS client mounting a copy of a published index read-write
deletes the blocks of a slice whose count drops to zero, although sibling versions still read
them, and it allocates slice ids from the index's ``nextChunk``. Before an index is uploaded,
its staged snapshot (a copy: the live store is never changed) is therefore changed, through
:class:`~volume.stores.MetaTxn` (so every store type gets it) or, for a store that offers them,
through two optional hooks that do the same faster: ``store.edit_snapshot(path)`` (a writable
store over the staged file, which holds its changes once the block exits: the SQLite store edits
the file in place, the redis store loads it into a scratch server and saves it back) and
``pin_slice_refs(pin)`` on that store (the counts in one pass of its own; the redis store runs
one script inside its scratch server):

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

__all__ = ["FOREIGN_CHUNK", "SLICE_PIN", "pin_records", "pin_snapshot", "pin_store"]

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
    _foreign_lane(tx)
    return pinned


def _foreign_lane(tx: MetaTxn) -> None:
    if tx.get_counter(COUNTER_NEXT_CHUNK) < FOREIGN_CHUNK:
        tx.set_counter(COUNTER_NEXT_CHUNK, FOREIGN_CHUNK)


def pin_store(meta: MetaStore) -> int:
    """Pin a whole store (a scratch copy: see :func:`pin_snapshot`); returns how many counts
    were pinned. A store with a ``pin_slice_refs(pin)`` method pins its counts in one pass of
    its own (the redis store: a script inside its server, so no record crosses the socket);
    the others through :func:`pin_records`."""
    bulk = getattr(meta, "pin_slice_refs", None)
    if bulk is None:
        with meta.transaction(write=True) as tx:
            return pin_records(tx)
    pinned = int(bulk(SLICE_PIN))
    with meta.transaction(write=True) as tx:
        _foreign_lane(tx)
    return pinned


def pin_snapshot(store: MetaStore | type[MetaStore], snapshot: Path) -> int:
    """Rewrite the staged snapshot file ``snapshot`` with pins; returns its new size. ``store``
    is the store that wrote it (or its class); the store itself is never changed.

    A store with an ``edit_snapshot(path)`` context manager (a writable store over the file,
    which holds its changes once the block exits) edits it that way; otherwise the file is
    restored into a scratch directory, pinned there and snapshotted back. On a failure the file
    is to be discarded."""
    edit = None if isinstance(store, type) else getattr(store, "edit_snapshot", None)
    if edit is not None:
        with edit(snapshot) as meta:
            pin_store(meta)
        return snapshot.stat().st_size
    store_cls = store if isinstance(store, type) else type(store)
    with tempfile.TemporaryDirectory(prefix="volume-pin-", dir=snapshot.parent) as scratch:
        store_cls.restore(snapshot, scratch)
        meta = store_cls.open(scratch)
        try:
            pin_store(meta)
            return meta.snapshot(snapshot)
        finally:
            meta.close()
