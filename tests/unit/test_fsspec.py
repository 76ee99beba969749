"""The fsspec file system over a volume: listings, changes, file objects, read-only refusal.

Expected trees and contents are checked through :class:`PathFS` (or written out literally), so the
tests do not trust ``VolumeFileSystem`` to describe its own effects. fsspec's abstract test-suite
runs at the end against a fresh volume per test.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import io
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import fsspec
import pytest
from fsspec.tests.abstract import (
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

from volume.engine import Engine, PathFS, format_volume, new_format
from volume.errors import VolumeReadOnly
from volume.fsspec import VolumeFileSystem
from volume_local import LocalObjectStore
from volume_sqlite import SQLiteMetaStore

MiB = 1 << 20
README = b"versioned, forkable volumes\n"
TODO = b"commit, fork\n"


# --------------------------------------------------------------------------- volumes


@pytest.fixture
def volume_dir(tmp_path: Path) -> tuple[Path, LocalObjectStore]:
    """A formatted, empty volume: its SQLite meta dir and its local bucket."""
    bucket = tmp_path / "bucket"
    objects = LocalObjectStore.from_uri(str(bucket))
    meta = SQLiteMetaStore.open(tmp_path / "meta")
    format_volume(meta, objects, new_format("fsspecvol", storage="file", bucket=f"{bucket}/"))
    meta.close()
    return tmp_path / "meta", objects


@contextlib.contextmanager
def mounted(
    meta_dir: Path, objects: LocalObjectStore, read_only: bool = False
) -> Iterator[PathFS]:
    meta = SQLiteMetaStore.open(meta_dir, read_only=read_only)
    engine = Engine(meta, objects, read_only=read_only)
    try:
        yield PathFS(engine)
    finally:
        engine.close()
        meta.close()


@pytest.fixture
def pathfs(volume_dir: tuple[Path, LocalObjectStore]) -> Iterator[PathFS]:
    with mounted(*volume_dir) as mounted_fs:
        yield mounted_fs


@pytest.fixture
def fs(pathfs: PathFS) -> VolumeFileSystem:
    return VolumeFileSystem(pathfs)


def make_tree(pathfs: PathFS) -> None:
    """/docs/{readme.txt,notes/todo.txt}, /empty/, and links to a file, a directory and nothing."""
    pathfs.makedirs("/docs/notes")
    pathfs.mkdir("/empty")
    pathfs.write_bytes("/docs/readme.txt", README)
    pathfs.write_bytes("/docs/notes/todo.txt", TODO)
    pathfs.symlink("docs/readme.txt", "/readme-link")
    pathfs.symlink("docs", "/docs-link")
    pathfs.symlink("missing", "/dangling")


@pytest.fixture
def tree(fs: VolumeFileSystem, pathfs: PathFS) -> VolumeFileSystem:
    make_tree(pathfs)
    return fs


def snapshot(pathfs: PathFS, directory: str = "/") -> dict[str, tuple]:
    """Every entry under ``directory``: mode, size, mtime, links, and a regular file's content."""
    out: dict[str, tuple] = {}
    for name, _ino, st in pathfs.scandir(directory):
        path = directory.rstrip("/") + "/" + name
        out[path] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink)
        if stat.S_ISDIR(st.st_mode):
            out.update(snapshot(pathfs, path))
        elif stat.S_ISREG(st.st_mode):
            out[path] += (hashlib.sha256(pathfs.read_bytes(path)).hexdigest(),)
    return out


def pattern(size: int) -> bytes:
    """``size`` bytes that differ at every offset a test might confuse with another."""
    block = hashlib.sha256(b"volume").digest() * (MiB // 32)
    return (block * (size // MiB + 1))[:size]


# --------------------------------------------------------------------------- registration, paths


def test_the_entry_point_registers_the_volume_protocol(pathfs: PathFS):
    assert fsspec.get_filesystem_class("volume") is VolumeFileSystem
    first = fsspec.filesystem("volume", pathfs=pathfs)
    second = fsspec.filesystem("volume", pathfs=pathfs)
    assert isinstance(first, VolumeFileSystem) and first.pathfs is pathfs
    assert first is not second  # never cached: each instance is bound to a live engine


def test_fsspec_open_resolves_volume_urls(pathfs: PathFS):
    pathfs.makedirs("/docs")
    pathfs.write_bytes("/docs/readme.txt", README)
    with fsspec.open("volume:///docs/readme.txt", "rt", pathfs=pathfs) as f:
        assert f.read() == README.decode()
    fs, path = fsspec.core.url_to_fs("volume://docs/readme.txt", pathfs=pathfs)
    assert isinstance(fs, VolumeFileSystem) and path == "/docs/readme.txt"


@pytest.mark.parametrize(
    "given, stripped",
    [
        ("volume://docs/readme.txt", "/docs/readme.txt"),
        ("volume:///docs/", "/docs"),
        ("/docs//notes/", "/docs/notes"),
        ("docs/notes", "/docs/notes"),
        ("volume://", "/"),
        ("/", "/"),
        ("", "/"),
        (Path("/docs/x"), "/docs/x"),
    ],
)
def test_paths_are_volume_absolute_without_protocol_or_trailing_slash(given, stripped):
    assert VolumeFileSystem._strip_protocol(given) == stripped


def test_parent_and_unstrip_protocol(fs: VolumeFileSystem):
    assert fs._parent("/docs/notes") == "/docs"
    assert fs._parent("/docs") == "/"
    assert fs._parent("/") == "/"
    assert fs.unstrip_protocol("/docs/readme.txt") == "volume:///docs/readme.txt"


def test_read_only_follows_the_engine_unless_given(volume_dir):
    with mounted(*volume_dir) as writable:
        assert VolumeFileSystem(writable).read_only is False
        assert VolumeFileSystem(writable, read_only=True).read_only is True
    with mounted(*volume_dir, read_only=True) as read_only:
        assert VolumeFileSystem(read_only).read_only is True
        assert VolumeFileSystem(read_only, read_only=False).read_only is False


# --------------------------------------------------------------------------- metadata


def test_ls_details_every_entry_from_its_lstat(tree: VolumeFileSystem, pathfs: PathFS):
    before = time.time()
    pathfs.write_bytes("/fresh.bin", b"12345")
    entries = {e["name"]: e for e in tree.ls("/")}
    assert list(entries) == sorted(entries)
    assert set(entries) == {
        "/dangling", "/docs", "/docs-link", "/empty", "/fresh.bin", "/readme-link",
    }  # fmt: skip

    fresh = entries["/fresh.bin"]
    st = pathfs.stat("/fresh.bin")
    assert fresh["type"] == "file" and fresh["size"] == 5 and fresh["islink"] is False
    assert fresh["mode"] == stat.S_IFREG | 0o644  # 0o666 under the default umask 022
    assert (fresh["ino"], fresh["nlink"], fresh["uid"], fresh["gid"]) == (st.st_ino, 1, 0, 0)
    assert isinstance(fresh["mtime"], float) and before - 1 <= fresh["mtime"] <= time.time() + 1
    assert "destination" not in fresh

    docs = entries["/docs"]
    assert docs["type"] == "directory" and docs["nlink"] == 3  # ".", "..", and notes/".."
    assert stat.S_ISDIR(docs["mode"])

    # a link to a file reads as that file; other links are listed as themselves
    link = entries["/readme-link"]
    assert (link["type"], link["size"], link["islink"]) == ("file", len(README), True)
    assert link["destination"] == "docs/readme.txt" and stat.S_ISLNK(link["mode"])
    assert link["ino"] == pathfs.lstat("/readme-link").st_ino != pathfs.stat("/readme-link").st_ino
    for name, destination in (("/docs-link", "docs"), ("/dangling", "missing")):
        assert entries[name]["type"] == "other" and entries[name]["islink"] is True
        assert entries[name]["destination"] == destination
        assert entries[name]["size"] == len(destination)


def test_ls_names_files_and_misses(tree: VolumeFileSystem):
    assert tree.ls("/docs", detail=False) == ["/docs/notes", "/docs/readme.txt"]
    assert tree.ls("volume://docs/", detail=False) == ["/docs/notes", "/docs/readme.txt"]
    assert tree.ls("/empty") == []
    [entry] = tree.ls("/docs/readme.txt")
    assert entry == tree.info("/docs/readme.txt") and entry["size"] == len(README)
    assert tree.ls("/docs-link", detail=False) == ["/docs-link"]  # not followed
    with pytest.raises(FileNotFoundError) as missing:
        tree.ls("/nothing/here")
    assert missing.value.filename == "/nothing/here"
    with pytest.raises(NotADirectoryError):
        tree.ls("/docs/readme.txt/inside")


def test_info_exists_isdir_isfile_islink(tree: VolumeFileSystem):
    root = tree.info("/")
    assert (root["name"], root["type"]) == ("/", "directory")
    assert tree.info("/docs/notes/todo.txt")["size"] == len(TODO)
    with pytest.raises(FileNotFoundError) as missing:
        tree.info("/docs/nothing")
    assert missing.value.errno == errno.ENOENT and missing.value.filename == "/docs/nothing"

    assert tree.exists("/docs") and tree.exists("/docs/readme.txt")
    assert tree.exists("/dangling") and tree.lexists("/dangling")  # listed, so it exists
    assert not tree.exists("/nothing") and not tree.exists("/docs/readme.txt/x")
    assert tree.isdir("/docs") and tree.isdir("/") and not tree.isdir("/docs/readme.txt")
    assert not tree.isdir("/docs-link") and not tree.isdir("/nothing")
    assert tree.isfile("/docs/readme.txt") and tree.isfile("/readme-link")
    assert not tree.isfile("/docs") and not tree.isfile("/dangling")
    assert tree.islink("/docs-link") and not tree.islink("/docs") and not tree.islink("/nothing")
    assert tree.size("/docs/readme.txt") == len(README)


def test_created_and_modified_are_utc_datetimes_of_the_inode_times(
    tree: VolumeFileSystem, pathfs: PathFS
):
    pathfs.utime("/docs/readme.txt", ns=(1_000_000_000, 1_500_000_000_000_000_000))
    modified = tree.modified("/docs/readme.txt")
    assert modified == datetime.datetime(2017, 7, 14, 2, 40, tzinfo=datetime.timezone.utc)
    created = tree.created("/docs/readme.txt")
    assert created.tzinfo is datetime.timezone.utc
    assert created.timestamp() == pytest.approx(pathfs.stat("/docs/readme.txt").st_ctime)


def test_walk_find_glob_and_du_stay_inside_the_tree(tree: VolumeFileSystem):
    files = ["/dangling", "/docs-link", "/docs/notes/todo.txt", "/docs/readme.txt", "/readme-link"]
    assert tree.find("/") == files  # links are not descended into
    assert tree.find("/", withdirs=True) == sorted(files + ["/", "/docs", "/docs/notes", "/empty"])
    assert tree.find("/docs", maxdepth=1) == ["/docs/readme.txt"]
    assert tree.find("/docs/readme.txt") == ["/docs/readme.txt"]
    assert list(tree.find("/docs", detail=True).values())[0]["name"] == "/docs/notes/todo.txt"

    walked = [(root, sorted(dirs), sorted(names)) for root, dirs, names in tree.walk("/")]
    assert walked == [
        ("/", ["docs", "empty"], ["dangling", "docs-link", "readme-link"]),
        ("/docs", ["notes"], ["readme.txt"]),
        ("/docs/notes", [], ["todo.txt"]),
        ("/empty", [], []),
    ]
    assert tree.glob("/docs/**/*.txt") == ["/docs/notes/todo.txt", "/docs/readme.txt"]
    assert tree.glob("/*-link") == ["/docs-link", "/readme-link"]

    assert tree.du("/docs") == len(README) + len(TODO)
    assert tree.du("/docs", total=False) == {
        "/docs/notes/todo.txt": len(TODO),
        "/docs/readme.txt": len(README),
    }


# --------------------------------------------------------------------------- namespace changes


def test_mkdir_makedirs_rmdir(fs: VolumeFileSystem, pathfs: PathFS):
    fs.mkdir("/a/b/c")  # parents by default
    assert stat.S_ISDIR(pathfs.stat("/a/b/c").st_mode)
    with pytest.raises(FileExistsError):
        fs.mkdir("/a/b/c")
    with pytest.raises(FileExistsError):
        fs.mkdir("/")
    with pytest.raises(FileNotFoundError) as no_parent:
        fs.mkdir("/x/y", create_parents=False)
    assert no_parent.value.filename == "/x/y" and not pathfs.exists("/x")
    fs.mkdir("/a/d", create_parents=False, mode=0o700)
    assert stat.S_IMODE(pathfs.stat("/a/d").st_mode) == 0o700

    fs.makedirs("/a/b/c", exist_ok=True)
    fs.makedirs("/p/q", exist_ok=False)
    assert pathfs.listdir("/p") == ["q"]
    with pytest.raises(FileExistsError):
        fs.makedirs("/p/q")
    fs.makedirs("/", exist_ok=True)
    with pytest.raises(FileExistsError):
        fs.makedirs("/")
    pathfs.write_bytes("/file", b"x")
    with pytest.raises(FileExistsError):
        fs.mkdir("/file")

    with pytest.raises(OSError) as not_empty:
        fs.rmdir("/a/b")
    assert not_empty.value.errno == errno.ENOTEMPTY and not_empty.value.filename == "/a/b"
    fs.rmdir("/a/b/c")
    assert pathfs.listdir("/a/b") == []
    with pytest.raises(NotADirectoryError):
        fs.rmdir("/file")


def test_rm_file_and_rm(tree: VolumeFileSystem, pathfs: PathFS):
    tree.rm_file("/docs/notes/todo.txt")
    assert pathfs.listdir("/docs/notes") == []
    tree._rm("/readme-link")
    assert not tree.lexists("/readme-link") and pathfs.read_bytes("/docs/readme.txt") == README
    with pytest.raises(IsADirectoryError):
        tree.rm_file("/docs")
    with pytest.raises(FileNotFoundError):
        tree.rm_file("/nothing")

    with pytest.raises(IsADirectoryError) as refused:
        tree.rm("/empty")
    assert "recursive=True" in str(refused.value) and pathfs.exists("/empty")

    # removing a link to a directory removes the link, never what it points to
    tree.rm("/docs-link", recursive=True)
    assert not tree.lexists("/docs-link") and pathfs.listdir("/docs") == ["notes", "readme.txt"]

    pathfs.write_bytes("/docs/notes/a.txt", b"a")
    pathfs.write_bytes("/docs/notes/b.txt", b"b")
    tree.rm("/docs/notes/*.txt")
    assert pathfs.listdir("/docs/notes") == []
    tree.rm(["/dangling", "/empty"], recursive=True)
    tree.rm("/docs", recursive=True)
    assert pathfs.listdir("/") == []
    with pytest.raises(FileNotFoundError):
        tree.rm("/docs", recursive=True)


def test_mv_renames_files_and_whole_directories(tree: VolumeFileSystem, pathfs: PathFS):
    readme_ino = pathfs.stat("/docs/readme.txt").st_ino
    tree.mv("/docs", "/moved")
    assert not pathfs.exists("/docs")
    assert pathfs.read_bytes("/moved/readme.txt") == README
    assert pathfs.read_bytes("/moved/notes/todo.txt") == TODO
    assert pathfs.stat("/moved/readme.txt").st_ino == readme_ino  # renamed, not copied

    tree.mv("/moved/readme.txt", "/empty")  # into an existing directory
    assert pathfs.listdir("/empty") == ["readme.txt"]
    tree.mv("volume://empty/readme.txt", "/top.txt")
    assert pathfs.read_bytes("/top.txt") == README
    tree.mv("/top.txt", "/top.txt")  # the same path: nothing to do
    assert pathfs.read_bytes("/top.txt") == README

    with pytest.raises(FileNotFoundError) as missing:
        tree.mv("/nothing", "/elsewhere")
    assert missing.value.filename == "/nothing" and missing.value.filename2 == "/elsewhere"
    with pytest.raises(FileNotFoundError):
        tree.mv("/top.txt", "/no/such/dir/top.txt")
    with pytest.raises(OSError) as into_itself:
        tree.mv("/moved", "/moved/notes/inner")
    assert into_itself.value.errno == errno.EINVAL


def test_cp_file_and_recursive_copy(tree: VolumeFileSystem, pathfs: PathFS):
    tree.cp_file("/docs/readme.txt", "/copy.txt")
    assert pathfs.read_bytes("/copy.txt") == README
    assert pathfs.stat("/copy.txt").st_ino != pathfs.stat("/docs/readme.txt").st_ino
    tree.cp_file("/readme-link", "/through-link.txt")  # a link to a file copies the file
    assert pathfs.read_bytes("/through-link.txt") == README
    assert not tree.islink("/through-link.txt")
    tree.cp_file("/docs-link", "/docs-link-copy")  # any other link is recreated
    assert pathfs.readlink("/docs-link-copy") == "docs"

    with pytest.raises(OSError) as same:
        tree.cp_file("/docs/readme.txt", "/readme-link")
    assert same.value.errno == errno.EINVAL
    assert pathfs.read_bytes("/docs/readme.txt") == README  # not truncated
    with pytest.raises(FileNotFoundError):
        tree.cp_file("/nothing", "/copy2.txt")
    pathfs.mkfifo("/fifo")
    with pytest.raises(OSError) as special:
        tree.cp_file("/fifo", "/fifo-copy")
    assert special.value.errno == errno.ENOTSUP and not pathfs.exists("/fifo-copy")

    tree.copy("/docs", "/docs-copy", recursive=True)
    original = {p[len("/docs") :]: v[1:] for p, v in snapshot(pathfs, "/docs").items()}
    copied = {p[len("/docs-copy") :]: v[1:] for p, v in snapshot(pathfs, "/docs-copy").items()}
    strip_mtime = lambda entries: {p: (v[0],) + v[2:] for p, v in entries.items()}  # noqa: E731
    assert strip_mtime(copied) == strip_mtime(original)


def test_cp_file_streams_large_files(fs: VolumeFileSystem, pathfs: PathFS):
    data = pattern(9 * MiB + 123)
    pathfs.write_bytes("/big.bin", data)
    fs.cp_file("/big.bin", "/big-copy.bin")
    assert pathfs.read_bytes("/big-copy.bin") == data


# --------------------------------------------------------------------------- data


def test_text_mode_round_trip(fs: VolumeFileSystem, pathfs: PathFS):
    text = "héllo\nwörld ✓\n"
    with fs.open("/notes.txt", "w", encoding="utf-8") as f:
        assert isinstance(f, io.TextIOWrapper)
        f.write(text)
    assert pathfs.read_bytes("/notes.txt") == text.encode("utf-8")
    with fs.open("/notes.txt", "r", encoding="utf-8") as f:
        assert f.readlines() == ["héllo\n", "wörld ✓\n"]
    with fs.open("/notes.txt", "a", encoding="utf-8") as f:
        f.write("more\n")
    assert fs.read_text("/notes.txt", encoding="utf-8") == text + "more\n"
    fs.write_text("/notes.txt", "replaced", encoding="utf-8")
    assert pathfs.read_bytes("/notes.txt") == b"replaced"


def test_large_writes_go_through_the_volume_and_ranged_reads_read_only_the_range(
    fs: VolumeFileSystem, pathfs: PathFS, monkeypatch: pytest.MonkeyPatch
):
    data = pattern(10 * MiB)
    requested: list[int] = []
    written: list[int] = []
    real_read, real_write = pathfs.read, pathfs.write

    def counting_read(fd: int, size: int, offset: int | None = None) -> bytes:
        requested.append(size)
        return real_read(fd, size, offset)

    def counting_write(fd: int, chunk: Any, offset: int | None = None) -> int:
        written.append(len(chunk))
        return real_write(fd, chunk, offset)

    monkeypatch.setattr(pathfs, "read", counting_read)
    monkeypatch.setattr(pathfs, "write", counting_write)

    with fs.open("/big.bin", "wb") as f:
        for off in range(0, len(data), MiB):
            f.write(data[off : off + MiB])
        # the 4 MiB buffer hands data over as it fills, not the whole file at close
        assert sum(written) >= 8 * MiB
    assert sum(written) == len(data)
    assert fs.size("/big.bin") == len(data)
    assert pathfs.read_bytes("/big.bin") == data

    ranges = [
        (0, 10),
        (4 * MiB - 3, 4 * MiB + 5),  # across a 4 MiB block boundary
        (5 * MiB, 7 * MiB + 17),
        (-100, None),
        (None, 64),
        (10 * MiB - 5, 20 * MiB),  # past the end
        (-10, -4),
        (50, 20),  # empty
    ]
    for start, end in ranges:
        requested.clear()
        assert fs.cat_file("/big.bin", start, end) == data[start:end]
        assert sum(requested) <= len(data[start:end])
    requested.clear()
    assert fs.cat_file("/big.bin") == data
    assert fs.cat("/big.bin", start=3, end=9) == data[3:9]
    assert fs.head("/big.bin", 7) == data[:7] and fs.tail("/big.bin", 7) == data[-7:]


def test_binary_file_objects(fs: VolumeFileSystem, pathfs: PathFS):
    with fs.open("/f.bin", "wb") as f:
        assert (f.name, f.mode, f.writable(), f.readable()) == ("/f.bin", "wb", True, False)
        assert f.write(b"0123456789") == 10 and f.tell() == 10
        f.seek(2)
        f.write(b"ab")
        f.flush()
    assert f.closed
    assert pathfs.read_bytes("/f.bin") == b"01ab456789"

    with fs.open("/f.bin", "rb") as f:
        assert (f.readable(), f.writable(), f.seekable()) == (True, False, True)
        assert f.read(3) == b"01a"
        buffer = bytearray(4)
        assert f.readinto(buffer) == 4 and buffer == b"b456"
        assert f.seek(-2, io.SEEK_END) == 8 and f.read() == b"89" and f.read() == b""
        assert f.seek(1) == 1 and f.tell() == 1
    with pytest.raises(ValueError):
        f.read()

    with fs.open("/f.bin", "ab") as f:
        assert f.tell() == 10  # appends start at the end
        f.write(b"XY")
    assert pathfs.read_bytes("/f.bin") == b"01ab456789XY"

    with fs.open("/f.bin", "r+b") as f:
        f.seek(4)
        f.write(b"--")
        f.seek(0)
        assert f.read(7) == b"01ab--6"
        assert f.truncate(5) == 5
    assert pathfs.read_bytes("/f.bin") == b"01ab-"

    with fs.open("/g.bin", "w+b") as f:
        f.write(b"hello")
        f.seek(0)
        assert f.read() == b"hello"
    with fs.open("/h.bin", "xb") as f:
        f.write(b"new")
    assert pathfs.read_bytes("/h.bin") == b"new"
    with pytest.raises(FileExistsError):
        fs.open("/h.bin", "xb")
    with fs.open("/h.bin", "wb"):
        pass
    assert pathfs.read_bytes("/h.bin") == b""


def test_open_errors(fs: VolumeFileSystem, pathfs: PathFS):
    pathfs.mkdir("/dir")
    with pytest.raises(FileNotFoundError) as missing:
        fs.open("/nothing", "rb")
    assert missing.value.filename == "/nothing"
    with pytest.raises(IsADirectoryError):
        fs.open("/dir", "rb")
    with pytest.raises(IsADirectoryError):
        fs.open("/dir", "wb")
    with pytest.raises(IsADirectoryError):
        fs.cat_file("/dir")
    with pytest.raises(FileNotFoundError):
        fs.open("/no/parent.txt", "wb")
    for bad in ("r", "rbb", "rwb", "qb", "b"):
        with pytest.raises(ValueError, match="invalid mode"):
            fs._open("/dir/x", bad)
    with pytest.raises(NotImplementedError, match="transaction"):
        with fs.transaction:
            fs.open("/later.bin", "wb")
    assert not pathfs.exists("/later.bin")
    with fs.transaction:  # reading inside a transaction is fine
        pathfs.write_bytes("/now.bin", b"now")
        assert fs.cat_file("/now.bin") == b"now"


def test_auto_mkdir_creates_parents_of_writes(pathfs: PathFS):
    fs = VolumeFileSystem(pathfs, auto_mkdir=True)
    with fs.open("/a/b/file.bin", "wb") as f:
        f.write(b"x")
    fs.pipe_file("/c/d/file.bin", b"y")
    fs.touch("/e/f/empty")
    fs.cp_file("/a/b/file.bin", "/g/h/copy.bin")
    fs.mv("/c/d/file.bin", "/i/j/moved.bin")
    assert pathfs.read_bytes("/a/b/file.bin") == b"x"
    assert pathfs.read_bytes("/i/j/moved.bin") == b"y"
    assert pathfs.read_bytes("/e/f/empty") == b""
    assert pathfs.read_bytes("/g/h/copy.bin") == b"x"


def test_pipe_file_and_touch(fs: VolumeFileSystem, pathfs: PathFS):
    fs.pipe_file("/p.bin", b"first")
    assert pathfs.read_bytes("/p.bin") == b"first"
    fs.pipe_file("/p.bin", b"2nd")
    assert pathfs.read_bytes("/p.bin") == b"2nd"
    with pytest.raises(FileExistsError):
        fs.pipe_file("/p.bin", b"third", mode="create")
    with pytest.raises(ValueError, match="invalid mode"):
        fs.pipe_file("/p.bin", b"third", mode="append")
    assert pathfs.read_bytes("/p.bin") == b"2nd"
    fs.pipe({"/q.bin": b"q", "volume://r.bin": b"r"})
    assert pathfs.read_bytes("/q.bin") + pathfs.read_bytes("/r.bin") == b"qr"

    fs.touch("/t.txt")
    assert pathfs.read_bytes("/t.txt") == b""
    pathfs.write_bytes("/t.txt", b"content")
    pathfs.utime("/t.txt", ns=(10**18, 10**18))
    fs.touch("/t.txt", truncate=False)
    assert pathfs.read_bytes("/t.txt") == b"content"
    assert pathfs.stat("/t.txt").st_mtime_ns > 10**18  # set to now, long after 2001
    fs.touch("/t.txt")
    assert pathfs.read_bytes("/t.txt") == b""
    pathfs.mkdir("/dir")
    pathfs.utime("/dir", ns=(10**18, 10**18))
    fs.touch("/dir", truncate=False)
    assert pathfs.stat("/dir").st_mtime_ns > 10**18


def test_sign_is_not_supported(fs: VolumeFileSystem):
    with pytest.raises(NotImplementedError):
        fs.sign("/anything")


# --------------------------------------------------------------------------- read-only volumes


WRITES: list[tuple[str, Callable[[VolumeFileSystem], Any]]] = [
    ("mkdir", lambda fs: fs.mkdir("/new")),
    ("mkdir-no-parents", lambda fs: fs.mkdir("/new", create_parents=False)),
    ("makedirs", lambda fs: fs.makedirs("/new/deeper", exist_ok=True)),
    ("rmdir", lambda fs: fs.rmdir("/empty")),
    ("rm_file", lambda fs: fs.rm_file("/docs/readme.txt")),
    ("_rm", lambda fs: fs._rm("/readme-link")),
    ("rm", lambda fs: fs.rm("/docs/readme.txt")),
    ("rm-recursive", lambda fs: fs.rm("/docs", recursive=True)),
    ("mv", lambda fs: fs.mv("/docs", "/moved")),
    ("cp_file", lambda fs: fs.cp_file("/docs/readme.txt", "/copy.txt")),
    ("copy-recursive", lambda fs: fs.copy("/docs", "/docs-copy", recursive=True)),
    ("pipe_file", lambda fs: fs.pipe_file("/docs/readme.txt", b"changed")),
    ("pipe-new", lambda fs: fs.pipe("/new.bin", b"new")),
    ("touch", lambda fs: fs.touch("/docs/readme.txt")),
    ("touch-times", lambda fs: fs.touch("/docs/readme.txt", truncate=False)),
    ("touch-new", lambda fs: fs.touch("/new.txt")),
    ("open-wb", lambda fs: fs.open("/docs/readme.txt", "wb")),
    ("open-ab", lambda fs: fs.open("/docs/readme.txt", "ab")),
    ("open-r+b", lambda fs: fs.open("/docs/readme.txt", "r+b")),
    ("open-xb", lambda fs: fs.open("/new.bin", "xb")),
    ("open-w-text", lambda fs: fs.open("/new.txt", "w")),
    ("write_text", lambda fs: fs.write_text("/docs/readme.txt", "changed")),
]


@pytest.fixture(params=["read-only engine", "read-only instance", "engine refuses"])
def read_only_fs(request, volume_dir) -> Iterator[VolumeFileSystem]:
    """A populated volume, refused writes three ways: by the mount, by the instance, or by the
    engine under an instance that was (wrongly) told the volume is writable."""
    with mounted(*volume_dir) as writable:
        make_tree(writable)
        if request.param == "read-only instance":
            yield VolumeFileSystem(writable, read_only=True)
            return
    with mounted(*volume_dir, read_only=True) as read_only:
        yield VolumeFileSystem(read_only, read_only=request.param != "engine refuses")


@pytest.mark.parametrize("name, write", WRITES, ids=[name for name, _ in WRITES])
def test_read_only_volumes_refuse_every_write_and_change_nothing(read_only_fs, name, write):
    before = snapshot(read_only_fs.pathfs)
    with pytest.raises(VolumeReadOnly) as refused:
        write(read_only_fs)
    assert isinstance(refused.value, PermissionError)
    message = str(refused.value)
    assert "read-only" in message and "ROVolume.fork(name)" in message
    assert snapshot(read_only_fs.pathfs) == before


def test_read_only_refusals_name_the_change(read_only_fs: VolumeFileSystem):
    with pytest.raises(VolumeReadOnly, match=r"^cannot copy /docs/readme.txt to /copy.txt: "):
        read_only_fs.cp_file("volume://docs/readme.txt", "copy.txt")
    with pytest.raises(VolumeReadOnly, match=r"^cannot move /docs to /moved: "):
        read_only_fs.mv("/docs", "/moved")
    with pytest.raises(VolumeReadOnly, match=r"^cannot write /new.bin: ") as refused:
        read_only_fs.pipe_file("/new.bin", b"x")
    cause = refused.value.__cause__
    if read_only_fs.read_only:  # refused up front, before the engine saw anything
        assert cause is None
    else:  # the engine's EROFS, translated
        assert isinstance(cause, OSError) and cause.errno == errno.EROFS


def test_read_only_volumes_still_read(read_only_fs: VolumeFileSystem):
    assert read_only_fs.cat_file("/docs/readme.txt") == README
    assert read_only_fs.cat_file("/readme-link", 0, 9) == README[:9]
    with read_only_fs.open("/docs/notes/todo.txt", "r") as f:
        assert f.read() == TODO.decode()
    assert read_only_fs.find("/docs") == ["/docs/notes/todo.txt", "/docs/readme.txt"]
    assert read_only_fs.du("/docs") == len(README) + len(TODO)


# --------------------------------------------------------------------------- fsspec's own suite


class VolumeFixtures(AbstractFixtures):
    """fsspec's abstract tests on a fresh volume per test.

    ``auto_mkdir=True`` because those tests expect writes to create parent directories, as
    fsspec's own local file system runs them.
    """

    @pytest.fixture
    def fs(self, volume_dir: tuple[Path, LocalObjectStore]) -> Iterator[VolumeFileSystem]:
        with mounted(*volume_dir) as mounted_fs:
            yield VolumeFileSystem(mounted_fs, auto_mkdir=True)

    @pytest.fixture
    def fs_path(self) -> str:
        return "/"


class TestVolumeCopy(AbstractCopyTests, VolumeFixtures):
    pass


class TestVolumeGet(AbstractGetTests, VolumeFixtures):
    pass


class TestVolumePut(AbstractPutTests, VolumeFixtures):
    pass


class TestVolumeOpen(AbstractOpenTests, VolumeFixtures):
    pass


class TestVolumePipe(AbstractPipeTests, VolumeFixtures):
    pass


# --------------------------------------------------------------------------- read access by locator


def _publish_tree(bucket: Path, files: dict[str, bytes], name: str = "locvol") -> str:
    """A committed version holding ``files``; its locator."""
    from volume import Volume

    rw = Volume.new(name, bucket=str(bucket)).mount(transport="none")
    for path, data in files.items():
        rw.fs.makedirs(posixpath_dirname(path), exist_ok=True)
        rw.fs.pipe_file(path, data)
    rw._mount.pathfs.symlink("docs/readme.txt", "/readme-link")
    return rw.finalize("for readers").produced_by.locator


def posixpath_dirname(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


@pytest.fixture
def locator(tmp_path: Path) -> str:
    big = pattern(9 * MiB + 7)
    return _publish_tree(
        tmp_path / "bucket",
        {"/docs/readme.txt": README, "/docs/notes/todo.txt": TODO, "/big.bin": big},
    )


def _read_dirs() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob("volume-read-*")}


def test_a_locator_reads_a_version_without_a_mount(locator: str, tmp_path: Path):
    before = _read_dirs()
    fs = fsspec.filesystem("volume", locator=locator)
    assert fs.read_only and fs.locator == locator
    assert fs.cat("/docs/readme.txt") == README
    assert fs.ls("/", detail=False) == ["/big.bin", "/docs", "/readme-link"]
    assert fs.info("/docs/notes/todo.txt")["size"] == len(TODO)
    assert fs.glob("/docs/**/*.txt") == ["/docs/notes/todo.txt", "/docs/readme.txt"]
    assert fs.find("/docs") == ["/docs/notes/todo.txt", "/docs/readme.txt"]
    assert [d for d, _dirs, _files in fs.walk("/")] == ["/", "/docs", "/docs/notes"]
    assert fs.du("/docs") == len(README) + len(TODO)
    big = pattern(9 * MiB + 7)
    with fs.open("/big.bin", "rb") as f:  # random access across block boundaries
        f.seek(4 * MiB - 3)
        assert f.read(10) == big[4 * MiB - 3 : 4 * MiB + 7]
        f.seek(-5, io.SEEK_END)
        assert f.read() == big[-5:]
    assert fs.cat_file("/big.bin", 8 * MiB, 8 * MiB + 100) == big[8 * MiB : 8 * MiB + 100]
    with pytest.raises(FileNotFoundError):
        fs.cat("/nothing")
    with pytest.raises(VolumeReadOnly):
        fs.pipe_file("/new.bin", b"x")
    assert len(_read_dirs() - before) == 1  # one temporary copy of the index, nothing else
    fs.pathfs.release()
    assert _read_dirs() - before == set()  # removed on release


def test_a_filesystem_opened_by_locator_pickles_as_its_locator(locator: str):
    import pickle

    fs = fsspec.filesystem("volume", locator=locator)
    copy = pickle.loads(pickle.dumps(fs))
    assert copy.pathfs is not fs.pathfs and copy.locator == locator
    assert copy.cat("/docs/readme.txt") == README


def test_the_temporary_index_goes_when_the_filesystem_is_collected(locator: str):
    import gc

    before = _read_dirs()
    fs = fsspec.filesystem("volume", locator=locator)
    f = fs.open("/docs/readme.txt", "rb")
    del fs
    gc.collect()
    assert f.read() == README  # an open file keeps the version open
    f.close()
    del f
    gc.collect()
    assert _read_dirs() - before == set()


def test_a_locator_is_a_uri_or_a_path_and_bad_ones_are_typed_errors(locator: str, tmp_path: Path):
    from volume.errors import VolumeUsageError

    document = locator[len("file://") :]
    assert fsspec.filesystem("volume", locator=document).cat("/docs/readme.txt") == README
    with pytest.raises(VolumeUsageError, match="no version document"):
        fsspec.filesystem("volume", locator=str(tmp_path / "missing.json"))
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(VolumeUsageError, match="not a version document"):
        fsspec.filesystem("volume", locator=str(tmp_path / "other.json"))
    with pytest.raises(VolumeUsageError, match="either"):
        VolumeFileSystem()


def test_a_tampered_or_missing_index_is_refused_and_leaves_nothing(locator: str):
    """Read by locator, an index is fetched and checked as a mount does: a changed byte or a
    missing index raises VolumeIndexCorrupt and no temporary copy is left behind."""
    import json

    from volume.errors import VolumeIndexCorrupt

    document = Path(locator[len("file://") :])
    index = document.parent / Path(json.loads(document.read_text())["index"]["path"]).name
    assert index.is_file()
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index.chmod(0o644)
    before = _read_dirs()
    index.write_bytes(bytes(data))
    with pytest.raises(VolumeIndexCorrupt, match="hash"):
        fsspec.filesystem("volume", locator=locator, skip_instance_cache=True)
    index.unlink()
    with pytest.raises(VolumeIndexCorrupt, match="does not exist"):
        fsspec.filesystem("volume", locator=locator, skip_instance_cache=True)
    assert _read_dirs() - before == set()


def test_pandas_and_pyarrow_read_straight_from_a_version(tmp_path: Path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"x": [1, 2, 3], "name": ["a", "b", "c"]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    locator = _publish_tree(
        tmp_path / "bucket",
        {"/data/t.csv": b"x,name\n1,a\n2,b\n3,c\n", "/data/t.parquet": sink.getvalue().to_pybytes(),
         "/docs/readme.txt": README},
    )  # fmt: skip
    options = {"locator": locator}
    frame = pd.read_csv("volume:///data/t.csv", storage_options=options)
    assert frame.to_dict("list") == {"x": [1, 2, 3], "name": ["a", "b", "c"]}
    assert pd.read_parquet("volume:///data/t.parquet", storage_options=options).equals(
        table.to_pandas()
    )
    read = pq.read_table("/data/t.parquet", filesystem=fsspec.filesystem("volume", **options))
    assert read.equals(table)


class _PublishingFS:
    """fsspec's suite through a committed version: writes go to a writable working copy, and every
    other call is answered by a filesystem opened by locator on a fresh commit of it."""

    WRITES = {"mkdir", "makedirs", "touch", "pipe", "pipe_file", "rm", "rm_file", "rmdir", "put",
              "put_file", "mv", "cp_file", "copy", "write_bytes", "write_text"}  # fmt: skip

    def __init__(self, rw: Any):
        self._rw = rw
        self._writer = VolumeFileSystem(rw._mount.pathfs, auto_mkdir=True)
        self._reader: VolumeFileSystem | None = None
        self.commits = 0

    def _reading(self) -> VolumeFileSystem:
        if self._reader is None:
            version = self._rw.commit()
            self.commits += 1
            self._reader = fsspec.filesystem("volume", locator=version.produced_by.locator)
            assert self._reader.read_only
        return self._reader

    def __getattr__(self, name: str) -> Any:
        if name in self.WRITES:
            self._reader = None
            return getattr(self._writer, name)
        return getattr(self._reading(), name)

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" in mode and "+" not in mode:
            return self._reading().open(path, mode, **kwargs)
        self._reader = None
        return self._writer.open(path, mode, **kwargs)


class LocatorFixtures(AbstractFixtures):
    """fsspec's abstract get-tests (volume -> local) with every read served by locator."""

    @pytest.fixture
    def fs(self, tmp_path: Path) -> Iterator[_PublishingFS]:
        from volume import Volume

        rw = Volume.new("suitevol", bucket=str(tmp_path / "bucket")).mount(transport="none")
        proxy = _PublishingFS(rw)
        yield proxy
        assert proxy.commits > 0  # the test's reads went through a committed version
        rw.finalize()

    @pytest.fixture
    def fs_path(self) -> str:
        return "/"


class TestLocatorGet(AbstractGetTests, LocatorFixtures):
    pass
