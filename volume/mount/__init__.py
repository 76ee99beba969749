"""Kernel transports of a mounted volume: FUSE (:mod:`volume.mount.fuse`)."""

from .fuse import FuseMount, fuse_usable

__all__ = ["FuseMount", "fuse_usable"]
