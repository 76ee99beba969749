"""A bounded on-disk cache of immutable blocks, shared by every mount that names the same dir.

Blocks never change under a key, so a cached file is either whole (written to a temporary name
and renamed) or absent; eviction removes the least recently used files once the total size
passes the bound. The layout mirrors the object keys below ``<cache_dir>/<volume UUID>/``, as
the JuiceFS client lays out its cache.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

log = logging.getLogger("volume.engine.diskcache")


class DiskCache:
    """Blocks of one volume family under ``root``, at most ``capacity`` bytes."""

    def __init__(self, root: Path, capacity: int):
        self.root = root
        self.capacity = capacity
        self.size = 0
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()  # key -> size, oldest use first
        self.root.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        found = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith(".tmp-"):
                st = path.stat()
                found.append((st.st_atime_ns, str(path.relative_to(self.root)), st.st_size))
        for _, key, size in sorted(found):
            self._entries[key] = size
            self.size += size
        self._evict()

    def get(self, key: str) -> bytes | None:
        """The cached block, or None."""
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
        try:
            return (self.root / key).read_bytes()
        except OSError:  # evicted meanwhile or removed by hand: a miss
            with self._lock:
                self.size -= self._entries.pop(key, 0)
            return None

    def put(self, key: str, data: bytes | bytearray) -> None:
        """Keep a block (best effort: a full or failing disk only means a miss later)."""
        if len(data) > self.capacity:
            return
        path = self.root / key
        tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("block cache %s: cannot keep %s: %s", self.root, key, exc)
            tmp.unlink(missing_ok=True)
            return
        with self._lock:
            old = self._entries.pop(key, None)
            self.size += len(data) - (old or 0)
            self._entries[key] = len(data)
        self._evict()

    def _evict(self) -> None:
        while True:
            with self._lock:
                if self.size <= self.capacity or not self._entries:
                    return
                key, size = self._entries.popitem(last=False)
                self.size -= size
            (self.root / key).unlink(missing_ok=True)
