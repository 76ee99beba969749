"""volume.diff: added, removed, modified, renamed, from the two indexes alone."""

from __future__ import annotations

import uuid

import pytest

from volume import Volume
from volume.diff import diff_versions
from volume.testing.memory import MemoryObjectStore


@pytest.fixture
def bucket() -> str:
    name = f"diff-{uuid.uuid4().hex[:8]}"
    yield f"memory://{name}"
    MemoryObjectStore.reset(name)


def _changes(d):
    return sorted(
        (c.status, c.old_path, c.path, c.old_size, c.new_size, c.modified) for c in d.changes
    )


def test_every_kind_of_change_and_no_block_is_read(bucket: str):
    rw = Volume.new("diffvol", bucket=bucket).mount(transport="none")
    fs = rw._mount.pathfs
    fs.makedirs("/dir/sub")
    fs.write_bytes("/dir/sub/a.txt", b"aaaa")
    fs.write_bytes("/dir/b.txt", b"bbbb")
    fs.write_bytes("/same-size.txt", b"1234")
    fs.write_bytes("/grow.txt", b"x")
    fs.write_bytes("/gone.txt", b"gone!")
    fs.write_bytes("/moved.txt", b"moved")
    fs.write_bytes("/moved-and-changed.txt", b"m")
    fs.symlink("dir/b.txt", "/link")
    first = rw.commit("before")
    fs.rename("/dir", "/renamed-dir")  # one rename, not one per descendant
    fs.write_bytes("/same-size.txt", b"4321")  # same size, new slices
    fs.write_bytes("/grow.txt", b"xyz")
    fs.unlink("/gone.txt")
    fs.rename("/moved.txt", "/moved-here.txt")
    fs.rename("/moved-and-changed.txt", "/mc.txt")
    fs.write_bytes("/mc.txt", b"mm")
    fs.write_bytes("/new.txt", b"new file")
    fs.unlink("/link")
    fs.symlink("renamed-dir/b.txt", "/link")
    second = rw.finalize("after")

    store = MemoryObjectStore.from_uri(bucket)
    before = store.stats.copy()
    d = diff_versions(first, second)
    used = store.stats - before
    assert used.gets == 2 and used.get_bytes == first.index_bytes + second.index_bytes
    assert used.heads == 0 and used.puts == 0

    assert d.same_family
    link_size = len("renamed-dir/b.txt")
    assert _changes(d) == sorted([
        ("added", None, "/new.txt", None, 8, False),
        ("modified", None, "/grow.txt", 1, 3, False),
        ("modified", None, "/link", len("dir/b.txt"), link_size, False),
        ("modified", None, "/same-size.txt", 4, 4, False),
        ("removed", None, "/gone.txt", 5, None, False),
        ("renamed", "/dir", "/renamed-dir", 0, 0, False),
        ("renamed", "/moved-and-changed.txt", "/mc.txt", 1, 2, True),
        ("renamed", "/moved.txt", "/moved-here.txt", 5, 5, False),
    ])  # fmt: skip
    assert d.counts() == {"added": 1, "removed": 1, "modified": 3, "renamed": 3}
    assert diff_versions(second, second).changes == []


def test_versions_of_two_families_compare_as_trees(bucket: str):
    versions = []
    for name, text in (("fam-one", b"same"), ("fam-two", b"same")):
        rw = Volume.new(name, bucket=bucket).mount(transport="none")
        fs = rw._mount.pathfs
        fs.write_bytes("/same.txt", text)
        fs.write_bytes(f"/only-{name}.txt", b"x")
        fs.utime("/same.txt", ns=(10**18, 10**18))
        versions.append(rw.finalize())
    d = diff_versions(*versions)
    assert not d.same_family
    assert _changes(d) == [
        ("added", None, "/only-fam-two.txt", None, 1, False),
        ("removed", None, "/only-fam-one.txt", 1, None, False),
    ]
