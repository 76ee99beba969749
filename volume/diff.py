"""What changed between two versions, from their two indexes alone (no block is read).

Each index is read once: every inode's attributes, every chunk's slice records and the directory
entries reachable from the root. A regular file is *modified* when its size or its slice list
changed (a rewrite with identical bytes still counts: blocks are never read). Within one volume
family (same Format UUID) inode numbers are shared, so a path that disappeared while its inode
appeared elsewhere is a *rename* (a moved directory is reported once, not per descendant).
Across families there is no shared identity: trees are compared path by path, files by size and
modification time.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .juicefs import ROOT_INODE, TYPE_DIRECTORY, TYPE_FILE, TYPE_NAMES, TYPE_SYMLINK

if TYPE_CHECKING:
    from .model import ROVolume
    from .stores import MetaStore

__all__ = ["Change", "Diff", "Node", "diff_indexes", "diff_versions", "read_tree"]


@dataclass(frozen=True, slots=True)
class Node:
    """One name in a tree."""

    ino: int
    type: str  # "file", "directory", "symlink", ...
    size: int
    mtime_ns: int
    content: bytes  # the slice records (files) or the target (symlinks)


@dataclass(frozen=True)
class Change:
    """One difference: ``status`` is added, removed, modified or renamed."""

    status: str
    path: str
    type: str
    old_path: str | None = None
    old_size: int | None = None
    new_size: int | None = None
    modified: bool = False  # a rename whose content changed too

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Diff:
    """The changes from ``a`` to ``b``, sorted by path."""

    same_family: bool
    changes: list[Change] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("added", "removed", "modified", "renamed")}
        for c in self.changes:
            out[c.status] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "same_family": self.same_family,
            "counts": self.counts(),
            "changes": [c.as_dict() for c in self.changes],
        }


def read_tree(meta: "MetaStore") -> tuple[str, dict[str, Node]]:
    """``(Format UUID, {path: Node})`` of every name reachable from the root."""
    uuid = meta.load_format().UUID
    with meta.transaction() as tx:
        attrs = dict(tx.iter_attrs())
        chunks: dict[int, Any] = {}
        for ino, indx, blob in tx.iter_chunks():
            seen = chunks.get(ino)
            if seen is None:
                chunks[ino] = (indx, blob)
            elif isinstance(seen, list):
                seen.append((indx, blob))
            else:
                chunks[ino] = [seen, (indx, blob)]
        nodes: dict[str, Node] = {}
        pending = [(ROOT_INODE, "")]
        while pending:
            parent, path = pending.pop()
            for name, ino, _type in tx.list_entries(parent):
                attr = attrs.get(ino)
                if attr is None:
                    continue  # a dangling entry: fsck reports it
                child = f"{path}/{name.decode('utf-8', 'surrogateescape')}"
                kind = attr.type
                if kind == TYPE_FILE:
                    records = chunks.get(ino)
                    if records is None:
                        content = b""
                    elif isinstance(records, list):
                        content = b"".join(i.to_bytes(8, "big") + b for i, b in sorted(records))
                    else:
                        content = records[0].to_bytes(8, "big") + records[1]
                    nodes[child] = Node(ino, "file", attr.length, attr.mtime_ns, content)
                elif kind == TYPE_DIRECTORY:
                    nodes[child] = Node(ino, "directory", 0, attr.mtime_ns, b"")
                    pending.append((ino, child))
                else:
                    content = tx.get_symlink(ino) or b"" if kind == TYPE_SYMLINK else b""
                    size = attr.length if kind == TYPE_SYMLINK else 0
                    name_ = TYPE_NAMES.get(kind, str(kind))
                    nodes[child] = Node(ino, name_, size, attr.mtime_ns, content)
    return uuid, nodes


def _changed(a: Node, b: Node, same_family: bool) -> bool:
    if a.type != b.type or a.size != b.size:
        return True
    if a.type == "file":
        return a.content != b.content if same_family else a.mtime_ns != b.mtime_ns
    return a.content != b.content


def diff_indexes(meta_a: "MetaStore", meta_b: "MetaStore") -> Diff:
    """The changes from the tree of ``meta_a`` to the tree of ``meta_b``."""
    uuid_a, a = read_tree(meta_a)
    uuid_b, b = read_tree(meta_b)
    same = uuid_a == uuid_b
    out = Diff(same)
    for path in a.keys() & b.keys():
        if _changed(a[path], b[path], same):
            na, nb = a[path], b[path]
            out.changes.append(Change("modified", path, nb.type, None, na.size, nb.size))
    removed = sorted(a.keys() - b.keys())
    added = sorted(b.keys() - a.keys())
    renames: dict[str, str] = {}
    if same:
        gone: defaultdict[int, list[str]] = defaultdict(list)
        for path in removed:
            gone[a[path].ino].append(path)
        for path in added:
            olds = gone.get(b[path].ino)
            if olds:
                renames[olds.pop(0)] = path
    for old, new in renames.items():
        na, nb = a[old], b[new]
        changed = _changed(na, nb, same)
        parent_old, parent_new = posixpath.split(old)[0], posixpath.split(new)[0]
        implied = renames.get(parent_old) == parent_new and posixpath.basename(
            old
        ) == posixpath.basename(new)
        if not implied or changed:
            out.changes.append(Change("renamed", new, nb.type, old, na.size, nb.size, changed))
    moved_from, moved_to = set(renames), set(renames.values())
    for path in removed:
        if path not in moved_from:
            out.changes.append(Change("removed", path, a[path].type, None, a[path].size, None))
    for path in added:
        if path not in moved_to:
            out.changes.append(Change("added", path, b[path].type, None, None, b[path].size))
    out.changes.sort(key=lambda c: (c.path, c.status))
    return out


def diff_versions(a: "ROVolume", b: "ROVolume") -> Diff:
    """The changes from version ``a`` to version ``b``: their indexes are downloaded, no block."""
    from .fsspec import open_index

    with open_index(a) as (meta_a, _), open_index(b) as (meta_b, _):
        return diff_indexes(meta_a, meta_b)
