"""Progress bars: on a terminal only, only for work over a second, never on stdout; and the
progress a `volume mount` process streams to `volume commit PATH`."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from tests.cli.conftest import VOLUME
from volume.cli._control import ControlServer, request

WORK = textwrap.dedent(
    """
    import sys, time
    import click
    from volume.cli._common import common, emit, progress

    @click.command()
    @click.argument("seconds", type=float)
    @common
    def main(seconds):
        with progress("crunching", 20, unit="items") as bar:
            for _ in range(20):
                time.sleep(seconds / 20)
                bar.advance()
        emit({"done": True}, "done")

    main()
    """
)


def run_on_terminal(args: list[str], cwd: Path | None = None) -> tuple[int, str, str]:
    """Run ``args`` with stderr on a pseudo-terminal (stdout a pipe): (status, stdout, terminal)."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd)  # fmt: skip
    os.close(follower)
    screen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    out = proc.stdout.read().decode()
    proc.wait(30)
    os.close(leader)
    return proc.returncode, out, screen.decode(errors="replace")


def test_a_bar_shows_on_a_terminal_only_for_work_over_a_second():
    code, out, screen = run_on_terminal([sys.executable, "-c", WORK, "2.5"])
    assert code == 0 and out == "done\n"
    assert "crunching" in screen and "20/20" not in out  # the bar went to the terminal
    assert "items/s" in screen  # with its rate (and ETA)

    code, out, screen = run_on_terminal([sys.executable, "-c", WORK, "0.3"])
    assert code == 0 and out == "done\n" and "crunching" not in screen  # too quick for a bar

    code, out, screen = run_on_terminal([sys.executable, "-c", WORK, "2.5", "--json"])
    assert code == 0 and json.loads(out) == {"done": True} and "crunching" not in screen

    piped = subprocess.run([sys.executable, "-c", WORK, "1.5"], capture_output=True, text=True)
    assert piped.stdout == "done\n" and piped.stderr == ""  # off a terminal: no bar


def test_cli_output_stays_clean_with_stderr_on_a_terminal(published: tuple[str, str]):
    _first, second = published
    code, out, _screen = run_on_terminal([*VOLUME, "fsck", second, "--json"])
    assert code == 0 and json.loads(out)["ok"] is True
    code, out, _screen = run_on_terminal([*VOLUME, "fork", second, "tty-fork"])
    assert code == 0 and out.startswith("forked tty-fork: ") and out.count("\n") == 1


def test_the_mount_process_streams_commit_progress(tmp_path: Path):
    """`volume commit PATH` gets the commit's progress reports before its answer."""
    reports = [(0, 300, "bytes"), (120, 300, "bytes"), (300, 340, "bytes"), (340, 340, "bytes")]

    def handler(req, send):
        for done, total, unit in reports:
            send({"progress": [done, total, unit]})
        return {"answer": req["verb"]}

    server = ControlServer(tmp_path / "mnt", handler)
    try:
        got: list[tuple[int, int, str]] = []
        lock = threading.Lock()

        def collect(*report):
            with lock:
                got.append(report)

        assert request(tmp_path / "mnt", {"verb": "commit"}, 10, collect) == {"answer": "commit"}
        assert got == reports
        assert request(tmp_path / "mnt", {"verb": "other"}, 10) == {"answer": "other"}
    finally:
        server.close()
