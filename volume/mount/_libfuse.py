"""libfuse 3 as mfusepy loads it, and the internals of libfuse this package reads through ctypes.

Shared by the translator (:mod:`.operations`: which request a call serves, path invalidation)
and the session (:mod:`.session`: the thread states of libfuse's worker threads).
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

# mfusepy loads libfuse 2 when both are installed unless told otherwise; this module speaks 3.
os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
try:
    import mfusepy
except (ImportError, OSError, AttributeError) as exc:  # no libfuse, or one mfusepy refuses
    mfusepy = None
    LIBFUSE_PROBLEM = f"libfuse 3 cannot be loaded ({exc}); install fuse3 (apt-get install fuse3)"
else:
    LIBFUSE_PROBLEM = (
        ""
        if mfusepy.fuse_version_major == 3
        else f"libfuse {mfusepy.fuse_version_major}.{mfusepy.fuse_version_minor} was loaded but "
        f"libfuse 3 is needed; install fuse3 or set FUSE_LIBRARY_NAME=fuse3"
    )

__all__ = ["Buf", "BufVec", "LIBFUSE_PROBLEM", "libfuse", "mfusepy", "python_api", "request_id"]


class _ContextAndRequest(ctypes.Structure):
    """libfuse's ``fuse_context_i``: the public context, then the request being served."""

    _fields_ = [
        ("ctx", mfusepy.fuse_context if mfusepy is not None else ctypes.c_void_p),
        ("req", ctypes.c_void_p),
    ]


class _RequestHead(ctypes.Structure):
    """The first fields of libfuse's ``struct fuse_req``."""

    _fields_ = [("session", ctypes.c_void_p), ("unique", ctypes.c_uint64)]


class Buf(ctypes.Structure):
    """libfuse's ``struct fuse_buf``: bytes in memory, or in a file descriptor."""

    _fields_ = [
        ("size", ctypes.c_size_t),
        ("flags", ctypes.c_int),
        ("mem", ctypes.c_void_p),
        ("fd", ctypes.c_int),
        ("pos", ctypes.c_int64),  # off_t
    ]


class BufVec(ctypes.Structure):
    """libfuse's ``struct fuse_bufvec`` (with its first buffer inline, which mfusepy's
    declaration has as a pointer)."""

    _fields_ = [
        ("count", ctypes.c_size_t),
        ("idx", ctypes.c_size_t),
        ("off", ctypes.c_size_t),
        ("buf", Buf * 1),
    ]


def request_id() -> int | None:
    """The kernel's id of the request this thread serves, from libfuse internals stable since
    libfuse 2 (None when there is no request)."""
    context = libfuse().fuse_get_context()
    if not context:
        return None
    request = ctypes.cast(context, ctypes.POINTER(_ContextAndRequest)).contents.req
    if not request:
        return None
    return ctypes.cast(request, ctypes.POINTER(_RequestHead)).contents.unique


@functools.lru_cache(maxsize=None)
def python_api() -> Any:
    """The C API calls that keep a worker thread's Python thread state, declared."""
    api = ctypes.pythonapi
    api.PyGILState_Ensure.restype = ctypes.c_int
    api.PyThreadState_Get.restype = ctypes.c_void_p
    api.PyThreadState_Clear.argtypes = (ctypes.c_void_p,)
    api.PyThreadState_Delete.argtypes = (ctypes.c_void_p,)
    return api


@functools.lru_cache(maxsize=None)
def libfuse() -> Any:
    """The libfuse library mfusepy loaded, with the calls mfusepy does not wrap declared."""
    lib = mfusepy._libfuse
    lib.fuse_invalidate_path.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
    lib.fuse_invalidate_path.restype = ctypes.c_int
    bufvec_p = ctypes.POINTER(BufVec)
    lib.fuse_buf_size.argtypes = (bufvec_p,)
    lib.fuse_buf_size.restype = ctypes.c_size_t
    lib.fuse_buf_copy.argtypes = (bufvec_p, bufvec_p, ctypes.c_int)
    lib.fuse_buf_copy.restype = ctypes.c_ssize_t
    return lib

