"""The SQLite index inspected with plain ``sqlite3``: the layout the JuiceFS client expects.

The expectations here are written out independently of the store's code (the DDL text, the
Format JSON, the rows of a fresh volume), so that a change to the store cannot quietly change
what it writes. Also the other direction: databases laid out as the JuiceFS client writes them
read back exactly.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
import sqlite_utils
from volume_sqlite import SQLiteMetaStore

from volume.errors import MetaStoreError, VolumeIndexCorrupt
from volume.juicefs import (
    COUNTER_NEXT_INODE,
    ROOT_INODE,
    TYPE_DIRECTORY,
    TYPE_FILE,
    Attr,
    Format,
    SliceRecord,
)
from volume.stores import MetaTxn
from volume.testing.metastore import NOW_NS, populate

# The exact statements a JuiceFS 1.4 client keeps in sqlite_master, in creation order.
EXPECTED_DDL = (
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

# sqlite_master in row order: SQLite adds the implicit primary-key indexes right after their
# tables and sqlite_sequence right after the first AUTOINCREMENT table.
EXPECTED_SCHEMA_NAMES = [
    "jfs_setting", "sqlite_autoindex_jfs_setting_1",
    "jfs_counter", "sqlite_autoindex_jfs_counter_1",
    "jfs_edge", "sqlite_sequence", "UQE_jfs_edge_edge", "IDX_jfs_edge_inode",
    "jfs_node", "jfs_symlink",
    "jfs_xattr", "UQE_jfs_xattr_name",
    "jfs_chunk", "UQE_jfs_chunk_chunk",
    "jfs_chunk_ref", "IDX_jfs_chunk_ref_refs",
    "jfs_delslices", "jfs_session2",
    "jfs_sustained", "UQE_jfs_sustained_sustained",
    "jfs_delfile",
    "jfs_flock", "UQE_jfs_flock_flock",
    "jfs_plock", "UQE_jfs_plock_plock",
    "jfs_dir_quota",
    "jfs_user_group_quota", "sqlite_autoindex_jfs_user_group_quota_1",
    "jfs_dir_stats", "jfs_detached_node", "jfs_acl", "jfs_delegation_token", "jfs_change_log",
]  # fmt: skip

# What `juicefs format sqlite3://... myvol --storage file --bucket /some/dir/` stores (v1.4).
EXPECTED_FORMAT_JSON = """{
"Name": "myvol",
"UUID": "b41f0564-563c-43ec-b168-7a11e41b5368",
"Storage": "file",
"Tiers": {
"0": {
"ID": 0,
"StorageClass": "",
"Tag": ""
}
},
"Bucket": "/some/dir/",
"BlockSize": 4096,
"Compression": "none",
"EncryptAlgo": "aes256gcm-rsa",
"TrashDays": 1,
"MetaVersion": 1,
"MinClientVersion": "1.1.0-A",
"DirStats": true,
"EnableACL": false
}"""

NOW_US, NOW_NSEC = 1795515552202179, 500  # NOW_NS split as the schema stores it


def juicefs_default_format() -> Format:
    """The Format `juicefs format` writes with default flags, for the example volume."""
    return Format(Name="myvol", UUID="b41f0564-563c-43ec-b168-7a11e41b5368", Bucket="/some/dir/")


def record(pos: int, slice_id: int, size: int, off: int = 0, length: int | None = None) -> bytes:
    """One packed 24-byte slice record."""
    return SliceRecord(pos, slice_id, size, off, size - off if length is None else length).pack()


def plain(path: Path) -> closing[sqlite3.Connection]:
    """A plain read-only sqlite3 connection (the store's code is not involved)."""
    return closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True))


def side_files(path: Path) -> list[str]:
    """The -wal, -shm and -journal files beside a database."""
    return sorted(p.name for p in path.parent.glob(f"{path.name}-*"))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@contextmanager
def read_through_store(meta_dir: Path) -> Iterator[MetaTxn]:
    """A read transaction of the store opened read-only on ``meta_dir``."""
    with (
        closing(SQLiteMetaStore.open(meta_dir, read_only=True)) as store,
        store.transaction() as txn,
    ):
        yield txn


@pytest.fixture
def meta_dir(tmp_path: Path) -> Path:
    return tmp_path / "meta"


@pytest.fixture
def store(meta_dir: Path) -> Iterator[SQLiteMetaStore]:
    """A writable store formatted as `juicefs format` formats the example volume."""
    store = SQLiteMetaStore.open(meta_dir)
    store.format(juicefs_default_format(), NOW_NS)
    yield store
    store.close()


@pytest.fixture
def db_path(store: SQLiteMetaStore, meta_dir: Path) -> Path:
    return meta_dir / "meta.db"


# --------------------------------------------------------------------------- schema


def schema_rows(path: Path) -> list[tuple[str, str | None]]:
    with plain(path) as conn:
        return conn.execute("SELECT name, sql FROM sqlite_master ORDER BY rowid").fetchall()


def assert_exact_schema(path: Path) -> None:
    rows = schema_rows(path)
    assert [name for name, _ in rows] == EXPECTED_SCHEMA_NAMES
    written = [sql for name, sql in rows if sql is not None and name != "sqlite_sequence"]
    assert written == list(EXPECTED_DDL)


def test_live_database_has_the_exact_schema(db_path: Path) -> None:
    assert_exact_schema(db_path)


def test_snapshot_and_restored_copy_keep_the_exact_schema(
    store: SQLiteMetaStore, tmp_path: Path
) -> None:
    populate(store)
    store.snapshot(tmp_path / "index.db")
    assert_exact_schema(tmp_path / "index.db")
    SQLiteMetaStore.restore(tmp_path / "index.db", tmp_path / "restored")
    assert_exact_schema(tmp_path / "restored" / "meta.db")


def test_the_specification_states_the_same_schema_and_json() -> None:
    spec = (Path(__file__).parents[2] / "spec" / "index-format.md").read_text()
    ddl = spec.split("```sql\n", 1)[1].split("```", 1)[0]
    assert ddl.splitlines() == list(EXPECTED_DDL)
    assert f"```json\n{EXPECTED_FORMAT_JSON}\n```" in spec


# --------------------------------------------------------------------------- rows of a new volume


def test_format_json_is_what_juicefs_writes(db_path: Path) -> None:
    with plain(db_path) as conn:
        rows = conn.execute("SELECT name, value, typeof(value) FROM jfs_setting").fetchall()
    assert rows == [("format", EXPECTED_FORMAT_JSON, "text")]


def test_counters_after_format(db_path: Path) -> None:
    with plain(db_path) as conn:
        rows = conn.execute("SELECT name, value, typeof(name) FROM jfs_counter ORDER BY rowid")
        assert rows.fetchall() == [
            ("nextInode", 2, "text"),
            ("nextChunk", 1, "text"),
            ("nextSession", 0, "text"),
            ("usedSpace", 0, "text"),
            ("totalInodes", 0, "text"),
            ("nextCleanupSlices", 0, "text"),
        ]


def test_root_and_trash_rows(db_path: Path) -> None:
    common = {
        "type": 2, "flags": 0, "uid": 0, "gid": 0,
        "atime": NOW_US, "mtime": NOW_US, "ctime": NOW_US,
        "atimensec": NOW_NSEC, "mtimensec": NOW_NSEC, "ctimensec": NOW_NSEC,
        "nlink": 2, "length": 4096, "rdev": 0, "parent": 1,
        "access_acl_id": 0, "default_acl_id": 0, "tier_id": 0,
    }  # fmt: skip
    with plain(db_path) as conn:
        nodes = list(sqlite_utils.Database(conn)["jfs_node"].rows)
    assert nodes == [
        {"inode": 1, "mode": 0o777, **common},
        {"inode": 0x7FFFFFFF10000000, "mode": 0o555, **common},
    ]


def test_format_writes_no_other_rows(db_path: Path) -> None:
    with plain(db_path) as conn:
        db = sqlite_utils.Database(conn)
        counts = {name: db[name].count for name in db.table_names() if db[name].count}
    # no edge for root or trash, and (as juicefs format) no dir_stats row
    assert counts == {"jfs_setting": 1, "jfs_counter": 6, "jfs_node": 2}


def test_no_trash_row_without_trash_days(tmp_path: Path) -> None:
    fmt = juicefs_default_format()
    fmt.TrashDays = 0
    with closing(SQLiteMetaStore.open(tmp_path)) as store:
        store.format(fmt, NOW_NS)
    with plain(tmp_path / "meta.db") as conn:
        assert conn.execute("SELECT inode FROM jfs_node").fetchall() == [(1,)]
        assert '"TrashDays": 0,' in conn.execute("SELECT value FROM jfs_setting").fetchone()[0]


# --------------------------------------------------------------------------- encodings


def test_storage_classes(store: SQLiteMetaStore, db_path: Path) -> None:
    populate(store)
    with store.transaction(write=True) as txn:
        for n in range(3):
            txn.append_chunk(2, 7, record(n * 10, 40 + n, 10))
    with plain(db_path) as conn:

        def classes(sql: str) -> set[str]:
            return {row[0] for row in conn.execute(sql)}

        assert classes("SELECT typeof(name) FROM jfs_edge") == {"blob"}
        assert classes("SELECT typeof(target) FROM jfs_symlink") == {"blob"}
        assert classes("SELECT typeof(name) FROM jfs_xattr") == {"text"}
        assert classes("SELECT typeof(value) FROM jfs_xattr") == {"blob"}
        assert classes("SELECT typeof(slices) FROM jfs_chunk") == {"blob"}
        assert classes("SELECT typeof(name) || typeof(value) FROM jfs_counter") == {"textinteger"}
        lengths = conn.execute("SELECT length(slices) FROM jfs_chunk WHERE inode = 2 AND indx = 7")
        assert lengths.fetchone() == (3 * 24,)


def test_nullable_node_columns_hold_zero(store: SQLiteMetaStore, db_path: Path) -> None:
    populate(store)
    with store.transaction(write=True) as txn:
        txn.set_attr(30, Attr(type=TYPE_FILE, mode=0o644))
    with plain(db_path) as conn:
        row = conn.execute(
            "SELECT rdev, parent, access_acl_id, default_acl_id, tier_id, "
            "typeof(rdev) || typeof(parent) || typeof(access_acl_id) || typeof(default_acl_id) "
            "|| typeof(tier_id) FROM jfs_node WHERE inode = 30"
        ).fetchone()
        nulls = conn.execute(
            "SELECT count(*) FROM jfs_node WHERE rdev IS NULL OR parent IS NULL "
            "OR access_acl_id IS NULL OR default_acl_id IS NULL OR tier_id IS NULL"
        ).fetchone()
    assert row == (0, 0, 0, 0, 0, "integer" * 5)
    assert nulls == (0,)


def test_modes_are_twelve_permission_bits(store: SQLiteMetaStore, db_path: Path) -> None:
    with store.transaction(write=True) as txn:
        txn.set_attr(2, Attr(type=TYPE_FILE, mode=0o100644))  # S_IFREG leaked into the mode
        txn.set_attr(3, Attr(type=TYPE_DIRECTORY, mode=0o7777))
    with plain(db_path) as conn:
        modes = conn.execute("SELECT inode, type, mode FROM jfs_node WHERE inode IN (2, 3)")
        assert modes.fetchall() == [(2, 1, 0o644), (3, 2, 0o7777)]


@pytest.mark.parametrize(
    "time_ns, us, nsec",
    [
        (NOW_NS, NOW_US, NOW_NSEC),
        (1795515552202179999, 1795515552202179, 999),
        (0, 0, 0),
        (-1, -1, 999),  # floor division: the remainder stays in 0..999
        (-1_500, -2, 500),
    ],
)
def test_times_are_microseconds_plus_nanoseconds(
    store: SQLiteMetaStore, db_path: Path, time_ns: int, us: int, nsec: int
) -> None:
    attr = Attr(type=TYPE_FILE, mode=0o644, atime_ns=time_ns, mtime_ns=time_ns, ctime_ns=time_ns)
    with store.transaction(write=True) as txn:
        txn.set_attr(2, attr)
    with plain(db_path) as conn:
        row = conn.execute(
            "SELECT atime, atimensec, mtime, mtimensec, ctime, ctimensec FROM jfs_node "
            "WHERE inode = 2"
        ).fetchone()
    assert row == (us, nsec) * 3
    with store.transaction() as txn:
        assert txn.get_attr(2) == attr


def test_chunk_and_slice_reference_rows(store: SQLiteMetaStore, db_path: Path) -> None:
    with store.transaction(write=True) as txn:
        txn.append_chunk(2, 1, record(0, 5, 1 << 20))
        txn.append_chunk(2, 1, record(100, 0, 0, 0, 10))
        txn.add_slice_ref(5, 1 << 20, 1)
        txn.add_slice_ref(5, 1 << 20, 1)
        txn.add_slice_ref(6, 4096, 1)
        txn.add_slice_ref(6, 4096, -1)
    with plain(db_path) as conn:
        chunks = conn.execute("SELECT inode, indx, slices FROM jfs_chunk").fetchall()
        refs = conn.execute("SELECT chunkid, size, refs FROM jfs_chunk_ref ORDER BY chunkid")
        assert refs.fetchall() == [(5, 1 << 20, 2), (6, 4096, 0)]
    assert chunks == [(2, 1, record(0, 5, 1 << 20) + record(100, 0, 0, 0, 10))]


# --------------------------------------------------------------------------- journal modes


def test_live_database_is_in_wal_mode(db_path: Path) -> None:
    with plain(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_snapshot_is_one_rollback_journal_file(store: SQLiteMetaStore, tmp_path: Path) -> None:
    populate(store)
    index = tmp_path / "out" / "index.db"
    index.parent.mkdir()
    size = store.snapshot(index)
    assert sorted(p.name for p in index.parent.iterdir()) == ["index.db"]
    header = index.read_bytes()[:100]
    assert size == index.stat().st_size
    assert (header[18], header[19]) == (1, 1)  # rollback journal, not WAL
    digest = md5(index)
    with plain(index) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert side_files(index) == []
    assert md5(index) == digest


def test_read_only_open_changes_nothing(store: SQLiteMetaStore, tmp_path: Path) -> None:
    """A restored index and a closed WAL database both open read-only without side files."""
    populate(store)
    store.snapshot(tmp_path / "index.db")
    store.close()
    SQLiteMetaStore.restore(tmp_path / "index.db", tmp_path / "restored")
    for path in (tmp_path / "restored" / "meta.db", tmp_path / "meta" / "meta.db"):
        digest = md5(path)
        with read_through_store(path.parent) as txn:
            assert len(list(txn.iter_attrs())) > 2
            assert txn.read_chunk(2, 0) != b""
        assert side_files(path) == []
        assert md5(path) == digest


def test_a_verified_restore_skips_the_page_scan(
    store: SQLiteMetaStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """quick_check reads every page; a file that matched its recorded hash skips it (the
    schema, Format and root inode are still checked)."""
    import volume_sqlite._store as sqlite_store

    populate(store)
    store.snapshot(tmp_path / "index.db")
    monkeypatch.setattr(sqlite_store, "_QUICK_CHECK", "SELECT 'the scan ran'")
    with pytest.raises(VolumeIndexCorrupt, match="the scan ran"):
        SQLiteMetaStore.restore(tmp_path / "index.db", tmp_path / "checked")
    SQLiteMetaStore.restore(tmp_path / "index.db", tmp_path / "verified", verified=True)
    with read_through_store(tmp_path / "verified") as txn:
        assert txn.get_attr(2) is not None


def test_read_only_open_of_a_restored_index_takes_no_file_lock(
    store: SQLiteMetaStore, tmp_path: Path
) -> None:
    """A restored index is opened immutable: its reads take no lock and reread no header, so
    a lock another connection holds on the file does not stop them (a locking reader would
    wait out its 5 s busy timeout, then fail with "database is locked")."""
    populate(store)
    store.snapshot(tmp_path / "index.db")
    SQLiteMetaStore.restore(tmp_path / "index.db", tmp_path / "restored")
    path = tmp_path / "restored" / "meta.db"
    with closing(SQLiteMetaStore.open(path.parent, read_only=True)) as ro:
        with closing(sqlite3.connect(path, isolation_level=None)) as locker:
            locker.execute("BEGIN EXCLUSIVE")
            assert ro.read_attr(2) is not None
            with ro.transaction() as txn:
                assert txn.read_chunk(2, 0) != b""
            locker.execute("ROLLBACK")
    assert side_files(path) == []


def test_read_only_open_beside_a_live_writer_sees_its_commits(store: SQLiteMetaStore) -> None:
    """A database a writer has open (its -wal exists) is not declared immutable: a read-only
    store opened beside it reads what the writer commits later."""
    populate(store)
    meta = store._db_path.parent
    with closing(SQLiteMetaStore.open(meta, read_only=True)) as ro:
        assert ro.read_attr(2).length != 777_777
        with store.transaction(write=True) as txn:
            attr = txn.get_attr(2)
            attr.length = 777_777
            txn.set_attr(2, attr)
        assert ro.read_attr(2).length == 777_777


# --------------------------------------------------------------------------- client-written data


def create_client_database(path: Path, wal: bool = False) -> None:
    """A database laid out as the JuiceFS client leaves it: NULL in nullable node columns and
    chunk slices turned into TEXT by the client's `slices || ?` appends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        if wal:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN")
        for statement in EXPECTED_DDL:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO jfs_setting VALUES ('format', ?)", (juicefs_default_format().to_json(),)
        )
        node = (
            "INSERT INTO jfs_node (inode, type, flags, mode, uid, gid, atime, mtime, ctime, "
            "nlink, length, rdev, parent, access_acl_id, default_acl_id, tier_id) "
            "VALUES (?, ?, 0, ?, 0, 0, ?, ?, ?, ?, ?, NULL, ?, NULL, NULL, NULL)"
        )
        conn.execute(node, (1, 2, 0o777, NOW_US, NOW_US, NOW_US, 2, 4096, 1))
        conn.execute(node, (2, 1, 0o644, NOW_US, NOW_US, NOW_US, 1, 3 << 20, None))
        conn.execute(
            "INSERT INTO jfs_edge (parent, name, inode, type) VALUES (1, ?, 2, 1)", (b"f",)
        )
        conn.execute("INSERT INTO jfs_counter VALUES ('nextInode', 3), ('nextChunk', 4)")
        conn.execute("INSERT INTO jfs_chunk (inode, indx, slices) VALUES (2, 0, ?)", (CLIENT[0],))
        for appended in CLIENT[1:]:
            conn.execute(
                "UPDATE jfs_chunk SET slices = slices || ? WHERE inode = 2 AND indx = 0",
                (appended,),
            )
        conn.execute("COMMIT")


# three writes and a truncate: the records hold runs of NUL bytes
CLIENT = [
    record(0, 1, 1 << 20),
    record(1 << 20, 2, 1 << 20),
    record(2 << 20, 3, 1 << 20),
    record(1000, 0, 0, 0, (3 << 20) - 1000),
]


def test_client_text_slices_read_back_exactly(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    create_client_database(db)
    with plain(db) as conn:
        query = conn.execute("SELECT typeof(slices), length(slices) FROM jfs_chunk")
        kind, text_length = query.fetchone()
    assert kind == "text" and text_length < 4 * 24  # length() stops at the first NUL
    with read_through_store(tmp_path) as txn:
        assert txn.read_chunk(2, 0) == b"".join(CLIENT)
        assert list(txn.iter_chunks()) == [(2, 0, b"".join(CLIENT))]
    with closing(SQLiteMetaStore.open(tmp_path)) as store, store.transaction(write=True) as txn:
        assert txn.append_chunk(2, 0, record(0, 0, 0, 0, 1)) == 5
        assert txn.read_chunk(2, 0) == b"".join(CLIENT) + record(0, 0, 0, 0, 1)
    with plain(db) as conn:
        assert conn.execute("SELECT typeof(slices) FROM jfs_chunk").fetchone() == ("blob",)


def test_client_null_columns_read_as_zero(tmp_path: Path) -> None:
    create_client_database(tmp_path / "meta.db")
    with read_through_store(tmp_path) as txn:
        root, file = txn.get_attr(ROOT_INODE), txn.get_attr(2)
        assert txn.lookup(ROOT_INODE, b"f") == (2, TYPE_FILE)
    assert root == Attr(
        type=TYPE_DIRECTORY, mode=0o777, atime_ns=NOW_US * 1000, mtime_ns=NOW_US * 1000,
        ctime_ns=NOW_US * 1000, nlink=2, length=4096, parent=ROOT_INODE,
    )  # fmt: skip
    assert (file.rdev, file.parent, file.access_acl, file.default_acl, file.tier) == (0,) * 5


def test_client_wal_database_opens_read_only_without_side_files(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    create_client_database(db, wal=True)
    assert db.read_bytes()[18:20] == b"\x02\x02" and side_files(db) == []
    digest = md5(db)
    with read_through_store(tmp_path) as txn:
        assert txn.read_chunk(2, 0) == b"".join(CLIENT)
    assert side_files(db) == []
    assert md5(db) == digest


def test_client_database_restores(tmp_path: Path) -> None:
    create_client_database(tmp_path / "client" / "meta.db", wal=True)
    SQLiteMetaStore.restore(tmp_path / "client" / "meta.db", tmp_path / "restored")
    restored = tmp_path / "restored" / "meta.db"
    assert restored.read_bytes()[18:20] == b"\x01\x01"
    with read_through_store(restored.parent) as txn:
        assert txn.read_chunk(2, 0) == b"".join(CLIENT)
        assert txn.get_counter(COUNTER_NEXT_INODE) == 3


# --------------------------------------------------------------------------- invalid indexes


def corrupt_index(kind: str, source: Path, path: Path) -> None:
    """Write an invalid index of the given kind to ``path`` (``source`` is a valid one)."""
    if kind == "damaged-page":
        data = bytearray(source.read_bytes())
        page_size = int.from_bytes(data[16:18], "big")
        for page in range(1, len(data) // page_size):  # keep the header page intact
            data[page * page_size : page * page_size + 64] = b"\xa5" * 64
        path.write_bytes(bytes(data))
        return
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        if kind == "no-schema":
            conn.execute("CREATE TABLE unrelated (x)")
            return
        for statement in EXPECTED_DDL:
            if kind == "v1.3-schema":  # jfs_node as JuiceFS 1.3 created it
                statement = statement.replace(", `tier_id` INTEGER NULL", "")
            conn.execute(statement)
        if kind == "no-format-row":
            return
        value = "{not json" if kind == "bad-json" else juicefs_default_format().to_json()
        conn.execute("INSERT INTO jfs_setting VALUES ('format', ?)", (value,))
        if kind != "no-root":
            conn.execute(
                "INSERT INTO jfs_node VALUES (1, 2, 0, 511, 0, 0, 0, 0, 0, 0, 0, 0, 2, 4096, 0, 1"
                + (", 0, 0)" if kind == "v1.3-schema" else ", 0, 0, 0)")
            )


@pytest.mark.parametrize(
    "kind, message",
    [
        ("no-schema", "no jfs_setting row"),
        ("no-format-row", "no jfs_setting row"),
        ("bad-json", "not a valid Format"),
        ("v1.3-schema", "tier_id"),
        ("no-root", "no root inode"),
        ("damaged-page", "damaged"),
    ],
)
def test_restore_refuses_invalid_databases(
    store: SQLiteMetaStore, tmp_path: Path, kind: str, message: str
) -> None:
    populate(store)
    store.snapshot(tmp_path / "good.db")
    corrupt_index(kind, tmp_path / "good.db", tmp_path / "bad.db")
    with pytest.raises(VolumeIndexCorrupt, match=message):
        SQLiteMetaStore.restore(tmp_path / "bad.db", tmp_path / "restored")
    assert not (tmp_path / "restored" / "meta.db").exists()


def test_restore_removes_stale_side_files(store: SQLiteMetaStore, tmp_path: Path) -> None:
    store.snapshot(tmp_path / "index.db")
    target = tmp_path / "target"
    target.mkdir()
    (target / "meta.db-wal").write_bytes(b"stale" * 1000)
    (target / "meta.db-shm").write_bytes(b"\0" * 32768)
    SQLiteMetaStore.restore(tmp_path / "index.db", target)
    assert sorted(p.name for p in target.iterdir()) == ["meta.db"]


def test_opening_a_file_that_is_no_database(tmp_path: Path) -> None:
    (tmp_path / "meta.db").write_bytes(b"definitely not SQLite" * 100)
    for read_only in (False, True):
        with pytest.raises(VolumeIndexCorrupt):
            SQLiteMetaStore.open(tmp_path, read_only=read_only)


def test_read_only_open_of_a_missing_database(tmp_path: Path) -> None:
    with pytest.raises(MetaStoreError, match="no metadata database"):
        SQLiteMetaStore.open(tmp_path / "absent", read_only=True)
    assert not (tmp_path / "absent").exists()


# --------------------------------------------------------------------------- transactions


def test_transactions_do_not_nest(store: SQLiteMetaStore) -> None:
    with store.transaction(write=True) as txn:
        txn.set_counter("kept", 1)
        with pytest.raises(MetaStoreError, match="do not nest"), store.transaction():
            pass
        with pytest.raises(MetaStoreError, match="inside a transaction"):
            store.snapshot(store._db_path.parent / "never.db")
    with store.transaction() as txn:
        assert txn.get_counter("kept") == 1


def test_database_errors_leave_the_block_as_meta_store_errors(store: SQLiteMetaStore) -> None:
    with store.transaction(write=True) as txn:
        txn.add_entry(ROOT_INODE, b"twice", 2, TYPE_FILE)
    with pytest.raises(MetaStoreError, match="UNIQUE"), store.transaction(write=True) as txn:
        txn.set_counter("rolled-back", 1)
        txn.add_entry(ROOT_INODE, b"twice", 3, TYPE_FILE)
    with store.transaction() as txn:
        assert txn.get_counter("rolled-back") == 0
        assert txn.lookup(ROOT_INODE, b"twice") == (2, TYPE_FILE)


def test_iterators_end_with_their_transaction(store: SQLiteMetaStore) -> None:
    with store.transaction() as txn:
        attrs = txn.iter_attrs()
    with pytest.raises(sqlite3.ProgrammingError):
        next(attrs)
