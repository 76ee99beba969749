"""A process killed while it holds a redis working copy in a temporary meta dir leaves its
redis-server running; the next process that makes a temporary meta dir stops that server (by
pid) before it removes the dead process's directory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from volume_redis._server import PID_FILE, _is_running


def test_sweep_stops_the_dead_process_redis_server_then_removes_its_dir(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    bucket = str(tmp_path / "bucket")
    victim = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from volume import Volume
            rw = Volume.new("victim", bucket={bucket!r}, metadata_store_type="redis").mount(
                transport="none")
            rw.fs.pipe_file("/a", b"a")
            print("mounted", flush=True)
            time.sleep(3600)
        """)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert victim.stdout.readline().strip() == "mounted"
        (victim_dir,) = tmp.glob("volume-victim-*")
        server = int((victim_dir / PID_FILE).read_text())
        assert _is_running(server)
    finally:
        victim.kill()
        victim.wait()
    assert _is_running(server), "the server outlives its SIGKILLed mounter"
    try:
        out = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                from volume import Volume
                Volume.new("next", bucket={bucket!r}).mount(transport="none").unmount()
            """)],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 5
        while _is_running(server) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _is_running(server), f"redis-server {server} of the dead process is left"
        assert not victim_dir.exists()
        assert list(tmp.iterdir()) == []
    finally:
        if _is_running(server):
            os.kill(server, 9)
