"""JuiceFS 1.x format facts shared by the core and by store plugins.

Constants, the inode attribute record, the volume ``Format`` JSON (written exactly as Go's
``json.MarshalIndent(format, "", "")`` writes it), 24-byte slice records and block keys.
See ``spec/index-format.md`` for the normative description.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import uuid as uuid_mod
from dataclasses import dataclass, field
from typing import Any, Iterator

CHUNK_SIZE = 1 << 26  # 64 MiB
ROOT_INODE = 1
TRASH_INODE = 0x7FFFFFFF10000000
MIN_INTERNAL_INODE = 0x7FFFFFFF00000000
DEFAULT_BLOCK_SIZE_KIB = 4096
DIR_LENGTH = 4096

# node types (jfs_node.type)
TYPE_FILE = 1
TYPE_DIRECTORY = 2
TYPE_SYMLINK = 3
TYPE_FIFO = 4
TYPE_BLOCKDEV = 5
TYPE_CHARDEV = 6
TYPE_SOCKET = 7

TYPE_NAMES = {
    TYPE_FILE: "regular",
    TYPE_DIRECTORY: "directory",
    TYPE_SYMLINK: "symlink",
    TYPE_FIFO: "fifo",
    TYPE_BLOCKDEV: "blockdev",
    TYPE_CHARDEV: "chardev",
    TYPE_SOCKET: "socket",
}
TYPE_BY_NAME = {v: k for k, v in TYPE_NAMES.items()}

# counters, SQL convention (next free inode / slice id; last used session / trash offset)
COUNTER_NEXT_INODE = "nextInode"
COUNTER_NEXT_CHUNK = "nextChunk"
COUNTER_NEXT_SESSION = "nextSession"
COUNTER_USED_SPACE = "usedSpace"
COUNTER_TOTAL_INODES = "totalInodes"
COUNTER_NEXT_CLEANUP_SLICES = "nextCleanupSlices"
COUNTER_NEXT_TRASH = "nextTrash"

VOLUME_NAME_RULE = r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$"
_VOLUME_NAME_RE = re.compile(VOLUME_NAME_RULE)


def is_valid_volume_name(name: str) -> bool:
    """Whether ``name`` follows the JuiceFS volume-name rule."""
    return bool(_VOLUME_NAME_RE.fullmatch(name))


def align4k(length: int) -> int:
    """Space accounted for a node of ``length`` bytes (0 counts as one 4 KiB unit)."""
    if length == 0:
        return 4096
    return ((length - 1) // 4096 + 1) * 4096


# --------------------------------------------------------------------------- attributes


@dataclass(slots=True)
class Attr:
    """One inode's attributes, engine-neutral (times in whole nanoseconds since the epoch).

    ``mode`` holds the 12 permission bits only; the file type is ``type``.
    """

    type: int
    mode: int
    uid: int = 0
    gid: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    nlink: int = 1
    length: int = 0
    rdev: int = 0
    parent: int = 0
    flags: int = 0
    access_acl: int = 0
    default_acl: int = 0
    tier: int = 0

    def copy(self) -> "Attr":
        """A field-for-field copy."""
        return dataclasses.replace(self)


# --------------------------------------------------------------------------- slice records

SLICE_RECORD = struct.Struct(">IQIII")
SLICE_RECORD_SIZE = SLICE_RECORD.size  # 24


@dataclass(frozen=True, slots=True)
class SliceRecord:
    """One 24-byte record: chunk bytes [pos, pos+len) are slice ``id`` bytes [off, off+len)."""

    pos: int
    id: int
    size: int
    off: int
    len: int

    def pack(self) -> bytes:
        """The big-endian 24-byte encoding."""
        return SLICE_RECORD.pack(self.pos, self.id, self.size, self.off, self.len)


def unpack_slices(blob: bytes) -> list[SliceRecord]:
    """Decode a chunk's concatenated records; raises ``ValueError`` on a corrupt length."""
    if len(blob) % SLICE_RECORD_SIZE:
        raise ValueError(f"slice blob of {len(blob)} bytes is not a multiple of 24")
    return [SliceRecord(*t) for t in SLICE_RECORD.iter_unpack(blob)]


def iter_slice_ids(blob: bytes) -> Iterator[tuple[int, int]]:
    """Yield ``(id, size)`` of every non-hole record of a chunk blob."""
    for _pos, sid, size, _off, _len in SLICE_RECORD.iter_unpack(blob):
        if sid:
            yield sid, size


# --------------------------------------------------------------------------- block keys


def block_key(name: str, slice_id: int, indx: int, bsize: int, hash_prefix: bool = False) -> str:
    """Object key of block ``indx`` of slice ``slice_id`` whose uncompressed length is ``bsize``."""
    if hash_prefix:
        return f"{name}/chunks/{slice_id % 256:02X}/{slice_id // 1_000_000}/{slice_id}_{indx}_{bsize}"
    return f"{name}/chunks/{slice_id // 1_000_000}/{slice_id // 1000}/{slice_id}_{indx}_{bsize}"


def slice_blocks(size: int, block_size: int) -> Iterator[tuple[int, int]]:
    """Yield ``(indx, bsize)`` of the blocks of a slice of ``size`` bytes."""
    if size <= 0:
        return
    for indx in range((size - 1) // block_size + 1):
        yield indx, min(block_size, size - indx * block_size)


# --------------------------------------------------------------------------- Format JSON

# (key, omitempty) in the order of the Go struct; Tiers, TrashDays and EnableACL are always written.
_FORMAT_FIELDS: tuple[tuple[str, bool], ...] = (
    ("Name", False),
    ("UUID", False),
    ("Storage", False),
    ("StorageClass", True),
    ("Tiers", False),
    ("Bucket", False),
    ("AccessKey", True),
    ("SecretKey", True),
    ("SessionToken", True),
    ("BlockSize", False),
    ("Compression", True),
    ("Shards", True),
    ("HashPrefix", True),
    ("Capacity", True),
    ("Inodes", True),
    ("EncryptKey", True),
    ("EncryptAlgo", True),
    ("KeyEncrypted", True),
    ("UploadLimit", True),
    ("DownloadLimit", True),
    ("TrashDays", False),
    ("MetaVersion", True),
    ("MinClientVersion", True),
    ("MaxClientVersion", True),
    ("DirStats", True),
    ("UserGroupQuota", True),
    ("EnableACL", False),
    ("RangerRestUrl", True),
    ("RangerService", True),
    ("ChangeLog", True),
    ("ChangeLogMaxAge", True),
    ("ChangeLogMaxLines", True),
    ("KerbConf", True),
)

_FORMAT_DEFAULTS: dict[str, Any] = {
    "Name": "",
    "UUID": "",
    "Storage": "file",
    "StorageClass": "",
    "Tiers": None,
    "Bucket": "",
    "AccessKey": "",
    "SecretKey": "",
    "SessionToken": "",
    "BlockSize": DEFAULT_BLOCK_SIZE_KIB,
    "Compression": "",
    "Shards": 0,
    "HashPrefix": False,
    "Capacity": 0,
    "Inodes": 0,
    "EncryptKey": "",
    "EncryptAlgo": "",
    "KeyEncrypted": False,
    "UploadLimit": 0,
    "DownloadLimit": 0,
    "TrashDays": 0,
    "MetaVersion": 0,
    "MinClientVersion": "",
    "MaxClientVersion": "",
    "DirStats": False,
    "UserGroupQuota": False,
    "EnableACL": False,
    "RangerRestUrl": "",
    "RangerService": "",
    "ChangeLog": False,
    "ChangeLogMaxAge": 0,
    "ChangeLogMaxLines": 0,
    "KerbConf": "",
}

DEFAULT_TIERS = {"0": {"ID": 0, "StorageClass": "", "Tag": ""}}


def _go_empty(value: Any) -> bool:
    return value in (None, "", 0, False) or value == {} or value == []


def go_json(value: Any) -> str:
    """Encode like Go's ``json.MarshalIndent(v, "", "")``: one member per line, no indent.

    Map keys are sorted (Go sorts maps); strings get Go's HTML and line-separator escapes.
    """
    if isinstance(value, dict):
        if not value:
            return "{}"
        members = [f"{go_string(str(k))}: {go_json(v)}" for k, v in value.items()]
        return "{\n" + ",\n".join(members) + "\n}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(go_json(v) for v in value) + "\n]"
    if isinstance(value, str):
        return go_string(value)
    return json.dumps(value)


def go_string(s: str) -> str:
    out = json.dumps(s, ensure_ascii=False)
    return (
        out.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


@dataclass
class Format:
    """The volume Format (``jfs_setting`` row ``format``; Redis key ``setting``).

    Unknown keys read from a database are kept in ``extra`` and written back after the known ones.
    """

    Name: str
    UUID: str = field(default_factory=lambda: str(uuid_mod.uuid4()))
    Storage: str = "file"
    Bucket: str = ""
    BlockSize: int = DEFAULT_BLOCK_SIZE_KIB
    Compression: str = "none"
    TrashDays: int = 1
    MetaVersion: int = 1
    MinClientVersion: str = "1.1.0-A"
    DirStats: bool = True
    EnableACL: bool = False
    EncryptAlgo: str = "aes256gcm-rsa"
    Tiers: Any = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_TIERS)))
    HashPrefix: bool = False
    Shards: int = 0
    values: dict[str, Any] = field(default_factory=dict)

    _OWN = (
        "Name", "UUID", "Storage", "Bucket", "BlockSize", "Compression", "TrashDays",
        "MetaVersion", "MinClientVersion", "DirStats", "EnableACL", "EncryptAlgo", "Tiers",
        "HashPrefix", "Shards",
    )  # fmt: skip

    @property
    def block_bytes(self) -> int:
        """Block size in bytes."""
        return self.BlockSize * 1024

    def as_dict(self) -> dict[str, Any]:
        """All members, known and unknown, in Go struct order (omitempty applied)."""
        merged = dict(_FORMAT_DEFAULTS)
        merged.update(self.values)
        for key in self._OWN:
            merged[key] = getattr(self, key)
        out: dict[str, Any] = {}
        for key, omitempty in _FORMAT_FIELDS:
            value = merged.pop(key)
            if omitempty and _go_empty(value):
                continue
            out[key] = value
        for key, value in self.values.items():
            if key in merged:  # unknown to this version: keep it
                out[key] = value
        return out

    def to_json(self) -> str:
        """The exact text JuiceFS stores."""
        return go_json(self.as_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> "Format":
        """Parse any valid Format JSON; missing keys take Go zero values, unknown keys are kept."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("format setting is not a JSON object")
        own = {k: data.pop(k, _FORMAT_DEFAULTS.get(k)) for k in cls._OWN}
        if own["Name"] is None:
            own["Name"] = ""
        fmt = cls(**own)
        fmt.values = data
        return fmt
