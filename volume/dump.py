"""Engine-neutral dump and load of a namespace in the JuiceFS 1.x JSON dump format.

A dump holds everything a metadata store keeps about a volume version except data blocks, so
``dump`` on one store type and ``load`` into another re-hosts a version (``migrate``) without
touching the object store. The text is what ``juicefs dump`` writes, byte for byte, and ``load``
reads what ``juicefs dump`` writes. Only :class:`~volume.stores.MetaTxn` primitives are used, so
both work for every store plugin. The normative description is ``spec/dump-format.md``.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from json.decoder import scanstring
from pathlib import Path
from typing import IO, Any, NoReturn

from .errors import MetaStoreError, VolumeIndexCorrupt, VolumeMigrateError
from .juicefs import (
    COUNTER_NEXT_CHUNK,
    COUNTER_NEXT_INODE,
    COUNTER_NEXT_SESSION,
    COUNTER_NEXT_TRASH,
    COUNTER_TOTAL_INODES,
    COUNTER_USED_SPACE,
    DIR_LENGTH,
    ROOT_INODE,
    TRASH_INODE,
    TYPE_BY_NAME,
    TYPE_DIRECTORY,
    TYPE_FILE,
    TYPE_NAMES,
    TYPE_SYMLINK,
    Attr,
    Format,
    SliceRecord,
    go_string,
    align4k,
    unpack_slices,
)
from .stores import MetaStore, MetaTxn

__all__ = ["DumpStats", "LoadStats", "dump", "escape", "load", "migrate", "unescape"]

_INDENT = "  "
#: what ``juicefs dump`` writes for the trash when the volume has no trash inode
_TRASH_PLACEHOLDER = Attr(type=TYPE_DIRECTORY, mode=0, nlink=2)
_SECRET_KEYS = ("SecretKey", "SessionToken")
_NS = 1_000_000_000
_MAX_INODE = (1 << 63) - 1
_LIST_PAGE = 1024  # directory entries read per store call: bounds memory on huge directories
_FLUSH_CHARS = 1 << 16  # output is written in pieces of about this size
_PROGRESS_EVERY = 4096  # entries between two progress calls
_LOAD_BATCH = 4096  # record operations per write transaction during a load

Progress = Callable[[int], None]


@dataclass(frozen=True)
class DumpStats:
    """What :func:`dump` wrote: distinct inodes, directory entries (names) and output bytes."""

    inodes: int
    entries: int
    bytes: int


@dataclass(frozen=True)
class LoadStats:
    """What :func:`load` created: distinct inodes, directory entries and slice records."""

    inodes: int
    entries: int
    slices: int


# =========================================================================== name escaping

# bytes that may need escaping; a name without any of them is printable ASCII and is kept as is
_MAYBE_ESCAPED = re.compile(rb'[\x00-\x20%"\\\x80-\xff]')
# after decoding with surrogateescape: controls and space, the three specials, undecodable bytes
# (lone surrogates) and U+FFFD
_ESCAPED = re.compile('[\x00-\x20%"\\\\\udc80-\udcff\ufffd]')
_PERCENT_HEX = re.compile(rb"%([0-9A-F]{2})")


def _percent_encode(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode("utf-8", "surrogateescape"))


def escape(raw: bytes) -> str:
    """A name, symlink target or xattr value as the dump writes it.

    Every byte of invalid UTF-8, every code point up to 32 (controls and space), ``%``, ``"``
    and ``\\`` become ``%XX`` (upper-case hex); everything else stays raw UTF-8. A valid U+FFFD
    becomes ``%EF%BF%BD`` (JuiceFS writes only ``%EF``, which loses the character).
    """
    if not _MAYBE_ESCAPED.search(raw):
        return raw.decode("ascii")
    return _ESCAPED.sub(_percent_encode, raw.decode("utf-8", "surrogateescape"))


def unescape(text: str) -> bytes:
    """The bytes an escaped string stands for: ``%`` plus two upper-case hex digits is a byte."""
    raw = text.encode("utf-8")
    if b"%" not in raw:
        return raw
    return _PERCENT_HEX.sub(lambda m: bytes.fromhex(m.group(1).decode("ascii")), raw)


# =========================================================================== dump


def dump(
    meta: MetaStore,
    out: IO[bytes] | IO[str],
    *,
    keep_secret_key: bool = False,
    progress: Progress | None = None,
) -> DumpStats:
    """Write the namespace of ``meta`` to ``out`` as ``juicefs dump`` writes it.

    ``out`` is a text stream or a binary one (UTF-8 is written; pass a ``gzip`` file object for
    ``.gz``). The store is read in one read transaction and the tree is streamed: memory stays
    bounded by the tree depth, not its size. ``SecretKey`` and ``SessionToken`` are written as
    ``"removed"`` unless ``keep_secret_key``. ``progress`` is called now and then with the number
    of entries written so far. Raises :class:`~volume.errors.VolumeIndexCorrupt` when the
    records are inconsistent (an entry naming a missing inode, a directory reached twice, a bad
    chunk record) and :class:`~volume.errors.VolumeMigrateError` when an inode has POSIX ACLs,
    which this dump cannot carry.
    """
    setting = meta.load_format().as_dict()
    if not keep_secret_key:
        for key in _SECRET_KEYS:
            if setting.get(key):
                setting[key] = "removed"
    sink = _Sink(out)
    with meta.transaction(write=False) as tx:
        header = {
            "Setting": setting,
            "Counters": {
                "usedSpace": tx.get_counter(COUNTER_USED_SPACE),
                "usedInodes": tx.get_counter(COUNTER_TOTAL_INODES),
                "nextInodes": tx.get_counter(COUNTER_NEXT_INODE),
                "nextChunk": tx.get_counter(COUNTER_NEXT_CHUNK),
                "nextSession": tx.get_counter(COUNTER_NEXT_SESSION),
                "nextTrash": tx.get_counter(COUNTER_NEXT_TRASH),
            },
            "Sustained": _sustained(tx),
            "DelFiles": [],
        }
        # MarshalIndent of the header object, whose closing "\n}" gives way to the streamed tree
        sink.write(_indented(header)[:-2] + ",")
        writer = _TreeWriter(tx, sink, progress)
        root = tx.get_attr(ROOT_INODE)
        if root is None or root.type != TYPE_DIRECTORY:
            raise VolumeIndexCorrupt("the store has no root directory (inode 1); nothing to dump")
        writer.directory_tree('"FSTree"', ROOT_INODE, root)
        sink.write(",")
        trash = tx.get_attr(TRASH_INODE)
        writer.directory_tree('"Trash"', TRASH_INODE, trash or _TRASH_PLACEHOLDER)
        sink.write("\n}\n")
        sink.flush()
    if progress is not None:
        progress(writer.entries)
    return DumpStats(writer.inodes, writer.entries, sink.bytes)


class _Sink:
    """Buffers the output text and writes it as str or UTF-8 bytes, counting bytes."""

    def __init__(self, out: IO[bytes] | IO[str]):
        self._out = out
        self._text = isinstance(out, io.TextIOBase)
        self._parts: list[str] = []
        self._chars = 0
        self.bytes = 0

    def write(self, text: str) -> None:
        self._parts.append(text)
        self._chars += len(text)
        if self._chars >= _FLUSH_CHARS:
            self.flush()

    def flush(self) -> None:
        text = "".join(self._parts)
        self._parts.clear()
        self._chars = 0
        data = text.encode("utf-8")
        self.bytes += len(data)
        self._out.write(text if self._text else data)  # type: ignore[arg-type]


@dataclass
class _Listing:
    """One open directory of the walk: a page of its entries and where the next page starts."""

    inode: int
    depth: int
    page: list[tuple[bytes, int, int]]
    at: int = 0
    written: int = 0

    def next_entry(self, tx: MetaTxn) -> tuple[bytes, int] | None:
        if self.at == len(self.page):
            if len(self.page) < _LIST_PAGE:
                return None
            self.page = tx.list_entries(self.inode, after=self.page[-1][0], limit=_LIST_PAGE)
            self.at = 0
            if not self.page:
                return None
        name, inode, _type = self.page[self.at]
        self.at += 1
        return name, inode


@dataclass
class _TreeWriter:
    """Writes entries as ``juicefs dump`` does: the attr, symlink, xattrs and chunks of an entry
    are compact JSON on one line each, indented two spaces per level."""

    tx: MetaTxn
    sink: _Sink
    progress: Progress | None
    inodes: int = 0
    entries: int = 0
    _dirs_seen: set[int] = field(default_factory=set)
    _links_seen: set[int] = field(default_factory=set)

    def directory_tree(self, key: str, inode: int, attr: Attr) -> None:
        """Write the directory entry ``key`` and everything below it, depth first, without
        recursion (trees may be deeper than Python's stack)."""
        stack = [self._open_directory(key, inode, attr, 1)]
        while stack:
            listing = stack[-1]
            item = listing.next_entry(self.tx)
            if item is None:
                self.sink.write(f"\n{_INDENT * (listing.depth + 1)}}}\n{_INDENT * listing.depth}}}")
                stack.pop()
                continue
            name, child = item
            if listing.written:
                self.sink.write(",")
            listing.written += 1
            self._count_entry()
            child_attr = self.tx.get_attr(child)
            if child_attr is None:
                raise VolumeIndexCorrupt(
                    f"entry {name!r} of directory {listing.inode} names inode {child}, which "
                    f"does not exist; repair the store (fsck) before dumping it"
                )
            child_key = f'"{escape(name)}"'
            if child_attr.type == TYPE_DIRECTORY:
                stack.append(self._open_directory(child_key, child, child_attr, listing.depth + 2))
            else:
                self._leaf(child_key, child, child_attr, listing.depth + 2)

    def _count_entry(self) -> None:
        self.entries += 1
        if self.progress is not None and self.entries % _PROGRESS_EVERY == 0:
            self.progress(self.entries)

    def _open_directory(self, key: str, inode: int, attr: Attr, depth: int) -> _Listing:
        if inode in self._dirs_seen:
            raise VolumeIndexCorrupt(
                f"directory inode {inode} is reached twice in the tree; repair the store (fsck) "
                f"before dumping it"
            )
        self._dirs_seen.add(inode)
        if attr is not _TRASH_PLACEHOLDER:
            self.inodes += 1
        self._head(key, inode, attr, depth)
        self.sink.write(f',\n{_INDENT * (depth + 1)}"entries": {{')
        page = self.tx.list_entries(inode, limit=_LIST_PAGE)
        return _Listing(inode, depth, page)

    def _leaf(self, key: str, inode: int, attr: Attr, depth: int) -> None:
        if attr.nlink <= 1 or inode not in self._links_seen:
            self.inodes += 1
            if attr.nlink > 1:
                self._links_seen.add(inode)
        self._head(key, inode, attr, depth)
        field_indent = _INDENT * (depth + 1)
        indexes = self.tx.chunk_indexes(inode) if attr.type == TYPE_FILE else []
        chunks = [self._chunk_json(inode, indx) for indx in indexes]
        if len(chunks) == 1:
            self.sink.write(f',\n{field_indent}"chunks": [{chunks[0]}]')
        elif chunks:
            chunk_indent = field_indent + _INDENT
            body = ",".join(f"\n{chunk_indent}{c}" for c in chunks)
            self.sink.write(f',\n{field_indent}"chunks": [{body}\n{field_indent}]')
        self.sink.write(f"\n{_INDENT * depth}}}")

    def _head(self, key: str, inode: int, attr: Attr, depth: int) -> None:
        """The entry's opening line, attr, symlink and xattrs (what every type has)."""
        if attr.access_acl or attr.default_acl:
            raise VolumeMigrateError(
                f"inode {inode} has POSIX ACLs, which the metadata store interface cannot read, "
                f"so a dump would lose them; remove the ACLs (setfacl -b) first"
            )
        field_indent = _INDENT * (depth + 1)
        parts = [f'\n{_INDENT * depth}{key}: {{\n{field_indent}"attr": {_attr_json(inode, attr)}']
        if attr.type == TYPE_SYMLINK:
            target = self.tx.get_symlink(inode)
            if target:
                parts.append(f',\n{field_indent}"symlink": "{escape(target)}"')
        xattrs = self.tx.list_xattrs(inode)
        if xattrs:
            items = ",".join(
                f'{{"name":{go_string(name)},"value":{go_string(escape(value))}}}'
                for name, value in xattrs
            )
            parts.append(f',\n{field_indent}"xattrs": [{items}]')
        self.sink.write("".join(parts))

    def _chunk_json(self, inode: int, indx: int) -> str:
        try:
            records = unpack_slices(self.tx.read_chunk(inode, indx))
        except ValueError as exc:
            raise VolumeIndexCorrupt(f"chunk {indx} of inode {inode} is corrupt: {exc}") from exc
        slices = ",".join(_slice_json(r) for r in records)
        return f'{{"index":{indx},"slices":[{slices}]}}'


def _slice_json(rec: SliceRecord) -> str:
    pos = f',"pos":{rec.pos}' if rec.pos else ""
    off = f',"off":{rec.off}' if rec.off else ""
    return f'{{"id":{rec.id}{pos},"size":{rec.size}{off},"len":{rec.len}}}'


def _attr_json(inode: int, attr: Attr) -> str:
    """The dump's ``attr`` object: times in seconds plus a nanosecond remainder, ``length`` for
    regular files only, zero ``flags``/``*nsec``/``rdev``/``tier`` left out."""
    type_name = TYPE_NAMES.get(attr.type)
    if type_name is None:
        raise VolumeIndexCorrupt(f"inode {inode} has unknown type {attr.type}")
    atime, atime_ns = divmod(attr.atime_ns, _NS)
    mtime, mtime_ns = divmod(attr.mtime_ns, _NS)
    ctime, ctime_ns = divmod(attr.ctime_ns, _NS)
    parts = [f'{{"inode":{inode}']
    if attr.flags:
        parts.append(f',"flags":{attr.flags}')
    parts.append(
        f',"type":"{type_name}","mode":{attr.mode},"uid":{attr.uid},"gid":{attr.gid},'
        f'"atime":{atime},"mtime":{mtime},"ctime":{ctime}'
    )
    if atime_ns:
        parts.append(f',"atimensec":{atime_ns}')
    if mtime_ns:
        parts.append(f',"mtimensec":{mtime_ns}')
    if ctime_ns:
        parts.append(f',"ctimensec":{ctime_ns}')
    length = attr.length if attr.type == TYPE_FILE else 0
    parts.append(f',"nlink":{attr.nlink},"length":{length}')
    if attr.rdev:
        parts.append(f',"rdev":{attr.rdev}')
    if attr.tier:
        parts.append(f',"tier":{attr.tier}')
    parts.append("}")
    return "".join(parts)


def _sustained(tx: MetaTxn) -> list[dict[str, Any]]:
    """``[{sid, inodes}]`` by session (the client's order of sessions is its map's: random)."""
    sessions: dict[int, list[int]] = {}
    for session, ino in tx.sustained():
        sessions.setdefault(session, []).append(ino)
    return [{"sid": sid, "inodes": inodes} for sid, inodes in sessions.items()]


def _indented(value: Any, depth: int = 0) -> str:
    """Go's ``json.MarshalIndent(value, "", "  ")`` for the header's objects, lists and scalars."""
    inner = _INDENT * (depth + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        members = ",\n".join(
            f"{inner}{go_string(str(k))}: {_indented(v, depth + 1)}" for k, v in value.items()
        )
        return f"{{\n{members}\n{_INDENT * depth}}}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        items = ",\n".join(f"{inner}{_indented(v, depth + 1)}" for v in value)
        return f"[\n{items}\n{_INDENT * depth}]"
    if isinstance(value, str):
        return go_string(value)
    return json.dumps(value)


# =========================================================================== load


def load(
    meta: MetaStore, src: IO[bytes] | IO[str], *, progress: Progress | None = None
) -> LoadStats:
    """Create in the empty store ``meta`` the namespace of the dump read from ``src``.

    The whole document is read and checked before the store is touched, so a malformed dump
    (:class:`~volume.errors.VolumeIndexCorrupt`, naming what is wrong) leaves the store as it
    was. Limitation: the text and the decoded tree are held in memory while loading (about
    1.3 KB per entry). Trees of any depth load: the tree is parsed without recursion.

    As ``juicefs load`` does, the dump's inode numbers are kept (the root is forced to 1) and
    what the tree implies is recomputed: nlink (directories 2 + subdirectories; files the
    number of paths naming them, with parent 0 when more than one), directory length 4096,
    symlink length, parents, one dir-stats row per directory, slice reference counts and the
    usedSpace/totalInodes counters. ``nextInode``, ``nextChunk`` and ``nextTrash`` are
    recomputed from the ids in use but never set below the dumped values, because blocks of
    slice ids the dump no longer names may still be used by other versions sharing the bucket.
    ``Sustained`` (whose inodes are in no tree), ``DelFiles`` and quotas are not loaded. Writes
    are committed in batches: after a store failure part-way, discard the target.

    Raises :class:`~volume.errors.VolumeMigrateError` when the store is already formatted or
    not empty, or when the dump holds POSIX ACLs (which the store interface cannot hold).
    """
    if meta.is_formatted():
        raise VolumeMigrateError(
            f"the target store {meta!r} is already formatted; a load needs an empty, unformatted "
            f"store: use a new meta directory"
        )
    reader = _DumpReader(_read_text(src))
    header, trees = reader.document()
    for key in ("Setting", "Counters"):
        if not isinstance(header.get(key), dict):
            problem = "missing" if key not in header else "not a JSON object"
            raise VolumeIndexCorrupt(f"the dump's {key!r} is {problem}; this is not a volume dump")
    if "FSTree" not in trees:
        raise VolumeIndexCorrupt("the dump's 'FSTree' is missing; this is not a volume dump")
    fmt = _parse_format(header["Setting"])
    next_session = _dumped_counter(header, "nextSession")
    floors = {
        COUNTER_NEXT_INODE: _dumped_counter(header, "nextInodes"),
        COUNTER_NEXT_CHUNK: _dumped_counter(header, "nextChunk"),
        COUNTER_NEXT_TRASH: _dumped_counter(header, "nextTrash"),
    }
    trash = trees.get("Trash")
    if trash is not None and _is_trash_placeholder(trash):
        trash = None
    try:
        meta.format(fmt, time.time_ns())
    except MetaStoreError as exc:
        raise VolumeMigrateError(
            f"could not format the target store {meta!r} ({exc}); a load needs an empty, "
            f"unformatted store"
        ) from exc
    with _WriteBatches(meta) as batches:
        loader = _Loader(batches, reader, progress)
        if trash is None:
            batches.tx.delete_attr(TRASH_INODE)  # format makes one when TrashDays > 0
        loader.write_tree(trees["FSTree"])
        if trash is not None:
            loader.write_tree(trash)
        loader.write_counters(floors, next_session)
    if progress is not None:
        progress(loader.inodes)
    return LoadStats(loader.inodes, loader.entries, loader.slices)


def _read_text(src: IO[bytes] | IO[str]) -> str:
    data = src.read()
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VolumeIndexCorrupt(f"the dump is not UTF-8 text: {exc}") from exc


def _parse_format(setting: dict[str, Any]) -> Format:
    try:
        return Format.from_json(json.dumps(setting))
    except (ValueError, TypeError) as exc:
        raise VolumeIndexCorrupt(f"the dump's 'Setting' is not a valid Format: {exc}") from exc


def _dumped_counter(header: dict[str, Any], name: str) -> int:
    value = header["Counters"].get(name, 0)
    if not _is_int(value) or value < 0:
        raise VolumeIndexCorrupt(f"the dump's counter {name!r} is {value!r}, not a count")
    return value


def _is_int(value: Any) -> bool:
    return type(value) is int  # not bool, which JSON true/false decode to


@dataclass(slots=True, eq=False)
class _Node:
    """One decoded entry of the dump. ``children`` is None for everything but directories."""

    inode: int
    attr: Attr
    symlink: bytes
    xattrs: list[tuple[str, bytes]]
    chunks: list[tuple[int, bytes]]  # (chunk index, packed records in stored order)
    children: list[tuple[bytes, _Node]] | None


def _is_trash_placeholder(node: _Node) -> bool:
    a, p = node.attr, _TRASH_PLACEHOLDER
    return (
        not node.children
        and not node.xattrs
        and (
            (a.mode, a.uid, a.gid, a.atime_ns, a.mtime_ns, a.ctime_ns, a.flags)
            == (p.mode, p.uid, p.gid, p.atime_ns, p.mtime_ns, p.ctime_ns, p.flags)
        )
    )


@dataclass
class _Open:
    """An entry object being read: its members so far, and its ``entries`` object when inside."""

    where: str
    name: bytes
    members: dict[str, Any] = field(default_factory=dict)
    children: list[tuple[bytes, _Node]] | None = None
    in_entries: bool = False


_WHITESPACE = re.compile(r"[ \t\n\r]*")


class _DumpReader:
    """Reads the dump text, checking and decoding the trees into :class:`_Node` objects.

    Python's ``json`` recurses once per nesting level, so a deep tree would exhaust the stack:
    the two trees are read here with an explicit stack, and only the shallow values (Setting,
    counters, attr, chunks, xattrs) go through the ``json`` decoder. ``first`` keeps the
    occurrence of each inode that is loaded (the first in document order) and ``paths`` counts
    the paths naming each inode.
    """

    def __init__(self, text: str):
        self._text = text
        self._at = 0
        self._values = json.JSONDecoder()
        self.first: dict[int, _Node] = {}
        self.paths: Counter[int] = Counter()

    def document(self) -> tuple[dict[str, Any], dict[str, _Node]]:
        """The top-level members: ``(header values, {"FSTree"/"Trash": tree})``."""
        header: dict[str, Any] = {}
        trees: dict[str, _Node] = {}
        self._expect("{", "the dump")
        key = self._member(True, "the dump")
        while key is not None:
            if key in ("FSTree", "Trash"):
                trees[key] = self._tree(key, ROOT_INODE if key == "FSTree" else TRASH_INODE)
            else:
                header[key] = self._value(key)
            key = self._member(False, "the dump")
        if self._skip_whitespace() != len(self._text):
            self._fail("the dump", "data after the end of the document")
        return header, trees

    # ------------------------------------------------------------------ tokens

    def _skip_whitespace(self) -> int:
        self._at = _WHITESPACE.match(self._text, self._at).end()  # type: ignore[union-attr]
        return self._at

    def _fail(self, where: str, problem: str) -> NoReturn:
        if self._at >= len(self._text):
            problem += " (the dump ends early: truncated?)"
        raise VolumeIndexCorrupt(
            f"the dump is not valid at character {self._at} ({where}): {problem}"
        )

    def _expect(self, char: str, where: str) -> None:
        at = self._skip_whitespace()
        if self._text[at : at + 1] != char:
            self._fail(where, f"expected {char!r}")
        self._at = at + 1

    def _member(self, first: bool, where: str) -> str | None:
        """The key of the next member of the object being read, or None at its end."""
        at = self._skip_whitespace()
        if self._text[at : at + 1] == "}":
            self._at = at + 1
            return None
        if not first:
            self._expect(",", where)
        self._expect('"', where)
        try:
            key, self._at = scanstring(self._text, self._at)
        except ValueError as exc:
            self._fail(where, f"bad member name: {exc}")
        self._expect(":", f"{where}/{key}")
        return key

    def _value(self, where: str) -> Any:
        try:
            value, self._at = self._values.raw_decode(self._text, self._skip_whitespace())
        except (ValueError, RecursionError) as exc:
            self._fail(where, f"bad value: {exc}")
        return value

    # ------------------------------------------------------------------ trees

    def _tree(self, where: str, top_inode: int) -> _Node:
        """Read one tree (``FSTree`` or ``Trash``) depth first without recursion."""
        self._expect("{", where)
        stack = [_Open(where, b"")]
        while True:
            entry = stack[-1]
            if entry.in_entries:
                assert entry.children is not None  # set when "entries" began
                key = self._member(not entry.children, f"{entry.where}/entries")
                if key is None:
                    entry.in_entries = False
                    continue
                child_where = f"{entry.where}/{key}"
                self._expect("{", child_where)
                stack.append(_Open(child_where, self._name(key, child_where)))
                continue
            key = self._member(not entry.members and entry.children is None, entry.where)
            if key == "entries":
                if entry.children is not None:
                    self._fail(entry.where, "'entries' appears twice")
                self._expect("{", f"{entry.where}/entries")
                entry.children, entry.in_entries = [], True
            elif key is not None:
                entry.members[key] = self._value(f"{entry.where}/{key}")
            else:
                node = self._decode(entry)
                stack.pop()
                if not stack:
                    return self._top(node, where, top_inode)
                self._add_child(stack[-1], entry.name, node, entry.where)

    @staticmethod
    def _name(key: str, where: str) -> bytes:
        name = _unescape_checked(key, where)
        if not name or b"/" in name or b"\0" in name:
            raise VolumeIndexCorrupt(f"{where}: {name!r} is not a valid file name")
        return name

    def _top(self, node: _Node, where: str, top_inode: int) -> _Node:
        if node.children is None:
            raise VolumeIndexCorrupt(f"{where} is a {TYPE_NAMES[node.attr.type]}, not a directory")
        if top_inode == ROOT_INODE:
            node.inode = ROOT_INODE  # a dump of a subdirectory loads as the root
        elif node.inode != top_inode:
            raise VolumeIndexCorrupt(f"{where} has inode {node.inode}, expected {top_inode}")
        self._count_path(node, where)
        return node

    def _add_child(self, parent: _Open, name: bytes, node: _Node, where: str) -> None:
        if node.inode in (ROOT_INODE, TRASH_INODE):
            raise VolumeIndexCorrupt(f"{where} has the reserved inode {node.inode}")
        self._count_path(node, where)
        assert parent.children is not None  # only entries objects hold children
        parent.children.append((name, node))

    def _count_path(self, node: _Node, where: str) -> None:
        self.paths[node.inode] += 1
        first = self.first.setdefault(node.inode, node)
        if first is node:
            return
        if node.children is not None or first.children is not None:
            raise VolumeIndexCorrupt(f"{where}: directory inode {node.inode} appears at two paths")
        if first.attr.type != node.attr.type:
            raise VolumeIndexCorrupt(f"{where}: inode {node.inode} appears with two types")

    @staticmethod
    def _decode(entry: _Open) -> _Node:
        """The node of a fully read entry object."""
        members, where = entry.members, entry.where
        inode, attr = _decode_attr(members.get("attr"), where)
        if "posix_acl_access" in members or "posix_acl_default" in members:
            raise VolumeMigrateError(
                f"{where} has POSIX ACLs, which the metadata store interface cannot hold"
            )
        kinds = {"entries": TYPE_DIRECTORY, "chunks": TYPE_FILE, "symlink": TYPE_SYMLINK}
        present = set(members) | ({"entries"} if entry.children is not None else set())
        for key, kind in kinds.items():
            if key in present and attr.type != kind:
                raise VolumeIndexCorrupt(f"{where} has {key!r} but is a {TYPE_NAMES[attr.type]}")
        target = members.get("symlink", "")
        if not isinstance(target, str):
            raise VolumeIndexCorrupt(f"{where}: 'symlink' is not a string")
        return _Node(
            inode=inode,
            attr=attr,
            symlink=_unescape_checked(target, where),
            xattrs=_decode_xattrs(members.get("xattrs", []), where),
            chunks=_decode_chunks(members.get("chunks", []), where),
            children=(entry.children or []) if attr.type == TYPE_DIRECTORY else None,
        )


def _unescape_checked(text: str, where: str) -> bytes:
    try:
        return unescape(text)
    except UnicodeEncodeError as exc:
        raise VolumeIndexCorrupt(f"{where}: {text!r} is not valid text: {exc}") from exc


def _field(obj: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = obj.get(key, default)
    if not _is_int(value):
        problem = "missing" if value is None else f"{value!r}, not an integer"
        raise VolumeIndexCorrupt(f"{where}: {key!r} is {problem}")
    return value


def _decode_attr(attr: Any, where: str) -> tuple[int, Attr]:
    if not isinstance(attr, dict):
        raise VolumeIndexCorrupt(f"{where}: 'attr' is missing or not a JSON object")
    where = f"{where}: attr"
    inode = _field(attr, "inode", where)
    if not 0 < inode <= _MAX_INODE:
        raise VolumeIndexCorrupt(f"{where}: inode {inode} is out of range")
    type_name = attr.get("type")
    type_ = TYPE_BY_NAME.get(type_name) if isinstance(type_name, str) else None
    if type_ is None:
        raise VolumeIndexCorrupt(f"{where}: type {type_name!r} is not a file type")
    times = []
    for name in ("atime", "mtime", "ctime"):
        nsec = _field(attr, f"{name}nsec", where, 0)
        if not 0 <= nsec < _NS:
            raise VolumeIndexCorrupt(f"{where}: {name}nsec {nsec} is not in 0..999999999")
        times.append(_field(attr, name, where) * _NS + nsec)
    length = _field(attr, "length", where, 0)
    if length < 0:
        raise VolumeIndexCorrupt(f"{where}: length {length} is negative")
    return inode, Attr(
        type=type_,
        mode=_field(attr, "mode", where),
        uid=_field(attr, "uid", where, 0),
        gid=_field(attr, "gid", where, 0),
        atime_ns=times[0],
        mtime_ns=times[1],
        ctime_ns=times[2],
        length=length,
        rdev=_field(attr, "rdev", where, 0),
        flags=_field(attr, "flags", where, 0),
        tier=_field(attr, "tier", where, 0),
    )


def _decode_xattrs(xattrs: Any, where: str) -> list[tuple[str, bytes]]:
    if not isinstance(xattrs, list):
        raise VolumeIndexCorrupt(f"{where}: 'xattrs' is not a JSON array")
    decoded = []
    for item in xattrs:
        if not (isinstance(item, dict) and isinstance(item.get("name"), str)
                and isinstance(item.get("value"), str)):  # fmt: skip
            raise VolumeIndexCorrupt(f"{where}: an xattr is not {{name, value}} strings: {item!r}")
        decoded.append((item["name"], _unescape_checked(item["value"], where)))
    return decoded


def _decode_chunks(chunks: Any, where: str) -> list[tuple[int, bytes]]:
    if not isinstance(chunks, list):
        raise VolumeIndexCorrupt(f"{where}: 'chunks' is not a JSON array")
    decoded: list[tuple[int, bytes]] = []
    indexes: set[int] = set()
    for chunk in chunks:
        if not isinstance(chunk, dict) or not isinstance(chunk.get("slices"), list):
            raise VolumeIndexCorrupt(f"{where}: a chunk is not {{index, slices}}: {chunk!r}")
        indx = _field(chunk, "index", f"{where}: chunk")
        records = []
        for s in chunk["slices"]:
            if not isinstance(s, dict):
                raise VolumeIndexCorrupt(f"{where}: chunk {indx}: a slice is not an object")
            at = f"{where}: chunk {indx}: slice"
            slice_id = _field(s, "id", at, 0) or _field(s, "chunkid", at, 0)  # legacy name
            try:
                rec = SliceRecord(
                    _field(s, "pos", at, 0), slice_id, _field(s, "size", at),
                    _field(s, "off", at, 0), _field(s, "len", at),
                )  # fmt: skip
                records.append(rec.pack())
            except struct.error as exc:
                raise VolumeIndexCorrupt(f"{at} {s!r} is out of range: {exc}") from exc
        if indx < 0 or indx in indexes or not records:
            raise VolumeIndexCorrupt(f"{where}: chunk index {indx} is negative, repeated or empty")
        indexes.add(indx)
        decoded.append((indx, b"".join(records)))
    return decoded


class _WriteBatches:
    """Write transactions of about ``_LOAD_BATCH`` record operations each: one transaction per
    record would be slow, and one for the whole load would hold it all in the store's journal."""

    def __init__(self, meta: MetaStore):
        self._meta = meta
        self._done = 0
        self._context = meta.transaction(write=True)
        self.tx: MetaTxn

    def __enter__(self) -> _WriteBatches:
        self.tx = self._context.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._context.__exit__(*exc_info)

    def count(self, operations: int) -> None:
        """Note that ``operations`` records were written; commit when the batch is full."""
        self._done += operations
        if self._done >= _LOAD_BATCH:
            self._context.__exit__(None, None, None)
            self._done = 0
            self._context = self._meta.transaction(write=True)
            self.tx = self._context.__enter__()


@dataclass
class _Loader:
    """Writes decoded trees and the counters they imply."""

    batches: _WriteBatches
    tree: _DumpReader
    progress: Progress | None
    inodes: int = 0
    entries: int = 0
    slices: int = 0
    used_space: int = 0
    total_inodes: int = 0
    max_inode: int = 1
    max_trash: int = 0
    refs: Counter[tuple[int, int]] = field(default_factory=Counter)

    def write_tree(self, top: _Node) -> None:
        """Write a decoded tree: the top directory's attributes, then every directory's entries
        and stats and the first occurrence of every inode."""
        self._write_node(top, ROOT_INODE)
        pending = [top]
        while pending:
            directory = pending.pop()
            length = space = 0
            for name, child in directory.children or ():
                # _write_node may commit the batch: always write through the current transaction
                self.batches.tx.add_entry(directory.inode, name, child.inode, child.attr.type)
                child_length = child.attr.length if child.attr.type == TYPE_FILE else 0
                length += child_length
                space += align4k(child_length)
                if self.tree.first[child.inode] is child:
                    if child.children is not None:
                        pending.append(child)
                    self._write_node(child, directory.inode)
            entries = len(directory.children or ())
            self.batches.tx.update_dir_stats(directory.inode, length, space, entries)
            self.entries += entries
            self.batches.count(entries + 1)

    def _write_node(self, node: _Node, parent: int) -> None:
        tx = self.batches.tx
        attr, inode = node.attr, node.inode
        attr.parent = parent
        if node.children is not None:
            attr.length = DIR_LENGTH
            subdirs = sum(1 for _, child in node.children if child.children is not None)
            attr.nlink = 2 if inode == TRASH_INODE else 2 + subdirs
        else:
            links = self.tree.paths[inode]
            attr.nlink = links
            if links > 1:
                attr.parent = 0
            if attr.type == TYPE_SYMLINK:
                attr.length = len(node.symlink)
                tx.set_symlink(inode, node.symlink)
            elif attr.type != TYPE_FILE:
                attr.length = 0
        tx.set_attr(inode, attr)
        for name, value in node.xattrs:
            tx.set_xattr(inode, name, value)
        for indx, records in node.chunks:
            tx.write_chunk(inode, indx, records)
            for rec in unpack_slices(records):
                self.slices += 1
                if rec.id:
                    self.refs[rec.id, rec.size] += 1
        self.batches.count(2 + len(node.xattrs) + len(node.chunks))
        self._account(inode, attr)

    def _account(self, inode: int, attr: Attr) -> None:
        self.inodes += 1
        if self.progress is not None and self.inodes % _PROGRESS_EVERY == 0:
            self.progress(self.inodes)
        if inode not in (ROOT_INODE, TRASH_INODE):
            self.used_space += align4k(attr.length if attr.type == TYPE_FILE else 0)
            self.total_inodes += 1
        if inode < TRASH_INODE:
            self.max_inode = max(self.max_inode, inode)
        else:
            self.max_trash = max(self.max_trash, inode - TRASH_INODE)

    def write_counters(self, floors: dict[str, int], next_session: int) -> None:
        """Slice references and counters, from what was written (see :func:`load`)."""
        for (slice_id, size), count in self.refs.items():
            self.batches.tx.add_slice_ref(slice_id, size, count)
            self.batches.count(1)
        max_slice = max((slice_id for slice_id, _ in self.refs), default=0)
        counters = {
            COUNTER_USED_SPACE: self.used_space,
            COUNTER_TOTAL_INODES: self.total_inodes,
            COUNTER_NEXT_INODE: max(self.max_inode + 1, floors[COUNTER_NEXT_INODE]),
            COUNTER_NEXT_CHUNK: max(max_slice + 1, floors[COUNTER_NEXT_CHUNK]),
            COUNTER_NEXT_TRASH: max(self.max_trash, floors[COUNTER_NEXT_TRASH]),
            COUNTER_NEXT_SESSION: next_session,
        }
        for name, value in counters.items():
            self.batches.tx.set_counter(name, value)


# =========================================================================== migrate


def migrate(
    src: MetaStore,
    dst: MetaStore,
    *,
    tmp_dir: str | os.PathLike[str],
    progress: Callable[[str, int], None] | None = None,
) -> None:
    """Copy the namespace of ``src`` into the empty store ``dst`` (of any type) through a
    temporary dump file in ``tmp_dir``, secrets included. Data blocks are not touched: ``dst``
    names the same slices as ``src``. The temporary file is removed afterwards. ``progress`` is
    called now and then with ``("dump", entries)`` and ``("load", inodes)`` done so far."""
    fd, name = tempfile.mkstemp(prefix=".volume-dump-", suffix=".json", dir=tmp_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            dump(src, out, keep_secret_key=True,
                 progress=progress and (lambda n: progress("dump", n)))  # fmt: skip
        with open(path, "rb") as source:
            load(dst, source, progress=progress and (lambda n: progress("load", n)))
    finally:
        path.unlink(missing_ok=True)
