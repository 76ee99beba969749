"""Redis metadata store plugin: a volume's namespace in the JuiceFS 1.x Redis layout.

Each open store runs a private ``redis-server`` on a unix socket inside its meta dir (no TCP
port). A committed index is the server's RDB file (``meta.rdb``): ``redis-server`` started on it
serves a database the JuiceFS client mounts (``juicefs mount unix://<dir>/redis.sock /mnt``).
The layout is described in ``spec/index-format.md``.
"""

from __future__ import annotations

from ._errors import RedisServerGone, RedisServerNotFound, RedisServerStartError
from ._store import INDEX_FILENAME, RedisMetaStore
from ._txn import RedisTxn

__all__ = [
    "INDEX_FILENAME",
    "RedisMetaStore",
    "RedisServerGone",
    "RedisServerNotFound",
    "RedisServerStartError",
    "RedisTxn",
]
