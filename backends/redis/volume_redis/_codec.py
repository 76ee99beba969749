"""Key names and binary encodings of the JuiceFS 1.x Redis metadata layout (``pkg/meta/redis.go``).

Every integer inside a binary value is big-endian. See ``spec/index-format.md`` (Redis layout).
"""

from __future__ import annotations

import re
import struct

from volume.juicefs import (
    COUNTER_NEXT_CHUNK,
    COUNTER_NEXT_INODE,
    COUNTER_NEXT_SESSION,
    Attr,
)

NS = 1_000_000_000

SETTING = b"setting"
SLICE_REFS = b"sliceRef"
DIR_DATA_LENGTH = b"dirDataLength"
DIR_USED_SPACE = b"dirUsedSpace"
DIR_USED_INODES = b"dirUsedInodes"
DIR_STATS = (DIR_DATA_LENGTH, DIR_USED_SPACE, DIR_USED_INODES)
ALL_SESSIONS = b"allSessions"
#: not a JuiceFS key: the order sustained inodes were recorded in (JuiceFS keeps a plain set)
SUSTAINED_ORDER = b"volumeSustainedOrder"

# counters whose Redis key is lower-cased and, for two of them, one smaller ("last used")
_LAST_USED = {COUNTER_NEXT_INODE: b"nextinode", COUNTER_NEXT_CHUNK: b"nextchunk"}
_LOWER = {COUNTER_NEXT_SESSION: b"nextsession"}

INODE_KEY = re.compile(rb"i(\d+)")
ENTRY_KEY = re.compile(rb"d(\d+)")
CHUNK_KEY = re.compile(rb"c(\d+)_(\d+)")
SLICE_FIELD = re.compile(rb"k(\d+)_(\d+)")


def inode_key(inode: int) -> bytes:
    return b"i%d" % inode


def entry_key(parent: int) -> bytes:
    return b"d%d" % parent


def parent_key(inode: int) -> bytes:
    return b"p%d" % inode


def chunk_key(inode: int, indx: int) -> bytes:
    return b"c%d_%d" % (inode, indx)


def symlink_key(inode: int) -> bytes:
    return b"s%d" % inode


def xattr_key(inode: int) -> bytes:
    return b"x%d" % inode


def session_key(sid: int) -> bytes:
    return b"session%d" % sid


def slice_field(slice_id: int, size: int) -> bytes:
    return b"k%d_%d" % (slice_id, size)


def counter_key(name: str) -> tuple[bytes, int]:
    """The Redis key of a counter and what to add to its stored value for the SQL convention."""
    if name in _LAST_USED:
        return _LAST_USED[name], 1
    return _LOWER.get(name) or name.encode(), 0


# --------------------------------------------------------------------------- attributes

_ATTR = struct.Struct(">BHIIqIqIqIIQIQ")  # 71 bytes: flags .. parent
_ACL = struct.Struct(">II")


def pack_attr(attr: Attr) -> bytes:
    """``Attr.Marshal``: 71 bytes of fields, the optional ACL ids and tier, and one spare NUL
    byte (the Go buffer is allocated one byte longer than it writes: 72 bytes plain)."""
    a_s, a_n = divmod(attr.atime_ns, NS)
    m_s, m_n = divmod(attr.mtime_ns, NS)
    c_s, c_n = divmod(attr.ctime_ns, NS)
    out = _ATTR.pack(
        attr.flags, (attr.type << 12) | (attr.mode & 0xFFF), attr.uid, attr.gid,
        a_s, a_n, m_s, m_n, c_s, c_n, attr.nlink, attr.length, attr.rdev, attr.parent,
    )  # fmt: skip
    if attr.access_acl or attr.default_acl:
        out += _ACL.pack(attr.access_acl, attr.default_acl)
    if attr.tier:
        out += bytes((attr.tier,))
    return out + b"\x00"


def unpack_attr(buf: bytes) -> Attr:
    """``Attr.Unmarshal``: parent, ACL ids and tier are read when enough bytes are left."""
    if len(buf) < _ATTR.size - 8:
        raise ValueError(f"an attr record of {len(buf)} bytes is too short")
    if len(buf) < _ATTR.size:
        buf = buf + b"\x00" * (_ATTR.size - len(buf))  # a record without its parent field
    (flags, mode, uid, gid, a_s, a_n, m_s, m_n, c_s, c_n, nlink, length, rdev,
     parent) = _ATTR.unpack_from(buf)  # fmt: skip
    rest = len(buf) - _ATTR.size
    access = default = tier = 0
    off = _ATTR.size
    if rest >= 8:
        access, default = _ACL.unpack_from(buf, off)
        off += 8
        rest -= 8
    if rest >= 1:
        tier = buf[off]
    return Attr(
        mode >> 12, mode & 0xFFF, uid, gid, a_s * NS + a_n, m_s * NS + m_n, c_s * NS + c_n,
        nlink, length, rdev, parent, flags, access, default, tier,
    )  # fmt: skip


# --------------------------------------------------------------------------- entries

_ENTRY = struct.Struct(">BQ")


def pack_entry(type: int, inode: int) -> bytes:
    """A ``d{parent}`` field value: type u8, then inode u64."""
    return _ENTRY.pack(type, inode)


def unpack_entry(buf: bytes) -> tuple[int, int]:
    """``(inode, type)`` of a ``d{parent}`` field value."""
    type_, inode = _ENTRY.unpack(buf)
    return inode, type_
