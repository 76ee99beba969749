"""The JuiceFS v1.4 SQLite schema and the rows ``juicefs format`` leaves behind.

The DDL strings are the exact text a JuiceFS 1.4 client stores in ``sqlite_master``. They must stay
byte-identical: on every read-write mount the client's ORM re-parses this text to decide which
indexes to drop and recreate, and any difference makes it rewrite the schema.
"""

from __future__ import annotations

from volume.juicefs import (
    COUNTER_NEXT_CHUNK,
    COUNTER_NEXT_CLEANUP_SLICES,
    COUNTER_NEXT_INODE,
    COUNTER_NEXT_SESSION,
    COUNTER_TOTAL_INODES,
    COUNTER_USED_SPACE,
)

#: every table and index of the v1.4 schema, in the order JuiceFS creates them
JUICEFS_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE `jfs_setting` (`name` TEXT PRIMARY KEY NOT NULL, `value` TEXT NOT NULL)",
    "CREATE TABLE `jfs_counter` (`name` TEXT PRIMARY KEY NOT NULL, `value` INTEGER NOT NULL)",
    (
        "CREATE TABLE `jfs_edge` (`id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
        "`parent` INTEGER NOT NULL, `name` BLOB NOT NULL, `inode` INTEGER NOT NULL, "
        "`type` INTEGER NOT NULL)"
    ),
    "CREATE UNIQUE INDEX `UQE_jfs_edge_edge` ON `jfs_edge` (`parent`,`name`)",
    "CREATE INDEX `IDX_jfs_edge_inode` ON `jfs_edge` (`inode`)",
    (
        "CREATE TABLE `jfs_node` (`inode` INTEGER PRIMARY KEY NOT NULL, `type` INTEGER NOT NULL, "
        "`flags` INTEGER NOT NULL, `mode` INTEGER NOT NULL, `uid` INTEGER NOT NULL, "
        "`gid` INTEGER NOT NULL, `atime` INTEGER NOT NULL, `mtime` INTEGER NOT NULL, "
        "`ctime` INTEGER NOT NULL, `atimensec` INTEGER DEFAULT 0 NOT NULL, "
        "`mtimensec` INTEGER DEFAULT 0 NOT NULL, `ctimensec` INTEGER DEFAULT 0 NOT NULL, "
        "`nlink` INTEGER NOT NULL, `length` INTEGER NOT NULL, `rdev` INTEGER NULL, "
        "`parent` INTEGER NULL, `access_acl_id` INTEGER NULL, `default_acl_id` INTEGER NULL, "
        "`tier_id` INTEGER NULL)"
    ),
    "CREATE TABLE `jfs_symlink` (`inode` INTEGER PRIMARY KEY NOT NULL, `target` BLOB NOT NULL)",
    (
        "CREATE TABLE `jfs_xattr` (`id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
        "`inode` INTEGER NOT NULL, `name` TEXT NOT NULL, `value` BLOB NOT NULL)"
    ),
    "CREATE UNIQUE INDEX `UQE_jfs_xattr_name` ON `jfs_xattr` (`inode`,`name`)",
    (
        "CREATE TABLE `jfs_chunk` (`id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
        "`inode` INTEGER NOT NULL, `indx` INTEGER NOT NULL, `slices` BLOB NOT NULL)"
    ),
    "CREATE UNIQUE INDEX `UQE_jfs_chunk_chunk` ON `jfs_chunk` (`inode`,`indx`)",
    (
        "CREATE TABLE `jfs_chunk_ref` (`chunkid` INTEGER PRIMARY KEY NOT NULL, "
        "`size` INTEGER NOT NULL, `refs` INTEGER NOT NULL)"
    ),
    "CREATE INDEX `IDX_jfs_chunk_ref_refs` ON `jfs_chunk_ref` (`refs`)",
    (
        "CREATE TABLE `jfs_delslices` (`chunkid` INTEGER PRIMARY KEY NOT NULL, "
        "`deleted` INTEGER NOT NULL, `slices` BLOB NOT NULL)"
    ),
    (
        "CREATE TABLE `jfs_session2` (`sid` INTEGER PRIMARY KEY NOT NULL, "
        "`expire` INTEGER NOT NULL, `info` BLOB NULL)"
    ),
    (
        "CREATE TABLE `jfs_sustained` (`id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
        "`sid` INTEGER NOT NULL, `inode` INTEGER NOT NULL)"
    ),
    "CREATE UNIQUE INDEX `UQE_jfs_sustained_sustained` ON `jfs_sustained` (`sid`,`inode`)",
    (
        "CREATE TABLE `jfs_delfile` (`inode` INTEGER PRIMARY KEY NOT NULL, "
        "`length` INTEGER NOT NULL, `expire` INTEGER NOT NULL)"
    ),
    (
        "CREATE TABLE `jfs_flock` (`id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
        "`inode` INTEGER NOT NULL, `sid` INTEGER NOT NULL, `owner` INTEGER NOT NULL, "
        "`ltype` INTEGER NOT NULL)"
    ),
    "CREATE UNIQUE INDEX `UQE_jfs_flock_flock` ON `jfs_flock` (`inode`,`sid`,`owner`)",
    (
        "CREATE TABLE `jfs_plock` (`id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
        "`inode` INTEGER NOT NULL, `sid` INTEGER NOT NULL, `owner` INTEGER NOT NULL, "
        "`records` BLOB NOT NULL)"
    ),
    "CREATE UNIQUE INDEX `UQE_jfs_plock_plock` ON `jfs_plock` (`inode`,`sid`,`owner`)",
    (
        "CREATE TABLE `jfs_dir_quota` (`inode` INTEGER PRIMARY KEY NOT NULL, "
        "`max_space` INTEGER NOT NULL, `max_inodes` INTEGER NOT NULL, "
        "`used_space` INTEGER NOT NULL, `used_inodes` INTEGER NOT NULL)"
    ),
    (
        "CREATE TABLE `jfs_user_group_quota` (`qtype` INTEGER NOT NULL, `qkey` INTEGER NOT NULL, "
        "`max_space` INTEGER NOT NULL, `max_inodes` INTEGER NOT NULL, "
        "`used_space` INTEGER NOT NULL, `used_inodes` INTEGER NOT NULL, "
        "PRIMARY KEY (`qtype`,`qkey`))"
    ),
    (
        "CREATE TABLE `jfs_dir_stats` (`inode` INTEGER PRIMARY KEY NOT NULL, "
        "`data_length` INTEGER NOT NULL, `used_space` INTEGER NOT NULL, "
        "`used_inodes` INTEGER NOT NULL)"
    ),
    (
        "CREATE TABLE `jfs_detached_node` (`inode` INTEGER PRIMARY KEY NOT NULL, "
        "`added` INTEGER NOT NULL)"
    ),
    (
        "CREATE TABLE `jfs_acl` (`id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
        "`owner` INTEGER NULL, `group` INTEGER NULL, `mask` INTEGER NULL, `other` INTEGER NULL, "
        "`named_users` BLOB NULL, `named_groups` BLOB NULL)"
    ),
    (
        "CREATE TABLE `jfs_delegation_token` (`id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
        "`token` BLOB NULL)"
    ),
    (
        "CREATE TABLE `jfs_change_log` (`id` INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "
        "`entry` TEXT NOT NULL)"
    ),
)

#: ``jfs_counter`` rows after ``juicefs format``, in SQL convention (next free inode and slice id)
FORMAT_COUNTERS: tuple[tuple[str, int], ...] = (
    (COUNTER_NEXT_INODE, 2),  # inode 1 is the root
    (COUNTER_NEXT_CHUNK, 1),
    (COUNTER_NEXT_SESSION, 0),
    (COUNTER_USED_SPACE, 0),
    (COUNTER_TOTAL_INODES, 0),
    (COUNTER_NEXT_CLEANUP_SLICES, 0),
)
