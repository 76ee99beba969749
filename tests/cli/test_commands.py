"""The real `volume` command in a subprocess, on real volumes in a local bucket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import volume as volume_pkg
from tests.cli.conftest import one_line_error, tree, volume


def test_version_and_json_before_or_after_the_verb(tmp_path: Path):
    r = volume("--version")
    assert r.code == 0 and r.out.strip() == f"volume {volume_pkg.__version__}"
    before, after = volume("--json", "plugins"), volume("plugins", "--json")
    assert before.code == after.code == 0
    assert before.json() == after.json()
    assert {"group": "volume.meta_stores", "name": "sqlite"}.items() <= before.json()[
        -1
    ].items() or any(p["name"] == "sqlite" for p in before.json())


@pytest.mark.parametrize(
    "verb",
    ["create", "mount", "commit", "fork", "migrate", "info", "log", "diff", "ls", "cat", "get",
     "gc", "fsck", "bench", "plugins", "demo"],
)  # fmt: skip
def test_every_verb_has_help_with_an_example(verb: str):
    from click.testing import CliRunner

    from volume.cli import cli

    r = CliRunner().invoke(cli, [verb, "--help"])
    assert r.exit_code == 0 and "Examples:" in r.output and f"$ volume {verb}" in r.output
    # every paragraph of the description is flush with the first (none keeps the docstring's
    # indentation)
    description = r.output.split("Examples:")[0].split("\n\n")[1:]
    assert all(line.startswith("  ") and not line.startswith("   ")
               for paragraph in description for line in paragraph.strip("\n").splitlines())


def test_create_and_fork(tmp_path: Path, bucket: Path):
    created = volume("create", "fresh-vol", "--bucket", str(bucket), "--json")
    assert created.code == 0, created.err
    loc = created.json()["locator"]
    assert loc.startswith("file://") and loc.endswith("/volume.json")
    assert volume("ls", loc, "--json").json() == []

    forked = volume("fork", loc, "fresh-fork", "--json")
    assert forked.code == 0 and forked.json()["name"] == "fresh-fork"
    lineage = volume("log", forked.json()["locator"], "--json").json()
    assert lineage[0]["name"] == "fresh-fork" and lineage[-1]["locator"] == loc


def test_reading_a_version(tmp_path: Path, published: tuple[str, str]):
    first, second = published
    r = volume("ls", second)
    assert r.code == 0 and r.out.split() == ["/data.bin", "/docs/", "/link"]
    r = volume("ls", second, "/docs", "-R", "--json")
    assert [e["name"] for e in r.json()] == [
        "/docs/README.txt",
        "/docs/notes",
        "/docs/notes/todo.txt",
    ]
    assert volume("cat", first, "/docs/readme.txt").out == "hello volume\n"
    assert volume("cat", second[len("file://") :], "/docs/notes/todo.txt").out == "done\n"

    dest = tmp_path / "out"
    r = volume("get", second, "/docs", str(dest), "--json")
    assert r.code == 0 and r.json()["files"] == 2
    assert tree(dest) == {
        "README.txt": b"hello volume\n",
        "notes": None,
        "notes/todo.txt": b"done\n",
    }
    volume("get", second, "/data.bin", str(tmp_path / "data.bin"))
    assert (tmp_path / "data.bin").read_bytes() == bytes(range(256)) * 40_000

    info = volume("info", second, "--json").json()
    assert info["name"] == "clivol" and info["parent"] == first and info["message"] == "second"
    log = volume("log", second, "--json").json()
    assert [v["message"] for v in log] == ["second", "first"]
    oneline = volume("log", second, "--oneline").out.splitlines()
    assert len(oneline) == 2 and oneline[0].endswith("second") and oneline[1].endswith("first")
    full = volume("log", second).out
    assert full.index("second") < full.index("first") and f"Locator:  {first}" in full

    d = volume("diff", first, second, "--json").json()
    assert d["counts"] == {"added": 0, "removed": 0, "modified": 1, "renamed": 1}
    text = volume("diff", first, second).out
    assert "R  /docs/readme.txt -> /docs/README.txt" in text and "M  /docs/notes/todo.txt" in text


def test_fsck_finds_missing_and_truncated_blocks(bucket: Path, published: tuple[str, str]):
    first, second = published
    ok = volume("fsck", second, "--json")
    assert ok.code == 0 and ok.json()["ok"] and ok.json()["blocks"] >= 5
    blocks = sorted(bucket.glob("clivol/chunks/**/*_*_*"))
    data_blocks = [b for b in blocks if b.name.endswith(f"_{4 << 20}")]
    data_blocks[0].unlink()  # a block of /data.bin
    fives = [b for b in blocks if b.name.endswith("_5")]  # "todo\n", then "done\n"
    small = max(fives, key=lambda b: int(b.name.split("_")[0]))  # the newer: the second version's
    small.write_bytes(b"do")
    r = volume("fsck", second, "--json")
    assert r.code == 1
    report = r.json()
    assert not report["ok"] and len(report["missing"]) == 1
    assert report["wrong_size"] == [
        {"key": str(small.relative_to(bucket)), "expected": 5, "actual": 2}
    ]
    assert report["broken_files"] == ["/data.bin", "/docs/notes/todo.txt"]
    human = volume("fsck", second)
    assert human.code == 1 and "broken file: /data.bin" in human.out and "BROKEN" in human.out


def test_bad_input_is_one_typed_line_with_status_2(tmp_path: Path, bucket: Path,
                                                    published: tuple[str, str]):  # fmt: skip
    first, second = published
    before = tree(tmp_path)
    assert "no version document" in one_line_error(volume("ls", str(tmp_path / "none.json")))
    (tmp_path / "x.json").write_text("[1, 2]")
    assert "not a version document" in one_line_error(volume("info", str(tmp_path / "x.json")))
    assert "not a version locator" in one_line_error(volume("info", "memory://nowhere/x.json"))
    assert "does not exist in this version" in one_line_error(volume("cat", second, "/nope"))
    assert "does not exist in this version" in one_line_error(
        volume("get", second, "/nope", str(tmp_path / "o"))
    )
    empty = tmp_path / "empty-bucket"
    empty.mkdir()
    assert "no volume families" in one_line_error(volume("gc", str(empty)))
    assert "does not exist" in one_line_error(volume("gc", str(tmp_path / "no-such-bucket")))
    assert "unsupported scheme" in one_line_error(volume("demo", "foo://x"))
    assert tree(tmp_path) == {**before, "x.json": b"[1, 2]", "empty-bucket": None}
    r = volume("--debug", "ls", str(tmp_path / "none.json"))
    assert r.code == 2 and "Traceback" in r.err
    assert "Missing argument 'VERSION'" in one_line_error(volume("ls"))  # click's own usage errors
    assert "No such command 'nope'" in one_line_error(volume("nope"))


def test_diff_across_families_compares_trees(bucket: Path, published: tuple[str, str]):
    other = volume("create", "other-vol", "--bucket", str(bucket), "--json").json()["locator"]
    r = volume("diff", published[0], other, "--json")
    assert r.code == 0 and not r.json()["same_family"]
    assert r.json()["counts"]["removed"] == 6  # everything of the first is gone from the empty one


def test_demo_keeps_uris_as_uris(tmp_path: Path):
    r = volume("demo", "--help")
    assert "volume-demo-bucket" in r.out
    r = volume("demo", "--name", "demo-cli", str(tmp_path / "b"), "--json")
    assert r.code == 0 and r.json()["verified"]
    r = volume("demo", "nope://bucket/x", cwd=tmp_path)
    assert r.code == 2
    assert not any(p.name.endswith(":") for p in tmp_path.iterdir())


def test_migrate_to_redis_keeps_the_tree(published: tuple[str, str]):
    import importlib.util

    if importlib.util.find_spec("volume_redis") is None:
        pytest.skip("the redis metadata store plugin is not installed")
    _first, second = published
    moved = volume("migrate", second, "redis", "--json")
    assert moved.code == 0, moved.err
    new = moved.json()
    assert new["metadata_store_type"] == "redis" and new["parent"] == second
    d = volume("diff", second, new["locator"], "--json").json()
    assert d["same_family"] and d["counts"] == {
        "added": 0,
        "removed": 0,
        "modified": 0,
        "renamed": 0,
    }
    assert volume("cat", new["locator"], "/docs/README.txt").out == "hello volume\n"
    assert "already uses" in volume("migrate", second, "sqlite").err


def test_fsck_reports_a_damaged_index(tmp_path: Path, bucket: Path, published: tuple[str, str]):
    import hashlib
    import shutil
    import sqlite3

    _first, second = published
    doc_path = Path(second[len("file://") :])
    doc = json.loads(doc_path.read_text())
    damaged = doc_path.parent.with_name("20990101T000000000000Z-clivol-damaged")
    damaged.mkdir()
    shutil.copy(doc_path.parent / "meta.db", damaged / "meta.db")
    with sqlite3.connect(damaged / "meta.db") as db:  # a file's link count that no entry backs
        db.execute("UPDATE jfs_node SET nlink = 5 WHERE type = 1 AND length = 5")
    doc["index"]["path"] = (damaged / "meta.db").as_uri()
    doc["index"]["hash"] = "sha256:" + hashlib.sha256((damaged / "meta.db").read_bytes()).hexdigest()
    (damaged / "volume.json").write_text(json.dumps(doc))
    r = volume("fsck", str(damaged / "volume.json"), "--json")
    assert r.code == 1
    report = r.json()
    assert not report["ok"] and report["missing"] == [] and report["wrong_size"] == []
    assert any("nlink 5" in p for p in report["metadata_problems"]), report["metadata_problems"]
