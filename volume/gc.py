"""Bucket maintenance: lineage-wide garbage collection and the block check of a version (fsck).

**gc.** Blocks are shared by every version of a family (see ``spec/bucket-layout.md``), so a block
may be deleted only when no published version of any fork references it and no session that may
still be writing can reference it later. One streamed pass over the bucket's sorted listing does
it, family by family (a family's ``_volume/`` keys sort before its ``chunks/``):

1. ``_volume/domains/<d>`` (claim time), ``_volume/kept/<d>`` (kept working copies),
   ``_volume/live/<d>`` (heartbeat) and ``_volume/versions/<v>/`` are read. The reachable set is
   every slice named by a slice record of every version's index, and of every index uploaded
   without its document yet (a publish in progress, or abandoned: reported, never deleted).
   Reachability comes from the records, never from reference counts (published indexes carry
   pins).
2. A slice domain is *protected* when it was claimed less than the grace period ago, its session
   marks it live (:class:`LiveMarker`, heartbeat younger than the grace period), or a working copy
   kept in a ``meta_dir`` for a resume still holds it (:func:`keep`, whatever its age): every
   block of a protected domain is kept, referenced or not.
3. Every other block under ``chunks/`` that no reachable slice contains is garbage: reported
   (count and bytes), and deleted with ``delete=True``.

The reachable set lives in a temporary SQLite table, and the listing is consumed as it streams, so
memory stays bounded whatever the number of blocks. A family whose version documents cannot all be
read is reported and nothing of it is deleted.

**fsck.** Every block a version references must exist with its size (HEAD, in parallel), and the
index must pass the metadata check; broken files are named by path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from . import keys, plugins
from .errors import ObjectNotFound, VolumeError, VolumeUsageError
from .juicefs import block_key, iter_slice_ids, slice_blocks

if TYPE_CHECKING:
    from .model import ROVolume
    from .stores import MetaStore, ObjectStore

__all__ = [
    "DEFAULT_GRACE",
    "FamilyReport",
    "FsckReport",
    "GCReport",
    "LiveMarker",
    "collect",
    "forget_kept",
    "fsck",
    "keep",
    "unkeep",
]

DEFAULT_GRACE = 3600.0
HEARTBEAT_SECONDS = 60.0
DOMAIN_BITS = 42
_BLOCK_NAME = re.compile(r"(\d+)_(\d+)_(\d+)")
_BATCH = 10_000
Progress = Callable[[int], None]


# =========================================================================== live markers


class LiveMarker:
    """Marks a writable session's slice domain live while it runs (a heartbeat object).

    ``<Name>/_volume/live/<d>`` holds ``{"heartbeat_at": ...}``, rewritten every ``interval``
    seconds; :meth:`stop` deletes it. gc keeps every block of a domain whose heartbeat is younger
    than its grace period, so a session that runs longer than the grace period must be marked.
    """

    def __init__(
        self, objects: "ObjectStore", fs_name: str, domain: int, interval: float = HEARTBEAT_SECONDS
    ):
        self.objects, self.key, self.interval = objects, keys.live_key(fs_name, domain), interval
        self._stop = threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, name="volume-live-marker", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        record = {"heartbeat_at": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        self.objects.put(self.key, json.dumps(record).encode())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next one
                self._beat()

    def stop(self) -> None:
        """Stop the heartbeat and remove the marker."""
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):
            self.objects.delete(self.key)


# =========================================================================== kept working copies


def keep(objects: "ObjectStore", fs_name: str, domains: Iterable[int], **hint: Any) -> None:
    """Mark ``domains`` as held by a working copy kept for a resume (in a ``meta_dir`` that
    outlives its process): ``<Name>/_volume/kept/<d>``, JSON ``kept_at`` plus ``hint`` (volume,
    meta_dir, host, pid) for people. gc keeps every block of such a domain whatever its age, until
    :func:`unkeep` (the working copy is finalized or discarded). Written before the session
    stores its first block, so a SIGKILL never leaves fsync'd blocks unmarked.
    """
    record = {"kept_at": time.time(), "host": socket.gethostname(), "pid": os.getpid(), **hint}
    for d in sorted(set(domains)):
        objects.put(keys.kept_key(fs_name, d), json.dumps({**record, "domain": d}).encode())


def unkeep(objects: "ObjectStore", fs_name: str, domains: Iterable[int]) -> None:
    """Remove the kept marks of ``domains`` (a missing one is fine)."""
    for d in sorted(set(domains)):
        objects.delete(keys.kept_key(fs_name, d))


def forget_kept(objects: "ObjectStore", fs_name: str, domain: int) -> None:
    """Give up a kept working copy whose ``meta_dir`` is lost: remove its mark, so gc collects
    the blocks of ``domain`` that no version references. Raises
    :class:`~volume.errors.VolumeUsageError` when there is no such mark."""
    if not objects.exists(keys.kept_key(fs_name, domain)):
        raise VolumeUsageError(
            f"no kept working copy holds domain {domain} of {fs_name!r} in {objects.uri} "
            f"(volume gc lists the kept ones)"
        )
    unkeep(objects, fs_name, [domain])


# =========================================================================== reports


@dataclass
class FamilyReport:
    """What gc found in one family (counts and bytes)."""

    name: str
    versions: int = 0
    domains: int = 0
    protected_domains: list[int] = field(default_factory=list)
    blocks: int = 0
    bytes: int = 0
    reachable_blocks: int = 0
    reachable_bytes: int = 0
    protected_blocks: int = 0
    protected_bytes: int = 0
    garbage_blocks: int = 0
    garbage_bytes: int = 0
    deleted_blocks: int = 0
    deleted_bytes: int = 0
    abandoned_indexes: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    other_keys: int = 0
    stale_markers: list[int] = field(default_factory=list)
    #: working copies kept for a resume: domain, age_seconds and the mark's hint (volume,
    #: meta_dir, host, pid); their domains are protected whatever their age
    kept: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class GCReport:
    """A gc run over a bucket."""

    bucket: str
    grace_seconds: float
    delete: bool
    families: list[FamilyReport] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        keys = ("blocks", "bytes", "reachable_blocks", "reachable_bytes", "protected_blocks",
                "protected_bytes", "garbage_blocks", "garbage_bytes", "deleted_blocks",
                "deleted_bytes")  # fmt: skip
        return {k: sum(getattr(f, k) for f in self.families) for k in keys}

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket, "grace_seconds": self.grace_seconds, "delete": self.delete,
            "totals": self.totals(), "families": [asdict(f) for f in self.families],
        }  # fmt: skip


# =========================================================================== reachability


def _index_store_class(filename: str) -> Any:
    for name in plugins.names(plugins.META_STORES):
        with contextlib.suppress(VolumeError):
            cls = plugins.meta_store_class(name)
            if cls.index_filename == filename:
                return cls
    return None


@contextlib.contextmanager
def _open_index_key(objects: "ObjectStore", key: str, store_cls: Any) -> Iterator["MetaStore"]:
    tmp = Path(tempfile.mkdtemp(prefix="volume-gc-"))
    try:
        objects.get_file(key, tmp / "download")
        store_cls.restore(tmp / "download", tmp / "meta", move=True)
        meta = store_cls.open(tmp / "meta", read_only=True)
        try:
            yield meta
        finally:
            meta.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Reach:
    """The reachable slices ``(id, size)`` of a family, in a temporary SQLite table."""

    def __init__(self, tmp: Path):
        self.db = sqlite3.connect(tmp / "reach.db")
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            "CREATE TABLE reach (id INTEGER, size INTEGER, PRIMARY KEY (id, size)) WITHOUT ROWID;"
        )

    def add_index(self, meta: "MetaStore") -> None:
        def rows() -> Iterator[tuple[int, int]]:
            with meta.transaction() as tx:
                for _ino, _indx, blob in tx.iter_chunks():
                    yield from iter_slice_ids(blob)

        self.db.executemany("INSERT OR IGNORE INTO reach VALUES (?, ?)", rows())
        self.db.commit()

    def sizes(self, ids: Iterable[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        ids = list(set(ids))
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            marks = ",".join("?" * len(part))
            for sid, size in self.db.execute(
                f"SELECT id, size FROM reach WHERE id IN ({marks})", part
            ):
                out.setdefault(sid, []).append(size)
        return out

    def close(self) -> None:
        self.db.close()


def _contains(sizes: list[int], indx: int, bsize: int, block_bytes: int) -> bool:
    """Whether a slice of one of ``sizes`` has block ``indx`` of length ``bsize``."""
    for size in sizes:
        start = indx * block_bytes
        if start < size and min(block_bytes, size - start) == bsize:
            return True
    return False


@dataclass
class _Family:
    """The state of one family while its keys stream by."""

    objects: "ObjectStore"
    report: FamilyReport
    now: float
    grace: float
    delete: bool
    tmp: Path
    claimed: dict[int, float] = field(default_factory=dict)
    heartbeats: dict[int, float] = field(default_factory=dict)
    kept: dict[int, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)
    reach: _Reach | None = None
    block_bytes: int = 4 << 20
    pending: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    protected: set[int] = field(default_factory=set)

    def take(self, rest: str, size: int) -> None:
        key = f"{self.report.name}/{rest}"
        if rest.startswith(f"{keys.VOLUME_DIR}/"):
            self._meta_key(rest[len(keys.VOLUME_DIR) + 1 :], key)
        elif rest.startswith("chunks/"):
            if self.reach is None:
                self._prepare()
            match = _BLOCK_NAME.fullmatch(rest.rpartition("/")[2])
            if match is None:
                self.report.other_keys += 1
                return
            sid, indx, bsize = map(int, match.groups())
            self.report.blocks += 1
            self.report.bytes += size
            if (sid >> DOMAIN_BITS) in self.protected:
                self.report.protected_blocks += 1
                self.report.protected_bytes += size
                return
            self.pending.append((key, size, sid, indx, bsize))
            if len(self.pending) >= _BATCH:
                self._classify()
        else:
            self.report.other_keys += 1

    def _meta_key(self, tail: str, key: str) -> None:
        kind, _, name = tail.partition("/")
        if kind == "domains" and name.isdigit():
            self.claimed[int(name)] = self._record_time(key, "claimed_at")
        elif kind == "live" and name.isdigit():
            self.heartbeats[int(name)] = self._record_time(key, "heartbeat_at")
        elif kind == "kept" and name.isdigit():
            self.kept[int(name)] = self._record(key)
        elif kind == "versions" and "/" in name:
            version, _, filename = name.partition("/")
            self.versions.setdefault(version, {})[filename] = key
        else:
            self.report.other_keys += 1

    def _record(self, key: str) -> dict[str, Any]:
        try:
            record = json.loads(self.objects.get(key))
        except (ObjectNotFound, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _record_time(self, key: str, field_name: str) -> float:
        try:
            return float(self._record(key)[field_name])
        except (ValueError, KeyError, TypeError):
            return self.now  # unreadable or just removed: treat as fresh (keeps more)

    def _prepare(self) -> None:
        """Protected domains and the reachable slices, before the first block is classified."""
        from .locations import key_of
        from .model import ROVolume

        self.report.domains = len(self.claimed)
        for d, at in self.claimed.items():
            if self.now - at < self.grace:
                self.protected.add(d)
        for d, at in self.heartbeats.items():
            if self.now - at < self.grace:
                self.protected.add(d)
        for d, record in sorted(self.kept.items()):
            self.protected.add(d)  # whatever its age: a resume will read these blocks
            hint = {k: record.get(k) for k in ("volume", "meta_dir", "host", "pid")}
            at = record.get("kept_at")
            age = self.now - at if isinstance(at, (int, float)) else None
            self.report.kept.append({"domain": d, "age_seconds": age, **hint})
        self.report.protected_domains = sorted(self.protected)
        self.reach = _Reach(self.tmp)
        loaded: set[str] = set()
        for version, files in sorted(self.versions.items()):
            document = files.get("volume.json")
            index_files = [f for f in files if f != "volume.json"]
            try:
                if document is not None:
                    doc = ROVolume.parse(self.objects.get(document))
                    if doc.index is None:
                        raise VolumeUsageError("the document has no index")
                    index_key = key_of(self.objects, doc.index.path)
                    store_cls = plugins.meta_store_class(doc.index.format or "sqlite")
                    self.report.versions += 1
                else:
                    if len(index_files) != 1:
                        raise VolumeUsageError(f"unexpected files {sorted(files)}")
                    index_key = files[index_files[0]]
                    store_cls = _index_store_class(index_files[0])
                    if store_cls is None:
                        raise VolumeUsageError(f"no installed store writes {index_files[0]}")
                    self.report.abandoned_indexes.append(index_key)
                if index_key in loaded:
                    continue  # a fork point shares its source's index
                loaded.add(index_key)
                with _open_index_key(self.objects, index_key, store_cls) as meta:
                    self.block_bytes = meta.load_format().block_bytes
                    self.reach.add_index(meta)
            except Exception as exc:  # noqa: BLE001  (reported; the family is then left alone)
                self.report.unreadable.append(f"{version}: {' '.join(str(exc).split())}")

    def _classify(self) -> None:
        assert self.reach is not None
        batch, self.pending = self.pending, []
        sizes = self.reach.sizes(sid for _k, _s, sid, _i, _b in batch)
        garbage = []
        for key, size, sid, indx, bsize in batch:
            if _contains(sizes.get(sid, []), indx, bsize, self.block_bytes):
                self.report.reachable_blocks += 1
                self.report.reachable_bytes += size
            else:
                self.report.garbage_blocks += 1
                self.report.garbage_bytes += size
                garbage.append((key, size))
        if self.delete and garbage and not self.report.unreadable:
            with ThreadPoolExecutor(16) as pool:
                for _ in pool.map(lambda ks: self.objects.delete(ks[0]), garbage):
                    pass
            self.report.deleted_blocks += len(garbage)
            self.report.deleted_bytes += sum(s for _k, s in garbage)

    def finish(self) -> FamilyReport:
        if self.reach is None:
            self._prepare()
        self._classify()
        self.reach.close()  # type: ignore[union-attr]
        stale = [d for d, at in self.heartbeats.items() if self.now - at >= self.grace]
        self.report.stale_markers = sorted(stale)
        if self.delete:  # a session that is alive after all writes its marker again
            for d in stale:
                self.objects.delete(keys.live_key(self.report.name, d))
        return self.report


def collect(
    objects: "ObjectStore",
    *,
    grace: float = DEFAULT_GRACE,
    delete: bool = False,
    now: float | None = None,
    progress: Progress | None = None,
) -> GCReport:
    """Garbage-collect every volume family of the bucket ``objects`` (dry run unless ``delete``).

    A top-level prefix is a family when it holds a slice-domain ledger or versions; anything else
    (a volume of the stock JuiceFS client, unrelated objects) is left alone. Raises
    :class:`~volume.errors.VolumeUsageError` when the bucket holds no family.
    """
    if grace < 0:
        raise VolumeUsageError(f"grace period {grace} s is negative")
    report = GCReport(objects.uri, grace, delete)
    now = time.time() if now is None else now
    family: _Family | None = None
    seen = 0
    with tempfile.TemporaryDirectory(prefix="volume-gc-") as tmp:

        def close() -> None:
            if family is not None and (family.versions or family.claimed):
                report.families.append(family.finish())
            elif family is not None and family.reach is not None:
                family.reach.close()

        for info in objects.list(""):
            name, _, rest = info.key.partition("/")
            if family is None or name != family.report.name:
                close()
                sub = Path(tmp) / f"f{len(report.families)}-{seen}"
                sub.mkdir()
                family = _Family(objects, FamilyReport(name), now, grace, delete, sub)
            if rest.startswith("chunks/") and not (family.versions or family.claimed):
                family.report.other_keys += 1  # not one of ours: never touched
            else:
                family.take(rest, info.size)
            seen += 1
            if progress is not None and seen % 1000 == 0:
                progress(1000)
        close()
        if progress is not None:
            progress(seen % 1000)
    if not report.families:
        raise VolumeUsageError(
            f"no volume families in {objects.uri}: nothing has a slice-domain ledger or versions "
            f"there (is it the right bucket?)"
        )
    return report


# =========================================================================== fsck


@dataclass
class FsckReport:
    """What fsck found in one version."""

    name: str
    locator: str | None
    blocks: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    wrong_size: list[dict[str, Any]] = field(default_factory=list)
    broken_files: list[str] = field(default_factory=list)
    metadata_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.wrong_size or self.metadata_problems)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def fsck(
    version: "ROVolume",
    *,
    workers: int = 32,
    progress: Progress | None = None,
    total: Callable[[int], None] | None = None,
) -> FsckReport:
    """Check that every block ``version`` references exists with the right size (HEAD, in
    parallel) and that its index passes the metadata check; broken files are named by path."""
    from .diff import read_tree
    from .engine.check import check_metadata
    from .fsspec import open_index

    report = FsckReport(version.name, version.produced_by.locator if version.produced_by else None)
    with open_index(version) as (meta, objects):
        report.metadata_problems = check_metadata(meta)
        fmt = meta.load_format()
        exact = fmt.Compression in ("", "none") and not fmt.values.get("EncryptKey")
        owners: dict[tuple[int, int], set[int]] = {}
        with meta.transaction() as tx:
            for ino, _indx, blob in tx.iter_chunks():
                for sid_size in iter_slice_ids(blob):
                    owners.setdefault(sid_size, set()).add(ino)
        blocks = [
            (block_key(fmt.Name, sid, indx, bsize, fmt.HashPrefix), bsize, (sid, size))
            for sid, size in owners
            for indx, bsize in slice_blocks(size, fmt.block_bytes)
        ]
        report.blocks = len(blocks)
        report.bytes = sum(b for _k, b, _s in blocks)
        if total is not None:
            total(len(blocks))

        def head(item: tuple[str, int, tuple[int, int]]) -> tuple[str, int, Any, int | None]:
            key, bsize, sid_size = item
            try:
                return key, bsize, sid_size, objects.head(key).size
            except ObjectNotFound:
                return key, bsize, sid_size, None

        broken: set[int] = set()
        with ThreadPoolExecutor(workers) as pool:
            for key, bsize, sid_size, size in pool.map(head, blocks):
                if progress is not None:
                    progress(1)
                if size is None:
                    report.missing.append(key)
                elif exact and size != bsize:
                    report.wrong_size.append({"key": key, "expected": bsize, "actual": size})
                else:
                    continue
                broken |= owners[sid_size]
        if broken:
            _uuid, tree = read_tree(meta)
            report.broken_files = sorted(p for p, node in tree.items() if node.ino in broken)
            named = {tree[p].ino for p in report.broken_files}
            report.broken_files += [f"<inode {i} without a name>" for i in sorted(broken - named)]
    report.missing.sort()
    return report
