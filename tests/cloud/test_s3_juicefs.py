"""The real JuiceFS client mounts a version we committed to S3 (moto), given only the
credentials: the Format in our index names the bucket in the client's own form."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.jfsclient import SKIP_REASON, juicefs_binary
from volume import Volume
from volume.engine import PathFS
from volume.juicefs import Format
from volume_s3 import S3ObjectStore

from . import servers

JUICEFS = juicefs_binary()


def _fuse_ok() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


@pytest.mark.fuse
def test_juicefs_client_reads_a_version_committed_to_s3(s3_env, tmp_path: Path) -> None:
    servers.require(JUICEFS is not None, SKIP_REASON)
    servers.require(_fuse_ok(), "/dev/fuse or fusermount3 missing")
    bucket = f"jfs-{uuid.uuid4().hex[:10]}"  # JuiceFS finds objects at the bucket's root
    servers.create_s3_bucket(s3_env, bucket)
    rng = random.Random(11)
    files = {"big.bin": rng.randbytes(9 * (1 << 20) + 5), "d/small.txt": b"hello s3\n"}
    rw = Volume.new("jfs-s3", bucket=f"s3://{bucket}").mount(
        meta_dir=tmp_path / "meta", transport="none"
    )
    fs = PathFS(rw._mount.engine)
    fs.mkdir("/d")
    for path, data in files.items():
        fs.write_bytes(f"/{path}", data)
    fs.link("/big.bin", "/hard.bin")
    fs.symlink("d/small.txt", "/soft")
    version = rw.finalize("for juicefs")

    store = S3ObjectStore.from_uri(f"s3://{bucket}")
    index = tmp_path / "index.db"
    store.get_file(version.index.path[len(store.uri):], index)
    fmt = _format_of(index)
    assert fmt.Storage == "s3" and fmt.Bucket == f"{s3_env.url}/{bucket}"
    assert servers.S3_SECRET not in index.read_bytes().decode("latin-1")
    assert servers.S3_KEY_ID not in index.read_bytes().decode("latin-1")

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # only the credentials: the endpoint comes from the Format
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "AWS_ACCESS_KEY_ID": servers.S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": servers.S3_SECRET}
    subprocess.run(
        [JUICEFS, "mount", f"sqlite3://{index}", str(mnt), "-d", "--read-only",
         "--no-usage-report", "--no-bgjob", "--cache-dir", str(tmp_path / "jcache")],
        check=True, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert time.monotonic() < deadline, "juicefs did not mount"
            time.sleep(0.1)
        for path, data in files.items():
            got = (mnt / path).read_bytes()
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), path
        assert (mnt / "hard.bin").read_bytes() == files["big.bin"]
        assert os.stat(mnt / "big.bin").st_nlink == 2
        assert os.readlink(mnt / "soft") == "d/small.txt"
    finally:
        subprocess.run([JUICEFS, "umount", str(mnt)], capture_output=True, timeout=60)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        store.close()


def _format_of(index: Path) -> Format:
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as db:
        (value,) = db.execute("select value from jfs_setting where name='format'").fetchone()
    return Format.from_json(value)
