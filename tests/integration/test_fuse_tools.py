"""Real tools at work in a FUSE mount: cp, tar, diff, git, rsync, sqlite3, fio.

Every tool runs as its own process (a process must not map files of a mount it serves itself).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import volume

pytestmark = pytest.mark.fuse

SOURCE = Path(volume.__file__).parent


def run(*cmd: str | os.PathLike, cwd: Path | None = None, env: dict | None = None) -> str:
    """Run a command, failing the test with its output when it fails."""
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}: {done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A still copy of this package's source (the live tree may change under the test)."""
    copy = tmp_path / "tree" / "volume"
    shutil.copytree(SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_cp_a_then_diff_r(mnt: Path, tree: Path):
    run("cp", "-a", tree, mnt / "volume")
    run("diff", "-r", tree, mnt / "volume")
    for original in tree.rglob("*.py"):
        copied = os.stat(mnt / "volume" / original.relative_to(tree))
        st = os.stat(original)
        assert (copied.st_mode, copied.st_mtime_ns, copied.st_size) == (
            st.st_mode, st.st_mtime_ns, st.st_size,
        )  # fmt: skip


def test_tar_extract_then_diff_r(mnt: Path, tree: Path, tmp_path: Path):
    tarball = tmp_path / "volume.tar"
    run("tar", "-cf", tarball, "-C", tree.parent, tree.name)
    run("tar", "-xf", tarball, "-C", mnt)
    run("diff", "-r", tree, mnt / tree.name)
    again = tmp_path / "again.tar"
    run("tar", "-cf", again, "-C", mnt, tree.name)  # archived back out of the mount
    listing = sorted(run("tar", "-tvf", again).splitlines())  # names, modes, sizes, times
    assert listing == sorted(run("tar", "-tvf", tarball).splitlines())


def test_git_init_add_commit(mnt: Path, tree: Path, tmp_path: Path):
    repo = mnt / "repo"
    run("cp", "-a", tree, repo)
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Volume Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Volume Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    git = ("git", "-C", repo)
    run(*git, "init", "-q", env=env)
    run(*git, "add", "-A", env=env)
    run(*git, "commit", "-q", "-m", "import", env=env)
    assert run(*git, "status", "--porcelain", env=env) == ""
    run(*git, "fsck", "--full", "--strict", env=env)
    (repo / "lifecycle.py").write_text("changed\n")
    assert "lifecycle.py" in run(*git, "status", "--porcelain", env=env)
    run(*git, "checkout", "--", "lifecycle.py", env=env)
    assert (repo / "lifecycle.py").read_bytes() == (tree / "lifecycle.py").read_bytes()
    run(*git, "gc", "-q", env=env)  # repacks: rewrites and renames over the object store
    assert len(run(*git, "log", "--oneline", env=env).splitlines()) == 1
    run(*git, "fsck", "--full", env=env)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_a(mnt: Path, tree: Path):
    run("rsync", "-a", f"{tree}/", f"{mnt / 'synced'}/")
    run("diff", "-r", tree, mnt / "synced")
    assert run("rsync", "-a", "--itemize-changes", f"{tree}/", f"{mnt / 'synced'}/") == ""


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 shell is not installed")
@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_sqlite_database(mnt: Path, journal_mode: str):
    db = mnt / f"test-{journal_mode}.db"
    script = f"""
        PRAGMA journal_mode={journal_mode};
        CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, value REAL);
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
        INSERT INTO t (name, value) SELECT printf('row-%06d', i), i * 0.5 FROM n;
        CREATE INDEX t_name ON t (name);
        DELETE FROM t WHERE id % 3 = 0;
        VACUUM;
    """
    run("sqlite3", db, script)
    out = run(
        "sqlite3", db,
        "SELECT count(*), sum(value) FROM t; SELECT name FROM t WHERE name = 'row-010001';"
        " PRAGMA integrity_check;",
    )  # fmt: skip
    kept = [i for i in range(1, 20001) if i % 3]
    assert out.split() == [f"{len(kept)}|{sum(kept) * 0.5}", "row-010001", "ok"]


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed")
def test_fio_verify(mnt: Path):
    run(
        "fio", "--name=verify", f"--directory={mnt}", "--rw=randwrite", "--bs=4k", "--size=8m",
        "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--ioengine=psync",
        "--numjobs=2",
    )  # fmt: skip
