"""The lifecycle contract as a hypothesis state machine: families of versions, forks, commits,
migrations, read-only mounts, abandoned sessions and the bad inputs users try.

:class:`LifecycleMachine` drives the public verbs (``Volume.new``, ``mount``, ``commit``,
``finalize``, ``fork``, ``migrate_metadata_store_type``, ``unmount``) on one bucket, with
in-process mounts, against a model made of plain dicts (path -> bytes) per writable handle and per
published version. Every object store the verbs open is wrapped in a
:class:`~volume.testing.faults.RecordingObjectStore`, so the machine sees every put, get and
delete. After every step it checks:

* live handles read back exactly their models (isolation: nothing written to one handle shows in
  another or in any version);
* published versions mount read-only and read back exactly their models (each new version as
  it is published, one version in rotation each step, every version every ``full_check_every``
  steps and at teardown, or all of them every step with ``check_all_versions = True``);
* every block key is put exactly once, with put-if-absent; each session's slice ids lie in the
  domain it claimed, and no slice id is used by two sessions; no domain is claimed twice;
* no index, version document or ledger claim is ever deleted or written over, and no block that
  a published version references is ever deleted (a session may delete its own unpublished
  garbage; session markers may change);
* every block a published index references exists with its size (checked at publish time, by
  the delete rule ever after, and by a head of each at teardown);
* commits of a session have distinct index paths and a linear parent chain; identity fields never
  change; JSON round trips are lossless; locators load back equal versions; lineage walks end;
* a migration keeps the engine-neutral dump (counters it advances aside) and moves no block.

Plugin authors run it against their store by subclassing and naming a bucket::

    class MyStoreLifecycle(LifecycleMachine):
        def make_bucket(self) -> str:
            return f"mystore://test-bucket/lifecycle-{uuid.uuid4().hex}"

    TestMyStoreLifecycle = MyStoreLifecycle.TestCase
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import stat
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from .. import dump as dump_module
from .. import locations, plugins
from ..allocator import DOMAIN_BITS
from ..errors import (
    PluginNotFound,
    VolumeAlreadyMounted,
    VolumeBucketNotEmpty,
    VolumeIndexCorrupt,
    VolumeMigrateNoop,
    VolumeNotForkable,
    VolumeNotMounted,
    VolumeStoreMismatch,
)
from ..juicefs import block_key, iter_slice_ids, slice_blocks
from ..model import File, ROVolume, RWVolume, Volume
from .faults import Recorder, RecordingObjectStore, StoreEvent, wrap_lifecycle_stores

__all__ = ["LifecycleMachine", "dump_of", "index_blocks", "meta_blocks", "read_tree"]

PATHS = ("a", "b", "c", "d/x", "d/y")
BAD_INPUTS = ("mount twice", "commit unmounted", "other store type", "corrupted index")
PICK = st.integers(0, 15)  # which handle or version a rule acts on (modulo how many there are)
SIZES = (0, 1, 7, 100, 4096, 5000, 65536, 300_001)
_BLOCK_NAME = re.compile(r"^(.*)/chunks/(?:[0-9A-F]{2}/)?\d+/(?:\d+/)?(\d+)_(\d+)_(\d+)$")
_DOMAIN_KEY = re.compile(r"^(.*)/_volume/domains/(\d+)$")
# counters a migration (or fork) advances on purpose
_ADVANCED = ("nextInodes", "nextSession")


def pick(items: list[Any], i: int) -> Any:
    return items[i % len(items)]


def payload(seed: int, size: int) -> bytes:
    """Deterministic bytes for a (seed, size) pair: cheap to make, easy to shrink."""
    return random.Random(seed).randbytes(size)


def read_tree(pathfs: Any) -> dict[str, bytes]:
    """Every regular file below the root of a mounted volume: relative path -> content."""
    out: dict[str, bytes] = {}
    stack = [""]
    while stack:
        prefix = stack.pop()
        for name, _ino, st_ in pathfs.scandir("/" + prefix):
            rel = f"{prefix}{name}"
            if stat.S_ISDIR(st_.st_mode):
                stack.append(rel + "/")
            elif stat.S_ISREG(st_.st_mode):
                out[rel] = pathfs.read_bytes("/" + rel)
    return out


def _open_index(version: Volume, objects: Any, workdir: Path) -> Any:
    """The version's index, downloaded and opened read-only in a fresh directory of ``workdir``."""
    store_cls = plugins.meta_store_class(version.metadata_store_type or "sqlite")
    where = Path(tempfile.mkdtemp(dir=workdir))
    download = where / ".download"
    objects.get_file(locations.key_of(objects, version.index.path), download)
    store_cls.restore(download, where / "meta")
    return store_cls.open(where / "meta", read_only=True), where


def index_blocks(
    version: Volume, objects: Any, workdir: Path, *, check: bool = False
) -> dict[str, int]:
    """Block key -> size of every block that ``version``'s index references. With ``check``,
    also assert that the index passes the metadata check and carries its pins."""
    meta, where = _open_index(version, objects, workdir)
    try:
        return meta_blocks(meta, version.index.path if check else None)
    finally:
        meta.close()
        shutil.rmtree(where, ignore_errors=True)


def meta_blocks(meta: Any, check: str | None = None) -> dict[str, int]:
    """Block key -> size of every block the open metadata store ``meta`` references. With
    ``check`` (the index's path, for messages), also assert that it passes the metadata check
    and carries the pins of a published index."""
    if check is not None:
        from ..engine.check import check_metadata
        from ..pins import FOREIGN_CHUNK, SLICE_PIN

        problems = check_metadata(meta)
        assert not problems, f"published index {check}: {problems[:5]}"
        with meta.transaction() as tx:
            assert tx.get_counter("nextChunk") == FOREIGN_CHUNK, "nextChunk not in the foreign lane"
            low = [r for r in tx.slice_refs() if r[2] < SLICE_PIN]
            assert not low, f"published slice counts without their pin: {low[:5]}"
    fmt = meta.load_format()
    block_size = fmt.BlockSize << 10
    hash_prefix = bool(fmt.HashPrefix)
    out: dict[str, int] = {}
    with meta.transaction() as tx:
        for _ino, _indx, blob in tx.iter_chunks():
            for sid, size in iter_slice_ids(blob):
                for indx, bsize in slice_blocks(size, block_size):
                    out[block_key(fmt.Name, sid, indx, bsize, hash_prefix)] = bsize
    return out


def dump_of(version: Volume, objects: Any, workdir: Path) -> dict[str, Any]:
    """The engine-neutral dump of ``version``'s index, parsed, without the counters that forks
    and migrations advance on purpose."""
    meta, where = _open_index(version, objects, workdir)
    try:
        with open(where / "dump.json", "w+b") as out:
            dump_module.dump(meta, out, keep_secret_key=True)
            out.seek(0)
            doc = json.loads(out.read())
    finally:
        meta.close()
        shutil.rmtree(where, ignore_errors=True)
    for name in _ADVANCED:
        doc["Counters"].pop(name, None)
    return doc


# =========================================================================== model


@dataclass
class Published:
    """A published version and what it must read back forever."""

    vol: ROVolume
    files: dict[str, bytes]
    document: bytes
    blocks: dict[str, int]
    links: dict[str, int] = field(default_factory=dict)  # path -> file (hard links share)


@dataclass
class Handle:
    """A writable handle and its model: path -> inode, inode -> bytes (hard links share)."""

    vol: RWVolume
    tag: str
    paths: dict[str, int] = field(default_factory=dict)
    data: dict[int, bytes] = field(default_factory=dict)
    base: dict[str, bytes] = field(default_factory=dict)  # what its index holds
    base_links: dict[str, int] = field(default_factory=dict)
    origin: Published | None = None  # the version its index is (fork source or last commit)
    next_ino: int = 1
    formatted: bool = False  # mounted once (a never-committed one then owns its name)

    @property
    def mounted(self) -> bool:
        return self.vol.mounted

    def files(self) -> dict[str, bytes]:
        return {p: self.data[i] for p, i in self.paths.items()}

    def reset(self, content: dict[str, bytes], links: dict[str, int] | None = None) -> None:
        """The model of a fresh mount of an index holding ``content``, whose paths with equal
        numbers in ``links`` are hard links of one file."""
        links = links or {}
        self.paths, self.data = {}, {}
        fresh: dict[int, int] = {}
        for p, d in content.items():
            group = links.get(p, -1 - len(fresh))
            if group not in fresh:
                fresh[group] = self.next_ino
                self.data[self.next_ino] = d
                self.next_ino += 1
            self.paths[p] = fresh[group]

    def set(self, path: str, content: bytes) -> None:
        ino = self.paths.get(path)
        if ino is None:
            ino = self.paths[path] = self.next_ino
            self.next_ino += 1
        self.data[ino] = content

    def drop(self, path: str) -> None:
        ino = self.paths.pop(path)
        if ino not in self.paths.values():
            del self.data[ino]


# =========================================================================== the machine


class LifecycleMachine(RuleBasedStateMachine):
    """Random lifecycles of one volume family (and its forks) on one bucket."""

    #: metadata store type of new volumes (None: the first installed, sqlite when present)
    meta_store_type: ClassVar[str | None] = None
    #: check every published version after every step (slow); else one version in turn (each
    #: is checked as it is published), and all of them every ``full_check_every`` steps and at
    #: teardown
    check_all_versions: ClassVar[bool] = False
    full_check_every: ClassVar[int] = 25

    #: how often each rule did its work, over every run of this class (reported by the tests)
    totals: ClassVar[Counter[str]] = Counter()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.totals = Counter()

    def did(self, what: str) -> None:
        type(self).totals[what] += 1

    # ------------------------------------------------------------------ plumbing

    def make_bucket(self) -> str:
        """The bucket URI of this run (a fresh, empty one). Override for other stores."""
        self._bucket_dir = tempfile.mkdtemp(prefix="lifecycle-bucket-")
        return self._bucket_dir

    def drop_bucket(self, bucket: str) -> None:
        """Forget the bucket made by :meth:`make_bucket`."""
        if bucket.startswith("memory://"):
            from .memory import MemoryObjectStore

            MemoryObjectStore.reset(bucket[len("memory://") :].rstrip("/"))
        elif getattr(self, "_bucket_dir", None):
            shutil.rmtree(self._bucket_dir, ignore_errors=True)

    def __init__(self) -> None:
        super().__init__()
        self.workdir = Path(tempfile.mkdtemp(prefix="lifecycle-machine-"))
        self.bucket = self.make_bucket()
        installed = plugins.names(plugins.META_STORES)
        self.store_types = installed
        self.default_type = self.meta_store_type or (
            "sqlite" if "sqlite" in installed else installed[0]
        )
        self.recorder = Recorder(tag="setup")
        self._hook = wrap_lifecycle_stores(lambda s: RecordingObjectStore(s, self.recorder))
        self._hook.__enter__()
        probe = Volume.empty("probe", bucket=self.bucket)
        self.objects = locations.object_store(probe)  # recorded too (tag "setup")
        self.did("runs")
        self.all_handles: list[Handle] = []
        self.published: list[Published] = []
        self.seen = 0  # events already checked
        self.put_keys: dict[str, str] = {}  # key -> digest of every successful put
        # (family, domain) -> tag; tag -> (family, its current domain); (family, id) -> owner
        self.domains: dict[tuple[str, int], str] = {}
        self.session_domain: dict[str, tuple[str, int]] = {}
        self.slice_owner: dict[tuple[str, int], tuple[str, int]] = {}
        self.index_paths: set[str] = set()
        self.published_blocks: set[str] = set()  # every block some published version names
        self.counter = 0
        self.steps = 0
        self.rotation = 0
        self.family: str | None = None

    def teardown(self) -> None:
        try:
            for h in self.all_handles:
                if h.mounted:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        h.vol.unmount()
            self.check_events()
            for p in self.published:
                self.check_version(p, heads=True)
        finally:
            self._hook.__exit__(None, None, None)
            self.objects.close()
            self.drop_bucket(self.bucket)
            shutil.rmtree(self.workdir, ignore_errors=True)

    #: prefix of the volume names this machine makes (machines sharing a bucket need their own)
    name_prefix: ClassVar[str] = ""

    def fresh(self, what: str) -> str:
        self.counter += 1
        return f"{self.name_prefix}{what}-{self.counter}"

    # ------------------------------------------------------------------ checks

    def check_events(self) -> None:
        """Every store call since the last check obeys the key-disjointness rules."""
        events = self.recorder.since(self.seen)
        self.seen += len(events)
        for ev in events:
            domain = _DOMAIN_KEY.search(ev.key)
            block = _BLOCK_NAME.search(ev.key)
            # write-once objects: blocks, indexes, version documents, ledger claims (session
            # markers and the like may change)
            once = bool(block or domain or "/_volume/versions/" in ev.key)
            if ev.op == "delete":
                assert not (domain or "/_volume/versions/" in ev.key), f"{ev.tag} deleted {ev.key}"
                assert ev.key not in self.published_blocks, (
                    f"{ev.tag} deleted {ev.key}, which a published version references"
                )
                continue
            if ev.op != "put":
                continue
            if ev.ok and once:
                assert not ev.existed, f"{ev.tag} wrote over the existing object {ev.key}"
                assert ev.key not in self.put_keys, f"{ev.key} written twice"
                self.put_keys[ev.key] = ev.digest
            if once:
                assert ev.if_absent, f"{ev.key} was written without put-if-absent"
            if domain and ev.ok:
                d = (domain.group(1), int(domain.group(2)))
                assert d not in self.domains, f"domain {d} claimed twice"
                self.domains[d] = ev.tag
                self.session_domain[ev.tag] = d
            if block:
                assert ev.ok, f"block {ev.key} could not be written: its slice id was reused"
                self.check_block(ev, block.group(1), int(block.group(2)))

    def begin(self, what: str = "quiet") -> tuple[int, str]:
        """Open what follows under a fresh tag: other handles' background uploads carry their
        own tags, so :meth:`puts_since` sees only the puts of the operation under test."""
        tag = self.recorder.tag = self.fresh(what)
        return len(self.recorder), tag

    def puts_since(self, mark: tuple[int, str]) -> list[StoreEvent]:
        start, tag = mark
        return [e for e in self.recorder.since(start) if e.op == "put" and e.tag == tag]

    def check_block(self, ev: StoreEvent, family: str, slice_id: int) -> None:
        assert not ev.tag.startswith("migrate"), f"a migration wrote the block {ev.key}"
        claimed = self.session_domain.get(ev.tag)
        assert claimed is not None, f"{ev.tag} wrote block {ev.key} without claiming a domain"
        assert claimed[0] == family, f"{ev.tag} claimed in {claimed[0]} but wrote {ev.key}"
        domain = claimed[1]
        assert slice_id >> DOMAIN_BITS == domain, (
            f"{ev.tag} wrote slice {slice_id} (domain {slice_id >> DOMAIN_BITS}) outside its "
            f"claimed domain {domain}"
        )
        owner = self.slice_owner.setdefault((family, slice_id), (ev.tag, domain))
        assert owner == (ev.tag, domain), f"slice {slice_id} used by {owner} and {ev.tag}"

    def check_version(
        self, p: Published, *, heads: bool = False, index: bool = False
    ) -> dict[str, int]:
        """``p`` mounts read-only and reads back exactly its model; its document is intact.
        With ``index``: its index passes the metadata check and carries its pins; returns the
        blocks it references (else ``{}``)."""
        with p.vol.mount(transport="none", meta_dir=self.version_dir(p)) as ro:
            got = read_tree(ro._mount.pathfs)
            blocks = meta_blocks(ro._mount.meta, p.vol.index.path) if index else {}
        assert got == p.files, (
            f"version {p.vol.index.path} reads back {sorted(got)}, expected {sorted(p.files)}"
        )
        assert self.objects.get(self.doc_key(p.vol)) == p.document
        if heads:
            for key, size in p.blocks.items():
                assert self.objects.head(key).size == size, f"block {key} changed size"
        return blocks

    def version_dir(self, p: Published) -> Path:
        return self.workdir / "ro" / re.sub(r"[^A-Za-z0-9]", "_", p.vol.index.path)[-80:]

    def doc_key(self, vol: Volume) -> str:
        return locations.key_of(self.objects, vol.produced_by.locator)

    def load_locator(self, locator: str) -> ROVolume:
        return Volume.from_locator(locator)

    def record(
        self,
        vol: ROVolume,
        files: dict[str, bytes],
        handle: Handle | None,
        *,
        fork_of: Published | None = None,
        links: dict[str, int] | None = None,
    ) -> Published:
        """Check a just-published version (a fork point when ``fork_of``) and remember it."""
        assert vol.index is not None and vol.produced_by and vol.produced_by.locator
        if fork_of is None:
            assert vol.index.path not in self.index_paths, "a commit reused an index path"
            self.index_paths.add(vol.index.path)
        else:  # a fork point names its source's index: no index upload, no block
            assert vol.index == fork_of.vol.index
            assert vol.parent_produced_by == fork_of.vol.produced_by
        assert vol.produced_by.locator not in {p.vol.produced_by.locator for p in self.published}
        doc = self.objects.get(self.doc_key(vol))
        assert ROVolume.parse(doc).model_dump() == vol.model_dump(), "document != returned version"
        assert ROVolume.parse(vol.model_dump_json()).model_dump() == vol.model_dump()
        assert self.load_locator(vol.produced_by.locator).model_dump() == vol.model_dump()
        if handle is not None:
            for name in ("name", "bucket", "storage", "region", "metadata_store_type"):
                assert getattr(vol, name) == getattr(handle.vol, name), (
                    f"{name} changed in a commit"
                )
            expected = handle.origin.vol.produced_by if handle.origin else None
            assert vol.parent_produced_by == expected, (
                "a commit's parent is not the version before it"
            )
        self.check_lineage(vol)
        if links is None:
            links = fork_of.links if fork_of is not None else {}
        p = Published(vol, dict(files), doc, {}, dict(links))
        # it mounts read-only and reads back its model now (and in turn at later steps)
        if fork_of is not None:
            self.check_version(p)
            p.blocks = fork_of.blocks
        else:
            p.blocks = self.check_version(p, index=True)
            for key, size in p.blocks.items():
                assert self.objects.head(key).size == size, (
                    f"published index references {key}, missing"
                )
        self.published_blocks.update(p.blocks)
        self.published.append(p)
        return p

    def check_lineage(self, vol: Volume) -> None:
        known = {p.vol.produced_by.locator for p in self.published} | {vol.produced_by.locator}
        seen = {vol.produced_by.locator}
        walked = [vol.produced_by.locator]
        current: Volume = vol
        while current.parent_produced_by is not None and current.parent_produced_by.locator:
            loc = current.parent_produced_by.locator
            assert loc in known, f"lineage names {loc}, which is no published version"
            assert loc not in seen, f"lineage cycle at {loc}"
            seen.add(loc)
            walked.append(loc)
            current = self.load_locator(loc)
        from ..lineage import walk

        assert [v.produced_by.locator for v in walk(vol)] == [
            loc for loc in walked if loc != vol.produced_by.locator
        ]

    @invariant()
    def disjoint_keys(self) -> None:
        self.check_events()

    @invariant()
    def handles_read_back(self) -> None:
        for h in self.all_handles:
            if h.mounted:
                assert read_tree(h.vol._mount.pathfs) == h.files(), f"handle {h.tag} diverged"

    @invariant()
    def versions_read_back(self) -> None:
        self.did("steps")
        if not self.published:
            return
        every = self.full_check_every
        self.rotation += 1
        if self.check_all_versions or (every and self.rotation % every == 0):
            chosen = self.published
        else:  # one version in turn (each new version was mounted when it was published)
            chosen = [self.published[self.rotation % len(self.published)]]
        for p in chosen:
            self.check_version(p)

    # ------------------------------------------------------------------ creating and mounting

    def new_handle(self, vol: RWVolume, tag: str, origin: Published | None) -> Handle:
        h = Handle(vol, tag, origin=origin)
        if origin is not None:
            h.base, h.base_links = dict(origin.files), dict(origin.links)
        h.reset(h.base, h.base_links)
        self.all_handles.append(h)
        return h

    def mounted(self) -> list[Handle]:
        return [h for h in self.all_handles if h.mounted]

    def unmounted(self) -> list[Handle]:
        return [h for h in self.all_handles if not h.mounted]

    @initialize(seed=st.integers(0, 3))
    def first_volume(self, seed: int) -> None:
        """Every run starts with a mounted volume holding two files (see :meth:`seed_family`)."""
        self.seed_family()
        if not self.mounted():
            self.mount_rw(0)
        self.write(0, "a", seed, 5000)
        self.write(0, "d/x", seed + 1, 100)

    def seed_family(self) -> None:
        """Make the first handle: a new volume. Override to start from an existing version."""
        self.new()

    def adopt(self, version: ROVolume, files: dict[str, bytes]) -> Published:
        """Take a version published outside this machine (holding ``files``) into the model."""
        self.recorder.tag = self.fresh("adopted")
        return self.record(version, files, None)

    @precondition(lambda self: len(self.all_handles) < 6)
    @rule()
    def new(self) -> None:
        tag = self.fresh("new")
        vol = Volume.new(
            self.fresh("vol"), bucket=self.bucket, metadata_store_type=self.default_type
        )
        self.did("new")
        self.new_handle(vol, tag, None)

    def mount_twice(self, i: int) -> None:
        h = pick(self.mounted(), i)
        before = self.begin()
        try:
            h.vol.mount(transport="none")
        except VolumeAlreadyMounted:
            self.did("bad input: VolumeAlreadyMounted")
        else:
            raise AssertionError("a second mount of a mounted handle was accepted")
        assert not self.puts_since(before)

    @precondition(lambda self: self.unmounted())
    @rule(i=PICK)
    def mount_rw(self, i: int) -> None:
        h = pick(self.unmounted(), i)
        if h.vol.index is None and h.formatted:  # bad input: its name is taken by the first try
            before = self.begin()
            try:
                h.vol.mount(transport="none")
            except VolumeBucketNotEmpty:
                self.did("bad input: VolumeBucketNotEmpty")
            else:
                raise AssertionError("an abandoned, never-committed volume was formatted again")
            assert not self.puts_since(before)
            return
        if h.vol._staged_meta_dir is None:  # a fork's first mount continues in the fork's domain
            h.tag = self.fresh("session")
        self.recorder.tag = h.tag
        h.vol.mount(transport="none")
        h.formatted = True
        self.did("mount_rw")
        h.reset(h.base, h.base_links)

    # ------------------------------------------------------------------ writing

    def _fs(self, h: Handle) -> Any:
        return h.vol._mount.pathfs

    def _parent(self, h: Handle, path: str) -> None:
        if "/" in path:
            self._fs(h).makedirs("/" + path.rsplit("/", 1)[0], exist_ok=True)

    @precondition(lambda self: self.mounted())
    @rule(i=PICK, path=st.sampled_from(PATHS), seed=st.integers(0, 3), size=st.sampled_from(SIZES))
    def write(self, i: int, path: str, seed: int, size: int) -> None:
        h = pick(self.mounted(), i)
        data = payload(seed, size)
        self._parent(h, path)
        self._fs(h).write_bytes("/" + path, data)
        h.set(path, data)
        self.did("write")

    @precondition(lambda self: self.mounted())
    @rule(i=PICK, path=st.sampled_from(PATHS), offset=st.sampled_from((0, 3, 4095, 5000, 70000)),
          seed=st.integers(0, 3), size=st.sampled_from(SIZES[1:6]))  # fmt: skip
    def overwrite(self, i: int, path: str, offset: int, seed: int, size: int) -> None:
        h = pick(self.mounted(), i)
        if path not in h.paths:
            return
        data = payload(seed + 10, size)
        fs = self._fs(h)
        fd = fs.open("/" + path, os.O_WRONLY)
        try:
            fs.write(fd, data, offset)
        finally:
            fs.close(fd)
        old = h.files()[path]
        old = old + bytes(max(0, offset - len(old)))
        h.set(path, old[:offset] + data + old[offset + len(data) :])
        self.did("overwrite")

    @precondition(lambda self: self.mounted())
    @rule(i=PICK, path=st.sampled_from(PATHS), length=st.sampled_from((0, 1, 4096, 6000, 100_000)))
    def truncate(self, i: int, path: str, length: int) -> None:
        h = pick(self.mounted(), i)
        if path not in h.paths:
            return
        self._fs(h).truncate("/" + path, length)
        old = h.files()[path]
        h.set(path, old[:length] + bytes(max(0, length - len(old))))
        self.did("truncate")

    @precondition(lambda self: self.mounted())
    @rule(i=PICK, path=st.sampled_from(PATHS))
    def delete(self, i: int, path: str) -> None:
        h = pick(self.mounted(), i)
        if path not in h.paths:
            return
        self._fs(h).unlink("/" + path)
        h.drop(path)
        self.did("delete")

    @precondition(lambda self: self.mounted())
    @rule(i=PICK, src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS))
    def rename(self, i: int, src: str, dst: str) -> None:
        h = pick(self.mounted(), i)
        if src not in h.paths:
            return
        self._parent(h, dst)
        self._fs(h).rename("/" + src, "/" + dst)
        self.did("rename")
        if h.paths.get(dst) == h.paths[src]:
            return  # POSIX: renaming a link onto another link of the same inode does nothing
        ino = h.paths[src]
        if dst in h.paths:
            h.drop(dst)
        del h.paths[src]
        h.paths[dst] = ino

    @precondition(lambda self: self.mounted())
    @rule(i=PICK, src=st.sampled_from(PATHS), dst=st.sampled_from(PATHS))
    def hard_link(self, i: int, src: str, dst: str) -> None:
        h = pick(self.mounted(), i)
        if src not in h.paths:
            return
        self._parent(h, dst)
        if dst in h.paths:
            before = h.files()
            try:
                self._fs(h).link("/" + src, "/" + dst)
            except FileExistsError:
                assert h.files() == before
                self.did("bad input: FileExistsError")
                return
            raise AssertionError(f"link onto the existing {dst} was accepted")
        self._fs(h).link("/" + src, "/" + dst)
        h.paths[dst] = h.paths[src]
        self.did("hard_link")

    # ------------------------------------------------------------------ publishing

    def _published(self, h: Handle, vol: ROVolume) -> Published:
        files = h.files()
        p = self.record(vol, files, h, links=h.paths)
        h.base, h.base_links, h.origin = dict(files), dict(h.paths), p
        self.did("commit")
        return p

    @precondition(lambda self: self.mounted())
    @rule(i=PICK)
    def commit(self, i: int) -> None:
        h = pick(self.mounted(), i)
        self._published(h, h.vol.commit(self.fresh("commit")))

    @precondition(lambda self: self.mounted())
    @rule(i=PICK, publish=st.booleans())
    def close(self, i: int, publish: bool) -> None:
        """Finalize (publish, then unmount) or unmount without publishing (abandon)."""
        h = pick(self.mounted(), i)
        if publish:
            self._published(h, h.vol.finalize(self.fresh("final")))
            assert not h.mounted
        else:
            self.unmount_abandon(h)

    def refused_unmounted(self, i: int, verb: str) -> None:
        """Bad input: commit or finalize of an unmounted handle (finalize twice)."""
        h = pick(self.unmounted(), i)
        before = self.begin()
        try:
            getattr(h.vol, verb)()
        except VolumeNotMounted:
            self.did("bad input: VolumeNotMounted")
        else:
            raise AssertionError(f"{verb} of an unmounted handle was accepted")
        assert not self.puts_since(before), "a refused verb wrote"

    def unmount_abandon(self, h: Handle) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            h.vol.unmount()
        h.reset(h.base, h.base_links)
        self.did("unmount_abandon")

    # ------------------------------------------------------------------ forks

    @precondition(lambda self: 0 < len(self.all_handles) < 6)
    @rule(i=PICK, of_version=st.booleans())
    def fork(self, i: int, of_version: bool) -> None:
        """Fork a published version, or a handle (live: commits it first; unmounted: its
        index; never committed: refused)."""
        if of_version and self.published:
            self.fork_version(i)
        else:
            self.fork_handle(i)

    def fork_version(self, i: int) -> None:
        source = pick(self.published, i)
        tag = self.recorder.tag = self.fresh("fork")
        self._forked(source.vol.fork(self.fresh("child")), tag, source)

    def _forked(self, child: RWVolume, tag: str, source: Published) -> Handle:
        assert (
            child.index == source.vol.index and child.parent_produced_by == source.vol.produced_by
        )
        point = self.record(self.load_locator(child.produced_by.locator), source.files, None,
                            fork_of=source)  # fmt: skip
        self.did("fork")
        return self.new_handle(child, tag, point)

    def fork_handle(self, i: int) -> None:
        h = pick(self.all_handles, i)
        before = self.begin("fork")
        tag = before[1]
        if not h.mounted:
            if h.vol.index is not None:
                self._forked(h.vol.fork(self.fresh("child")), tag, h.origin)
                return
            try:  # bad input: fork of a never-committed handle
                h.vol.fork(self.fresh("child"))
            except VolumeNotForkable:
                self.did("bad input: VolumeNotForkable")
            else:
                raise AssertionError("fork of a never-committed volume was accepted")
            assert not self.puts_since(before)
            return
        files = h.files()
        child = h.vol.fork(self.fresh("child"))
        point = self.load_locator(h.vol._mount.last_commit.locator)
        assert point.index == h.vol.index == child.index
        p = self._published(h, point)
        assert h.files() == files, "a live fork changed its source"
        self._forked(child, tag, p)

    # ------------------------------------------------------------------ migrations

    @precondition(lambda self: self.published)
    @rule(i=PICK, data=st.data())
    def migrate(self, i: int, data: st.DataObject) -> None:
        current = pick(self.published, i).vol.metadata_store_type
        others = [t for t in self.store_types if t != current]
        if not others or data.draw(st.booleans(), label="same type"):
            self.migrate_to(i, current)
        else:
            self.migrate_to(i, data.draw(st.sampled_from(others), label="target type"))

    def migrate_to(self, i: int, target: str) -> None:
        """Migrate version ``i`` to store type ``target`` (its own type: refused, typed)."""
        source = pick(self.published, i)
        current = source.vol.metadata_store_type
        before = self.begin("migrate")
        if target == current:
            try:  # bad input: migrate to the type it already has
                source.vol.migrate_metadata_store_type(current)
            except VolumeMigrateNoop:
                self.did("bad input: VolumeMigrateNoop")
            else:
                raise AssertionError("a migration to the same store type was accepted")
            assert not self.puts_since(before)
            return
        moved = source.vol.migrate_metadata_store_type(target)
        assert moved.metadata_store_type == target and moved.index.format == target
        assert moved.parent_produced_by == source.vol.produced_by
        for ev in self.recorder.since(before[0]):
            if ev.tag == before[1]:
                assert not _BLOCK_NAME.search(ev.key), f"a migration touched the block {ev.key}"
        assert dump_of(moved, self.objects, self.workdir) == dump_of(
            source.vol, self.objects, self.workdir
        )
        self.did(f"migrate {source.vol.metadata_store_type}->{target}")
        self.record(moved, source.files, None, links=source.links)

    # ------------------------------------------------------------------ read-only mounts and bad input

    @precondition(lambda self: self.published)
    @rule(i=PICK, path=st.sampled_from(PATHS))
    def mount_ro_and_write(self, i: int, path: str) -> None:
        """Read a version in a fresh meta dir; writes are refused (EROFS) and change nothing."""
        v = pick(self.published, i)
        before = self.begin()
        with v.vol.mount(transport="none") as ro:
            fs = ro._mount.pathfs
            assert read_tree(fs) == v.files
            try:
                fs.write_bytes("/" + path.split("/")[0], b"no")
            except OSError as exc:
                assert exc.errno == errno.EROFS, exc
            else:
                raise AssertionError("a write on a read-only mount was accepted")
            assert read_tree(fs) == v.files
        assert not self.puts_since(before)
        self.did("mount_ro")

    def remount_other_store_type(self, i: int) -> None:
        v = pick(self.published, i)
        other = next(
            t for t in ("redis", "sqlite", *self.store_types) if t != v.vol.metadata_store_type
        )
        before = self.begin()
        lying = v.vol.model_copy(update={"metadata_store_type": other})
        for attempt in (
            lambda: lying.mount(transport="none"),
            lambda: lying.as_rw().mount(transport="none"),
        ):
            try:
                attempt()
            except (VolumeStoreMismatch, PluginNotFound):
                self.did("bad input: (VolumeStoreMismatch, PluginNotFound)")
            else:
                raise AssertionError(f"a {v.vol.metadata_store_type} index mounted as {other}")
        assert not self.puts_since(before)

    @rule(kind=st.sampled_from(BAD_INPUTS), i=PICK, where=st.floats(0, 1), flag=st.booleans())
    def bad_input(self, kind: str, i: int, where: float, flag: bool) -> None:
        """What users get wrong: each raises its typed error and changes nothing."""
        if kind == "mount twice" and self.mounted():
            self.mount_twice(i)
        elif kind == "commit unmounted" and self.unmounted():
            self.refused_unmounted(i, "finalize" if flag else "commit")
        elif kind == "other store type" and self.published:
            self.remount_other_store_type(i)
        elif kind == "corrupted index" and self.published:
            self.corrupted_index(i, where, flag)

    def corrupted_index(self, i: int, where: float, truncate: bool) -> None:
        """A document naming a damaged copy of an index: mount and fork refuse it, typed."""
        v = pick(self.published, i)
        data = bytearray(self.objects.get(locations.key_of(self.objects, v.vol.index.path)))
        if truncate:
            data = data[: int(len(data) * where * 0.9)]
            digest = None
        else:
            data[min(int(len(data) * where), len(data) - 1)] ^= 0xFF
            digest = v.vol.index.hash
        # (a bucket shared with earlier examples may hold a copy under the same count)
        copy = f"{self.fresh('c')}-{os.urandom(4).hex()}"
        key = f"{self.doc_key(v.vol).split('/_volume/')[0]}/_volume/damaged/{copy}/{v.vol.index.name}"
        self.objects.put(key, bytes(data), if_absent=True)
        self.check_events()
        damaged = v.vol.model_copy(
            update={
                "index": File(
                    path=locations.key_uri(self.objects, key),
                    name=v.vol.index.name,
                    format=v.vol.index.format,
                    hash=digest,
                )
            }
        )
        before = self.begin()
        for attempt in (
            lambda: damaged.mount(transport="none"),
            lambda: damaged.fork(self.fresh("bad")),
        ):
            try:
                attempt()
            except VolumeIndexCorrupt:
                self.did("bad input: VolumeIndexCorrupt")
            else:
                raise AssertionError("a damaged index was accepted")
        assert not self.puts_since(before)
