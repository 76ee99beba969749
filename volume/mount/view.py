"""One view of a kernel-mounted volume: the in-process file system and the kernel mount agree.

The in-process ``.fs`` of a kernel-mounted handle works on :class:`KernelCoherentEngine`, the
engine seen through the mount: every modifying call goes to the engine, then the FUSE translator
forgets the paths it made stale (its path cache is dropped after a namespace change) and the
kernel is told to drop its attributes and pages of the names involved (libfuse's
``fuse_invalidate_path``). Names the kernel still holds resolve to the current namespace, since
libfuse asks the translator by path; new names are seen at once because writable mounts keep no
negative entries.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

# calls that change names: positions of (parent inode, name) among the arguments
NAMESPACE_CALLS = {
    "mkdir": ((0, 1),), "mknod": ((0, 1),), "symlink": ((0, 1),), "create": ((0, 1),),
    "unlink": ((0, 1),), "rmdir": ((0, 1),), "link": ((1, 2),), "rename": ((0, 1), (2, 3)),
}  # fmt: skip
# calls that change an inode's attributes or bytes: how to find the inode
INODE_CALLS = {"setattr", "setxattr", "removexattr"}
# calls that change an open file: position of the handle whose inode changed (for
# copy_file_range the destination, its third argument)
HANDLE_CALLS = {"write": 0, "release": 0, "flush": 0, "fallocate": 0, "copy_file_range": 2}


class KernelCoherentEngine:
    """An engine proxy for the in-process file system of a kernel-mounted volume."""

    def __init__(self, engine: Any, operations: Any):
        self._engine = engine
        self._operations = operations

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._engine, name)
        if name in NAMESPACE_CALLS:
            return self._after(attr, lambda args: self._operations.namespace_changed(
                [(args[p], os.fsdecode(args[n])) for p, n in NAMESPACE_CALLS[name] if len(args) > n]
            ))  # fmt: skip
        if name in INODE_CALLS:
            return self._after(attr, lambda args: self._operations.inode_changed(args[0]))
        if name in HANDLE_CALLS:
            inode_of = getattr(self._engine, "inode_of", None)
            if inode_of is None:
                return attr

            def call(*args: Any, **kwargs: Any) -> Any:
                ino = inode_of(args[HANDLE_CALLS[name]])
                try:
                    return attr(*args, **kwargs)
                finally:
                    self._operations.inode_changed(ino)

            return call
        return attr

    @staticmethod
    def _after(method: Callable[..., Any], notify: Callable[[tuple], None]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            finally:
                notify(args)

        return call
