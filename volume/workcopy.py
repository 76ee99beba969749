"""Working copies beyond one call: claiming a new volume's name, resuming a working copy left in
a ``meta_dir``, and what happens to live mounts when the process exits or is signalled.

* **Claiming a name** (:func:`claim_name`): ``<Name>/juicefs_uuid`` is written create-only, so two
  first mounts of one name never both win. A first mount that fails after claiming the name is
  resumed by the next first mount of the same volume in the same process (and, through its
  ``meta_dir``, by any later mount that passes that ``meta_dir``) instead of refusing the name.
* **Resuming** (:func:`resumable`): a writable mount records its working copy in the meta dir's
  marker (state ``in-use``). Only an explicit ``unmount()`` abandons it (state ``abandoned``) and
  ``finalize`` closes it (state ``published``); after a crash, a SIGKILL, a signal or an exit
  without finalizing, the next writable mount of the same volume with the same ``meta_dir``
  continues from it, with everything fsync'd before.
* **Keeping it from gc** (:func:`keep`): a copy in a ``meta_dir`` that outlives its process reads
  blocks no version references, so its slice domains are marked kept in the bucket before its
  session stores a block; finalizing or discarding the copy removes the marks (:func:`unkeep`).
* **Exit and signals** (:func:`track_mount`): a process that exits with a writable mount whose
  changes are unpublished says so on stderr; SIGTERM and SIGINT end the process through the
  normal exit path (mounts are unmounted cleanly, nothing is published unless the program's own
  ``finally`` / ``with`` blocks ask for it). Temporary meta dirs never outlive their process.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from . import keys
from .errors import ObjectExists, ObjectNotFound, VolumeBucketNotEmpty, VolumeStoreMismatch
from .juicefs import Format
from .stores import ObjectStore

if TYPE_CHECKING:
    from .metadir import MetaDir
    from .mounts import Mount
    from .model import Volume

log = logging.getLogger("volume.workcopy")

EXIT_UNMOUNT_SECONDS = 2.0  # how long an exiting process waits for its busy mounts' users
IN_USE, ABANDONED, PUBLISHED = "in-use", "abandoned", "published"

_lock = threading.RLock()
# (bucket URI, volume name) -> UUID a first mount of this process claimed before failing
_failed_first_mounts: dict[tuple[str, str], str] = {}
_live: dict[int, "Mount"] = {}  # id(mount) -> mount, for the exit and signal paths
_temp_dirs: set[Path] = set()  # temporary meta dirs of this process still on disk
_signalled: Optional[int] = None  # the signal that is ending the process, once one arrived
_handlers_installed = False


# =========================================================================== names


def _refuse_if_not_empty(objects: ObjectStore, prefix: str) -> None:
    for info in objects.list(prefix):
        rel = info.key[len(prefix) :]
        if info.size > 0 and rel != "testing" and not rel.startswith("testing/"):
            raise VolumeBucketNotEmpty(
                f"the bucket prefix {objects.uri.rstrip('/')}/{prefix} already holds data "
                f"(for example {info.key!r}); a new volume is never formatted over existing "
                f"objects: choose another volume name or bucket, or remove that prefix"
            )


def claim_name(objects: ObjectStore, fmt: Format) -> Format:
    """Claim ``fmt.Name`` for a new volume: ``juicefs_uuid`` put-if-absent. Returns the Format
    to use (this process's earlier failed claim is resumed with its UUID).

    Raises :class:`VolumeBucketNotEmpty` when the prefix holds data or another first mount won.
    """
    prefix = keys.family_prefix(fmt.Name)
    key = keys.uuid_key(fmt.Name)
    with _lock:
        earlier = _failed_first_mounts.get((objects.uri, fmt.Name))
    if earlier is not None:
        try:
            if objects.get(key).decode() == earlier:
                log.info("volume %s: resuming a first mount that failed half way", fmt.Name)
                return dataclasses.replace(fmt, UUID=earlier)
        except ObjectNotFound:
            pass
    _refuse_if_not_empty(objects, prefix)
    try:
        objects.put(key, fmt.UUID.encode(), if_absent=True)
    except ObjectExists:
        raise VolumeBucketNotEmpty(
            f"another first mount of {fmt.Name!r} in {objects.uri} claimed the name at the same "
            f"time; choose another volume name, or mount the other one's version"
        ) from None
    return fmt


def first_mount_failed(objects: ObjectStore, fmt: Format) -> None:
    """Remember that this process claimed ``fmt.Name`` and could not finish mounting it."""
    with _lock:
        _failed_first_mounts[(objects.uri, fmt.Name)] = fmt.UUID


def first_mount_done(objects: ObjectStore, fmt: Format) -> None:
    with _lock:
        _failed_first_mounts.pop((objects.uri, fmt.Name), None)


# =========================================================================== resuming


def working_copy_marker(volume: "Volume", objects: ObjectStore, store: str, domain: int,
                        fs_uuid: str, *, family: str, kept: list[int]) -> dict[str, Any]:  # fmt: skip
    """The marker fields of a live working copy of ``volume`` (``kept``: see :func:`keep`)."""
    return {
        "state": IN_USE,
        "store": store,
        "domain": domain,
        "volume": volume.name,
        "bucket": objects.uri,
        "base": volume.index.path if volume.index is not None else None,
        "uuid": fs_uuid,
        "family": family,
        "kept": kept,
    }


def kept_domains(md: "MetaDir", resumed_from: Optional[dict[str, Any]], domain: int) -> list[int]:
    """The slice domains whose blocks the working copy in ``md`` may read once this session
    (in ``domain``) is left behind: none for a temporary meta dir (it never outlives its
    process), else the domains of the copy it resumes (``resumed_from``, its marker) and its own.
    """
    if md.owned:
        return []
    earlier: list[int] = []
    if resumed_from is not None:
        earlier = list(resumed_from.get("kept") or [])
        if resumed_from.get("domain") is not None:  # a copy made before kept marks existed
            earlier.append(int(resumed_from["domain"]))
    return sorted({*earlier, domain})


def keep(md: "MetaDir", objects: ObjectStore) -> None:
    """Mark the domains of the working copy in ``md`` kept in the bucket (``volume.gc.keep``),
    before the session stores any block: gc then never deletes a block a resume may read, however
    long the copy waits (a crash, SIGKILL, or an exit without finalizing leaves it behind)."""
    from . import gc

    marker = md.marker() or {}
    if marker.get("kept"):
        gc.keep(objects, marker["family"], marker["kept"], volume=marker.get("volume"),
                meta_dir=str(md.path))  # fmt: skip


def unkeep(md: "MetaDir", objects: ObjectStore) -> None:
    """The working copy in ``md`` is finalized or discarded: remove its kept marks (a failure is
    logged: the marks only keep blocks longer, and gc lists them)."""
    from . import gc

    marker = md.marker()
    if not marker or not marker.get("kept"):
        return
    try:
        gc.unkeep(objects, marker["family"], marker["kept"])
    except Exception as exc:  # noqa: BLE001
        log.warning("volume %s: could not remove the kept marks of domains %s in %s: %s",
                    marker.get("volume"), marker["kept"], objects.uri, exc)  # fmt: skip
        return
    md.set_marker(**{**marker, "kept": []})


def refuse_unpublished(md: "MetaDir") -> None:
    """Refuse to reuse ``md`` for a read-only mount, a fork or a migration while it holds an
    unpublished working copy (:class:`VolumeStoreMismatch`): it would be lost silently."""
    marker = md.marker()
    if marker is not None and marker.get("state") == IN_USE:
        raise VolumeStoreMismatch(
            f"meta_dir {md.path} holds unpublished changes of volume {marker.get('volume')!r} "
            f"(a working copy kept for a resume); mount that volume writable with this meta_dir "
            f"to resume and finalize them, or pass another meta_dir"
        )


def discard_unresumed(md: "MetaDir", objects: ObjectStore) -> None:
    """Before ``md`` is cleared for another volume: an unpublished working copy of another
    volume kept there is discarded, so its kept marks go too (when they are in this bucket)."""
    marker = md.marker()
    if not marker or marker.get("state") != IN_USE or not marker.get("kept"):
        return
    if marker.get("bucket") == objects.uri:
        unkeep(md, objects)
    else:
        log.warning("meta_dir %s: the discarded working copy of %r keeps domains %s of bucket "
                    "%s (volume gc lists them)", md.path, marker.get("volume"), marker["kept"],
                    marker.get("bucket"))  # fmt: skip


def resumable(md: "MetaDir", volume: "Volume", objects: ObjectStore, store: str) -> bool:
    """Whether ``md`` holds an unpublished working copy of ``volume`` to continue from.

    A working copy of the same volume based on another version than the handle's is refused
    (:class:`VolumeStoreMismatch`): it would be lost silently otherwise.
    """
    marker = md.marker()
    if (
        marker is None
        or marker.get("state") != IN_USE
        or marker.get("volume") != volume.name
        or marker.get("bucket") != objects.uri
        or marker.get("store") != store
    ):
        return False
    base = volume.index.path if volume.index is not None else None
    if volume.index is not None and marker.get("base") != base:
        raise VolumeStoreMismatch(
            f"meta_dir {md.path} holds unpublished changes of volume {volume.name!r} made on "
            f"version {marker.get('base')!r}, not on {base!r}; mount that version (or a fresh "
            f"Volume handle of the name) with this meta_dir to resume them, or pass another "
            f"meta_dir"
        )
    return True


def check_uuid(objects: ObjectStore, fmt: Format) -> bool:
    """Whether the bucket's ``juicefs_uuid`` is ``fmt``'s (a resumed copy belongs here)."""
    try:
        return objects.get(keys.uuid_key(fmt.Name)).decode() == fmt.UUID
    except ObjectNotFound:
        return False


def repair_lost_blocks(meta: Any, objects: ObjectStore, domain: int) -> list[int]:
    """After a crash: turn the records of slices of session ``domain`` whose blocks never reached
    the store into holes (zeros), so the working copy stays readable and no commit publishes
    references to missing blocks. Only data that was never fsync'd can be affected (an fsync
    returns once its blocks are stored). Returns the inodes whose data was lost (logged loudly).
    """
    from .allocator import DOMAIN_BITS
    from .juicefs import (
        COUNTER_NEXT_CHUNK,
        SliceRecord,
        block_key,
        slice_blocks,
        unpack_slices,
    )

    fmt = meta.load_format()
    start = domain << DOMAIN_BITS
    with meta.transaction() as tx:
        end = max(tx.get_counter(COUNTER_NEXT_CHUNK), start)
        suspects = [
            (ino, indx, blob)
            for ino, indx, blob in tx.iter_chunks()
            if any(start <= r.id < end for r in unpack_slices(blob))
        ]
    if not suspects:
        return []
    block_size = fmt.BlockSize * 1024
    stored: set[str] | None = None
    if not fmt.HashPrefix and end - start < 50_000_000:
        stored = set()
        for group in range(start // 1_000_000, (end - 1) // 1_000_000 + 1):
            stored.update(i.key for i in objects.list(f"{keys.chunks_prefix(fmt.Name)}{group}/"))

    def complete(sid: int, size: int) -> bool:
        for indx, bsize in slice_blocks(size, block_size):
            key = block_key(fmt.Name, sid, indx, bsize, fmt.HashPrefix)
            if not (key in stored if stored is not None else objects.exists(key)):
                return False
        return True

    lost: dict[tuple[int, int], bool] = {}
    damaged: set[int] = set()
    with meta.transaction(write=True) as tx:
        for ino, indx, _ in suspects:
            records = unpack_slices(tx.read_chunk(ino, indx))
            fixed = []
            for r in records:
                if start <= r.id < end:
                    if (r.id, r.size) not in lost:
                        lost[(r.id, r.size)] = not complete(r.id, r.size)
                    if lost[(r.id, r.size)]:
                        if tx.add_slice_ref(r.id, r.size, -1) <= 0:
                            tx.add_slice_ref(r.id, r.size, 0)
                        r = SliceRecord(r.pos, 0, r.len, 0, r.len)
                        damaged.add(ino)
                fixed.append(r)
            if ino in damaged:
                tx.write_chunk(ino, indx, b"".join(r.pack() for r in fixed))
    if damaged:
        message = (
            f"volume: WARNING: the last session of this working copy was killed before the "
            f"blocks of {sum(lost.values())} slices were stored; the unsynced data of inodes "
            f"{sorted(damaged)[:20]} reads as zeros (everything fsync'd is intact)"
        )
        sys.stderr.write(message + "\n")
        log.info("%s", message)  # (stderr has it already; no second copy from logging)
    return sorted(damaged)


# =========================================================================== temporary dirs


TEMP_OWNER = ".volume-temp-owner"  # the pid of the process a temporary meta dir belongs to
_swept = False


def make_temp(volume_name: str) -> Path:
    """A new temporary meta dir of this process (removed on release, at exit, or, if this
    process is killed, by the next process that makes one)."""
    path = Path(tempfile.mkdtemp(prefix=f"volume-{volume_name}-"))
    (path / TEMP_OWNER).write_text(str(os.getpid()))
    track_temp(path)
    _sweep_dead_owners()
    return path


def _sweep_dead_owners() -> None:
    """Remove the temporary meta dirs of processes that died without cleaning up (SIGKILL)."""
    global _swept
    with _lock:
        if _swept:
            return
        _swept = True
    for owner in Path(tempfile.gettempdir()).glob(f"volume-*/{TEMP_OWNER}"):
        try:
            pid = int(owner.read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            log.info("removing %s, left by process %d that died", owner.parent, pid)
            _stop_orphan_servers(owner.parent)
            shutil.rmtree(owner.parent, ignore_errors=True)
        except (OSError, ValueError):
            continue  # alive (maybe another user's), or not ours to judge


def _stop_orphan_servers(path: Path) -> None:
    """Let every store with a server (``clear_meta_dir``: redis) stop the one a dead process
    left running in ``path`` before the directory goes."""
    from . import plugins

    for name in plugins.names(plugins.META_STORES):
        try:
            clear_dir = getattr(plugins.load(plugins.META_STORES, name), "clear_meta_dir", None)
            if clear_dir is not None:
                clear_dir(path)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the sweep
            log.warning("could not clear %s with the %s store: %s", path, name, exc)


def track_temp(path: Path) -> None:
    with _lock:
        _temp_dirs.add(path)
    _install_exit_hook()


def remove_temp(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with _lock:
        _temp_dirs.discard(path)


def remove_with(owner: object, path: Path) -> None:
    """Remove the temporary dir ``path`` once ``owner`` (a handle) is garbage (or at exit)."""
    track_temp(path)
    weakref.finalize(owner, _remove_if_unused, path)


def _remove_if_unused(path: Path) -> None:
    with _lock:
        if any(m.meta_dir.path == path for m in _live.values()):
            return  # a mount took it over: it goes when that mount is released
    remove_temp(path)


# =========================================================================== exit and signals


def track_mount(m: "Mount") -> None:
    with _lock:
        _live[id(m)] = m
    _install_exit_hook()
    _install_signal_handlers()


def untrack_mount(m: "Mount") -> None:
    with _lock:
        _live.pop(id(m), None)


def signalled() -> Optional[int]:
    """The signal ending this process, if one is (unmounts then keep the working copy)."""
    return _signalled


_exit_hook_installed = False


def _install_exit_hook() -> None:
    global _exit_hook_installed
    with _lock:
        if not _exit_hook_installed:
            atexit.register(_at_exit)
            _exit_hook_installed = True


def _install_signal_handlers() -> None:
    """SIGTERM (default: die at once) and SIGINT end the process through the normal exit path,
    so its mounts are unmounted and its working copies kept; handlers the program installed
    itself are left alone."""
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    _handlers_installed = True
    defaults = ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler))
    for sig, default in defaults:
        if signal.getsignal(sig) is default:
            signal.signal(sig, _on_signal)


def _on_signal(signum: int, frame: Any) -> None:
    global _signalled
    _signalled = signum
    name = signal.Signals(signum).name
    sys.stderr.write(f"volume: {name} received: unmounting (nothing is published)\n")
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _at_exit() -> None:
    """Unmount what is still mounted (saying loudly what is left unpublished), then remove the
    temporary meta dirs of this process."""
    with _lock:
        mounts = list(_live.values())
    for m in mounts:
        try:
            close_at_exit(m)
        except Exception:  # noqa: BLE001 - the others must still be released
            log.exception("volume %s: could not be unmounted at exit", m.volume_name)
    with _lock:
        leftovers = list(_temp_dirs)
    for path in leftovers:
        remove_temp(path)


def close_at_exit(m: "Mount") -> None:
    """Release ``m`` keeping its working copy (stored blocks, durable metadata) for a resume."""
    untrack_mount(m)
    if m.writable and getattr(m.engine, "modified", True):
        where = (
            f"the temporary meta_dir is removed, so they are LOST; call finalize() or commit() "
            f"before exiting, or mount with a meta_dir to keep them"
            if m.meta_dir.owned
            else f"they are kept in meta_dir {m.meta_dir.path}: mount the volume again with that "
            f"meta_dir to resume them"
        )
        message = (
            f"volume: WARNING: the process exits with RWVolume {m.volume_name!r} mounted and "
            f"changes not committed; {where}"
        )
        sys.stderr.write(message + "\n")
        log.info("%s", message)  # (stderr has it already; no second copy from logging)
    m.close(drain=m.writable and not m.meta_dir.owned, timeout=EXIT_UNMOUNT_SECONDS)
