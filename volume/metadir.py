"""Meta dirs: the local directory a mount or fork keeps a volume's metadata store in, held
exclusively (flock) while in use, with a marker saying what it holds; and staging a committed
index into one."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from . import workcopy
from .errors import VolumeAlreadyMounted, VolumeStoreMismatch, VolumeUsageError
from .locations import meta_class, restore_index
from .stores import MetaStore, ObjectStore

if TYPE_CHECKING:
    from .model import Volume

LOCK_FILE = ".volume.lock"
MARKER_FILE = ".volume-index.json"


@dataclass
class MetaDir:
    """A local metadata directory held exclusively (flock) while a mount or fork uses it."""

    path: Path
    owned: bool  # created here, removed on release
    lock_fd: int

    @classmethod
    def acquire(cls, meta_dir: Optional[os.PathLike | str], volume_name: str) -> "MetaDir":
        """Lock ``meta_dir`` (a new temporary directory when None)."""
        if meta_dir is None:
            path, owned = workcopy.make_temp(volume_name), True  # never outlives the process
        else:
            path, owned = Path(meta_dir).expanduser().resolve(), False
            if path.exists() and not path.is_dir():
                raise VolumeUsageError(f"meta_dir {path} is a file; pass a directory")
            path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise VolumeAlreadyMounted(
                f"meta_dir {path} is in use by another mount or fork; unmount that one first or "
                f"pass another meta_dir"
            ) from None
        return cls(path, owned, fd)

    def marker(self) -> dict[str, Any] | None:
        """What the directory holds, as recorded after the last complete preparation."""
        try:
            return json.loads((self.path / MARKER_FILE).read_text())
        except (OSError, ValueError):
            return None

    def set_marker(self, **fields: Any) -> None:
        tmp = self.path / f"{MARKER_FILE}.tmp"
        tmp.write_text(json.dumps(fields))
        tmp.replace(self.path / MARKER_FILE)

    def clear(self, store_cls: type[MetaStore]) -> None:
        """Forget the store kept here (the marker first, so a crash leaves nothing trusted)."""
        (self.path / MARKER_FILE).unlink(missing_ok=True)
        clear_dir = getattr(store_cls, "clear_meta_dir", None)
        if clear_dir is not None:  # a store with a server: stop a stale one, remove its files
            clear_dir(self.path)
        for suffix in ("", "-wal", "-shm", "-journal"):
            (self.path / f"{store_cls.index_filename}{suffix}").unlink(missing_ok=True)
        others = [p.name for p in self.path.iterdir() if p.name not in (LOCK_FILE,)]
        if others and not self.owned:
            raise VolumeStoreMismatch(
                f"meta_dir {self.path} holds files of another store or tool ({', '.join(others)}); "
                f"pass an empty directory"
            )

    def release(self) -> None:
        """Unlock (and remove the directory when it was created here)."""
        if self.lock_fd < 0:
            return
        os.close(self.lock_fd)
        self.lock_fd = -1
        if self.owned:
            workcopy.remove_temp(self.path)

    def set_state(self, state: str) -> None:
        """Record what became of the working copy kept here (see :mod:`volume.workcopy`)."""
        marker = self.marker()
        if marker is not None and marker.get("state") == workcopy.IN_USE:
            self.set_marker(**{**marker, "state": state})


def stage_index(
    volume: "Volume", objects: ObjectStore, md: MetaDir, *, purpose: str, replace_copy: bool = False
) -> None:
    """Make ``md`` hold the volume's committed index, reusing a pristine local copy. An
    unpublished working copy kept there is refused unless ``replace_copy`` (a writable mount of
    another volume, which discards it)."""
    index = volume.index
    assert index is not None
    store_cls = meta_class(volume)
    if index.format and index.format != store_cls.name:
        raise VolumeStoreMismatch(
            f"volume {volume.name!r} says metadata_store_type={store_cls.name!r} but its index "
            f"{index.path} is a {index.format!r} index; fix the volume document or migrate it"
        )
    local = md.path / store_cls.index_filename
    marker = md.marker()
    if (
        purpose == "read"
        and marker is not None
        and marker.get("state") == "pristine"
        and marker.get("path") == index.path
        and marker.get("hash") == index.hash
        and local.exists()
        and marker.get("size") == local.stat().st_size
    ):
        return
    if not replace_copy:
        workcopy.refuse_unpublished(md)
    if marker is not None and marker.get("store") not in (None, store_cls.name):
        raise VolumeStoreMismatch(
            f"meta_dir {md.path} holds a {marker.get('store')!r} store, but volume "
            f"{volume.name!r} uses {store_cls.name!r}; pass another meta_dir"
        )
    md.clear(store_cls)
    restore_index(volume, objects, store_cls, md.path)
    md.set_marker(
        path=index.path, size=local.stat().st_size, store=store_cls.name, state="pristine",
        hash=index.hash,
    )  # fmt: skip


