"""SQLite metadata store plugin: a volume's namespace as a JuiceFS v1.4 SQLite metadata database.

A committed index of this store is a database the JuiceFS client mounts as is
(``juicefs mount sqlite3:///path/meta.db /mnt --read-only``). The format is described in
``spec/index-format.md``.
"""

from __future__ import annotations

from ._store import INDEX_FILENAME, SQLiteMetaStore
from ._txn import SQLiteTxn

__all__ = ["INDEX_FILENAME", "SQLiteMetaStore", "SQLiteTxn"]
