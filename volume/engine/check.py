"""An fsck of a volume's namespace: recompute what the records imply and report disagreements.

Everything is derived from the records themselves (inodes, entries, chunks, slice references,
counters, dir stats) through :class:`~volume.stores.MetaTxn` primitives only, so the check runs on
any metadata store. The rules are those of JuiceFS 1.x (``juicefs-format.md`` sections 3-5).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field

from ..juicefs import (
    CHUNK_SIZE,
    COUNTER_NEXT_CHUNK,
    COUNTER_NEXT_INODE,
    COUNTER_TOTAL_INODES,
    COUNTER_USED_SPACE,
    DIR_LENGTH,
    MIN_INTERNAL_INODE,
    ROOT_INODE,
    TRASH_INODE,
    TYPE_DIRECTORY,
    TYPE_FILE,
    TYPE_NAMES,
    TYPE_SYMLINK,
    Attr,
    align4k,
    unpack_slices,
)
from ..pins import SLICE_PIN
from ..stores import MetaStore, MetaTxn
from .posix import MAX_NAME


def check_metadata(meta: MetaStore, open_inodes: Collection[int] = frozenset()) -> list[str]:
    """Problems found in the namespace of ``meta`` (an empty list: consistent).

    An inode with no link left is not leaked when it is recorded as sustained (held open by a
    session after its last link went; the next writable mount deletes it). ``open_inodes`` are
    the inodes a live engine's handles hold: those must be recorded so when their last link is
    gone. The check runs in one read transaction.
    """
    with meta.transaction(write=False) as tx:
        return _Check(tx, frozenset(open_inodes)).run()


def _space(attr: Attr) -> int:
    """Space accounted for a node: its aligned length for files, 4096 for every other type."""
    return align4k(attr.length if attr.type == TYPE_FILE else 0)


@dataclass
class _Check:
    """One run of the check: the records loaded once, the problems found so far."""

    tx: MetaTxn
    open_inodes: frozenset[int]
    problems: list[str] = field(default_factory=list)
    sustained: set[int] = field(default_factory=set)
    attrs: dict[int, Attr] = field(default_factory=dict)
    # parent -> [(name, inode, type)] for every inode that has entries
    children: dict[int, list[tuple[bytes, int, int]]] = field(default_factory=dict)
    # inode -> [(parent, name)] of every entry naming it
    names: defaultdict[int, list[tuple[int, bytes]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    paths: dict[int, str] = field(default_factory=dict)

    def run(self) -> list[str]:
        """Every check, in an order where later ones can name paths found by earlier ones."""
        self.attrs = dict(self.tx.iter_attrs())
        root = self.attrs.get(ROOT_INODE)
        if root is None or root.type != TYPE_DIRECTORY:
            return ["the root inode 1 is missing or not a directory"]
        self._load_entries()
        sustained = self.tx.sustained()
        self.sustained = {ino for _session, ino in sustained}
        self._check_reachable()
        self._check_sustained(sustained)
        for ino, attr in self.attrs.items():
            self._check_inode(ino, attr)
        slice_ids = self._check_chunks()
        self._check_counters(slice_ids)
        return self.problems

    # ------------------------------------------------------------------ helpers

    def _report(self, message: str) -> None:
        self.problems.append(message)

    def _who(self, ino: int) -> str:
        attr = self.attrs.get(ino)
        kind = TYPE_NAMES.get(attr.type, f"type {attr.type}") if attr else "missing"
        path = self.paths.get(ino)
        return f"inode {ino} ({kind}{', ' + path if path else ''})"

    def _roots(self) -> list[int]:
        return [ino for ino in (ROOT_INODE, TRASH_INODE) if ino in self.attrs]

    # ------------------------------------------------------------------ entries and reachability

    def _load_entries(self) -> None:
        for parent in self.attrs:
            entries = self.tx.list_entries(parent)
            if not entries:
                continue
            self.children[parent] = entries
            if self.attrs[parent].type != TYPE_DIRECTORY:
                self._report(f"{self._who(parent)} is not a directory but has entries")
            for name, ino, type_ in entries:
                self.names[ino].append((parent, name))
                if (
                    name in (b"", b".", b"..")
                    or len(name) > MAX_NAME
                    or b"/" in name
                    or b"\0" in name
                ):
                    self._report(f"entry {name!r} in directory {parent} is not a valid name")
                child = self.attrs.get(ino)
                if child is None:
                    self._report(f"entry {name!r} in directory {parent} names missing inode {ino}")
                elif child.type != type_:
                    self._report(
                        f"entry {name!r} in directory {parent} has type {type_}, but inode {ino} "
                        f"has type {child.type}"
                    )

    def _check_reachable(self) -> None:
        pending = [(ino, "/" if ino == ROOT_INODE else "/.trash") for ino in self._roots()]
        for ino, path in pending:
            self.paths[ino] = path
        while pending:
            parent, path = pending.pop()
            for name, ino, _type in self.children.get(parent, ()):
                if ino not in self.attrs or ino in self.paths:
                    continue  # missing inodes are reported already; links are reached once
                child_path = f"{path.rstrip('/')}/{name.decode('utf-8', 'backslashreplace')}"
                self.paths[ino] = child_path
                if self.attrs[ino].type == TYPE_DIRECTORY:
                    pending.append((ino, child_path))
        for ino, attr in self.attrs.items():
            if ino in self.paths:
                continue
            if attr.nlink > 0 or self.names[ino]:
                self._report(f"{self._who(ino)} is not reachable from the root")
            elif ino in self.open_inodes and ino not in self.sustained:
                self._report(f"{self._who(ino)} is open with no link left, but not sustained")
            elif ino not in self.sustained:
                self._report(f"{self._who(ino)} has no link and is not sustained: it leaked")

    def _check_sustained(self, sustained: list[tuple[int, int]]) -> None:
        for session, ino in sustained:
            attr = self.attrs.get(ino)
            if attr is None:
                self._report(f"session {session} sustains inode {ino}, which does not exist")
            elif attr.nlink > 0 or self.names[ino]:
                self._report(f"session {session} sustains {self._who(ino)}, which has links")

    # ------------------------------------------------------------------ per inode

    def _check_inode(self, ino: int, attr: Attr) -> None:
        names = self.names[ino]
        if attr.type == TYPE_DIRECTORY:
            self._check_directory(ino, attr, names)
        else:
            if attr.nlink != len(names):
                self._report(f"{self._who(ino)} has nlink {attr.nlink}, but {len(names)} entries")
            if len(names) > 1 and attr.parent != 0:
                self._report(
                    f"{self._who(ino)} has {len(names)} links, so its parent must be 0, "
                    f"not {attr.parent}"
                )
            elif len(names) == 1 and attr.parent not in (0, names[0][0]):
                self._report(
                    f"{self._who(ino)} has parent {attr.parent}, but its entry is in directory "
                    f"{names[0][0]}"
                )
            if self.tx.get_dir_stats(ino) is not None:
                self._report(f"{self._who(ino)} is not a directory but has a dir_stats row")
        target = self.tx.get_symlink(ino)
        if attr.type == TYPE_SYMLINK:
            if target is None:
                self._report(f"{self._who(ino)} has no target row")
            elif attr.length != len(target):
                self._report(
                    f"{self._who(ino)} has length {attr.length}, but its target has "
                    f"{len(target)} bytes"
                )
        elif target is not None:
            self._report(f"{self._who(ino)} is not a symlink but has a target row")
        elif attr.type != TYPE_FILE and attr.type != TYPE_DIRECTORY and attr.length != 0:
            self._report(f"{self._who(ino)} has length {attr.length}, expected 0")

    def _check_directory(self, ino: int, attr: Attr, names: list[tuple[int, bytes]]) -> None:
        entries = self.children.get(ino, [])
        child_dirs = sum(1 for _n, _i, t in entries if t == TYPE_DIRECTORY)
        if ino == TRASH_INODE:
            expected_nlink = 2
        elif not names and ino in self.sustained and ino != ROOT_INODE:
            expected_nlink = 0  # removed while open: it lives on, empty, until released
        else:
            expected_nlink = 2 + child_dirs
        if attr.nlink != expected_nlink:
            self._report(
                f"{self._who(ino)} has nlink {attr.nlink}, expected {expected_nlink} "
                f"(2 + {child_dirs} subdirectories)"
            )
        if attr.length != DIR_LENGTH:
            self._report(f"{self._who(ino)} has length {attr.length}, expected {DIR_LENGTH}")
        if ino in (ROOT_INODE, TRASH_INODE):
            if attr.parent != ROOT_INODE:
                self._report(f"{self._who(ino)} has parent {attr.parent}, expected 1")
            if names:
                self._report(f"{self._who(ino)} is named by {len(names)} entries, expected none")
        elif len(names) > 1:
            self._report(f"{self._who(ino)} is named by {len(names)} entries: {names}")
        elif names and attr.parent != names[0][0]:
            self._report(
                f"{self._who(ino)} has parent {attr.parent}, but its entry is in directory "
                f"{names[0][0]}"
            )
        stats = self.tx.get_dir_stats(ino)
        if stats is not None:
            length = space = 0
            for _name, child, _type in entries:
                child_attr = self.attrs.get(child)
                if child_attr is not None:
                    length += child_attr.length if child_attr.type == TYPE_FILE else 0
                    space += _space(child_attr)
            expected = (length, space, len(entries))
            if tuple(stats) != expected:
                self._report(
                    f"{self._who(ino)} has dir stats (length, space, inodes) {tuple(stats)}, "
                    f"expected {expected}"
                )

    # ------------------------------------------------------------------ chunks and slices

    def _check_chunks(self) -> set[int]:
        """Check chunk rows and slice references; returns every slice id seen."""
        records_per_id: Counter[int] = Counter()
        sizes_per_id: defaultdict[int, set[int]] = defaultdict(set)
        for ino, indx, blob in self.tx.iter_chunks():
            where = f"chunk {indx} of {self._who(ino)}"
            attr = self.attrs.get(ino)
            if attr is None or attr.type != TYPE_FILE:
                self._report(f"{where} exists, but the inode is not a regular file")
            if not blob:
                self._report(f"{where} is an empty row (a chunk without records has no row)")
            try:
                records = unpack_slices(blob)
            except ValueError as exc:
                self._report(f"{where}: {exc}")
                continue
            for rec in records:
                if rec.pos + rec.len > CHUNK_SIZE:
                    self._report(f"{where}: record {rec} runs past the end of the chunk")
                if rec.id:
                    records_per_id[rec.id] += 1
                    sizes_per_id[rec.id].add(rec.size)
                    if rec.off + rec.len > rec.size:
                        self._report(f"{where}: record {rec} reads past the end of its slice")
        rows: defaultdict[int, list[tuple[int, int]]] = defaultdict(list)
        for slice_id, size, refs in self.tx.slice_refs():
            if slice_id:
                rows[slice_id].append((size, refs))
        for slice_id, count in records_per_id.items():
            sizes = sizes_per_id[slice_id]
            if len(sizes) > 1:
                self._report(f"slice {slice_id} is named with different sizes {sorted(sizes)}")
            refs = {size: r for size, r in rows.get(slice_id, [])}
            for size in sizes:
                if size not in refs:
                    self._report(
                        f"slice {slice_id} (size {size}) is named by {count} records but has no "
                        f"jfs_chunk_ref row"
                    )
                elif refs[size] not in (count, count + SLICE_PIN):  # pinned: volume.pins
                    self._report(
                        f"slice {slice_id} (size {size}) has refs {refs[size]}, but {count} "
                        f"records name it"
                    )
        for slice_id, slice_rows in rows.items():
            for size, refs in slice_rows:
                if refs not in (0, SLICE_PIN) and size not in sizes_per_id.get(slice_id, ()):
                    self._report(
                        f"slice {slice_id} (size {size}) has refs {refs}, but no record names it"
                    )
        return set(records_per_id) | set(rows)

    # ------------------------------------------------------------------ counters

    def _check_counters(self, slice_ids: set[int]) -> None:
        counted = [a for ino, a in self.attrs.items() if ino not in (ROOT_INODE, TRASH_INODE)]
        expected = {
            COUNTER_USED_SPACE: sum(_space(a) for a in counted),
            COUNTER_TOTAL_INODES: len(counted),
        }
        for name, value in expected.items():
            actual = self.tx.get_counter(name)
            if actual != value:
                self._report(f"counter {name} is {actual}, but the inodes add up to {value}")
        highest_inode = max(ino for ino in self.attrs if ino < MIN_INTERNAL_INODE)
        next_inode = self.tx.get_counter(COUNTER_NEXT_INODE)
        if next_inode <= highest_inode:
            self._report(
                f"counter {COUNTER_NEXT_INODE} is {next_inode}, but inode {highest_inode} exists"
            )
        next_chunk = self.tx.get_counter(COUNTER_NEXT_CHUNK)
        if slice_ids and next_chunk <= max(slice_ids):
            self._report(
                f"counter {COUNTER_NEXT_CHUNK} is {next_chunk}, but slice {max(slice_ids)} exists"
            )
