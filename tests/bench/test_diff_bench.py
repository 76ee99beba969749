"""`volume diff` on 100,000-file versions: seconds, and its ratio to dumping both indexes.

The versions are built straight in the metadata store (records as the engine writes them), so the
benchmark measures the diff, not 100,000 file creations. The baseline, measured in the same run, is
``volume.dump.dump`` of both indexes (a JuiceFS dump: one pass over every record of each).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

from volume import dump
from volume.diff import diff_indexes
from volume.engine import format_volume, new_format
from volume.juicefs import TYPE_DIRECTORY, TYPE_FILE, Attr, SliceRecord

FILES = int(os.environ.get("VOLUME_BENCH_DIFF_FILES", 100_000))
DIRS = 100
CHANGES = 100  # of each kind


def _build(tmp: Path) -> tuple[Path, Path]:
    bucket = tmp / "bucket"
    meta = SQLiteMetaStore.open(tmp / "a")
    format_volume(
        meta,
        LocalObjectStore.from_uri(str(bucket)),
        new_format("diffbench", storage="file", bucket=f"{bucket}/"),
    )
    now = time.time_ns()
    per_dir = FILES // DIRS
    with meta.transaction(write=True) as tx:
        for d in range(DIRS):
            dino = 2 + d
            tx.set_attr(dino, Attr(type=TYPE_DIRECTORY, mode=0o755, nlink=2, length=4096, parent=1,
                                   mtime_ns=now))  # fmt: skip
            tx.add_entry(1, f"d{d:03d}".encode(), dino, TYPE_DIRECTORY)
            for i in range(per_dir):
                ino = 1000 + d * per_dir + i
                tx.set_attr(ino, Attr(type=TYPE_FILE, mode=0o644, length=100, parent=dino,
                                      mtime_ns=now))  # fmt: skip
                tx.add_entry(dino, f"f{i:05d}".encode(), ino, TYPE_FILE)
                tx.append_chunk(ino, 0, SliceRecord(0, ino, 100, 0, 100).pack())
                tx.add_slice_ref(ino, 100, 1)
    meta.snapshot(tmp / "a.db")
    meta.close()
    SQLiteMetaStore.restore(tmp / "a.db", tmp / "b")
    b = SQLiteMetaStore.open(tmp / "b")
    with b.transaction(write=True) as tx:
        for k in range(CHANGES):
            ino = 1000 + k * 7
            d, i = divmod(ino - 1000, per_dir)
            name = f"f{i:05d}".encode()
            if k % 4 == 0:  # renamed
                tx.remove_entry(2 + d, name)
                tx.add_entry(2 + d, name + b".moved", ino, TYPE_FILE)
            elif k % 4 == 1:  # removed
                tx.remove_entry(2 + d, name)
                tx.delete_attr(ino)
            elif k % 4 == 2:  # modified: a new slice over the old one
                tx.append_chunk(ino, 0, SliceRecord(0, 10**9 + ino, 10, 0, 10).pack())
            else:  # added
                new = 10**6 + k
                tx.set_attr(new, Attr(type=TYPE_FILE, mode=0o644, length=5, parent=2 + d))
                tx.add_entry(2 + d, f"new{k}".encode(), new, TYPE_FILE)
    b.close()
    return tmp / "a", tmp / "b"


def test_diff_of_100k_file_versions(tmp_path: Path) -> None:
    a_dir, b_dir = _build(tmp_path)
    a = SQLiteMetaStore.open(a_dir, read_only=True)
    b = SQLiteMetaStore.open(b_dir, read_only=True)
    started = time.perf_counter()
    with open(os.devnull, "w") as sink:
        dump.dump(a, sink)
        dump.dump(b, sink)
    baseline = time.perf_counter() - started
    started = time.perf_counter()
    d = diff_indexes(a, b)
    seconds = time.perf_counter() - started
    print(f"\ndiff of two {FILES}-file versions: {seconds:.2f} s; dump of both indexes "
          f"{baseline:.2f} s; ratio {seconds / baseline:.2f}")  # fmt: skip
    assert d.counts() == {"added": 25, "removed": 25, "modified": 25, "renamed": 25}
    assert seconds < baseline  # a diff reads less than a dump writes
    a.close()
    b.close()
