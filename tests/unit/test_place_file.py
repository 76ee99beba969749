"""``volume.stores.place_file``: how a restore puts an index file in place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from volume.stores import place_file


def test_a_copy_keeps_the_source(tmp_path: Path) -> None:
    source, dest = tmp_path / "index", tmp_path / "meta.db"
    source.write_bytes(b"index bytes")
    place_file(source, dest, move=False)
    assert source.read_bytes() == dest.read_bytes() == b"index bytes"


def test_a_move_on_one_file_system_is_a_rename(tmp_path: Path) -> None:
    source, dest = tmp_path / "index", tmp_path / "meta.db"
    source.write_bytes(b"index bytes")
    inode = source.stat().st_ino
    place_file(source, dest, move=True)
    assert not source.exists()
    assert dest.read_bytes() == b"index bytes" and dest.stat().st_ino == inode  # no copy


def test_a_move_across_file_systems_copies_then_removes(tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    with tempfile.TemporaryDirectory(dir=other) as elsewhere:
        source = Path(elsewhere) / "index"
        source.write_bytes(b"index bytes")
        place_file(source, tmp_path / "meta.db", move=True)
        assert not source.exists()
    assert (tmp_path / "meta.db").read_bytes() == b"index bytes"
    assert os.listdir(tmp_path) == ["meta.db"]
