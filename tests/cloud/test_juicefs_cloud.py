"""The real JuiceFS client mounts a version we committed to S3 (moto), GCS (fake-gcs-server) and
Azure (Azurite), given only the credentials (and, for the emulators, the variables their SDKs
honour): the Format in our index names the bucket in the client's own form."""

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
from volume.plugins import object_store_class

from . import servers

JUICEFS = juicefs_binary()


def _fuse_ok() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def _setup(kind: str, request: pytest.FixtureRequest, tmp_path: Path):
    """(our bucket URI, the Format's expected Bucket, the JuiceFS client's environment)."""
    name = f"jfs-{uuid.uuid4().hex[:10]}"  # JuiceFS finds objects at the bucket's root
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    if kind == "s3":
        server = request.getfixturevalue("s3_env")
        servers.create_s3_bucket(server, name)
        env.update(AWS_ACCESS_KEY_ID=servers.S3_KEY_ID, AWS_SECRET_ACCESS_KEY=servers.S3_SECRET)
        return f"s3://{name}", f"{server.url}/{name}", env, [servers.S3_SECRET, servers.S3_KEY_ID]
    if kind == "gs":
        server = request.getfixturevalue("gcs_env")
        servers.create_gcs_bucket(server, name)
        env.update(STORAGE_EMULATOR_HOST=server.url.removeprefix("http://"),
                   GOOGLE_CLOUD_PROJECT="test")  # fmt: skip
        return f"gs://{name}", f"gs://{name}", env, []
    server = request.getfixturevalue("azure_env")
    servers.create_azure_container(server, name)
    env.update(AZURE_STORAGE_CONNECTION_STRING=server.env["AZURE_STORAGE_CONNECTION_STRING"])
    return (f"abfss://{name}", f"https://{name}.blob.core.windows.net", env,
            [servers.AZURITE_KEY])  # fmt: skip


@pytest.mark.fuse
@pytest.mark.parametrize("kind", ["s3", "gs", "wasb"])
def test_juicefs_client_reads_a_version_we_committed(kind, request, tmp_path: Path) -> None:
    servers.require(JUICEFS is not None, SKIP_REASON)
    servers.require(_fuse_ok(), "/dev/fuse or fusermount3 missing")
    uri, format_bucket, env, secrets = _setup(kind, request, tmp_path)
    rng = random.Random(11)
    files = {"big.bin": rng.randbytes(9 * (1 << 20) + 5), "d/small.txt": b"hello cloud\n"}
    rw = Volume.new(f"jfs-{kind}", bucket=uri).mount(meta_dir=tmp_path / "meta", transport="none")
    fs = PathFS(rw._mount.engine)
    fs.mkdir("/d")
    for path, data in files.items():
        fs.write_bytes(f"/{path}", data)
    fs.link("/big.bin", "/hard.bin")
    fs.symlink("d/small.txt", "/soft")
    version = rw.finalize("for juicefs")

    store = object_store_class(kind).from_uri(uri)
    index = tmp_path / "index.db"
    store.get_file(version.index.path[len(store.uri) :], index)
    fmt = _format_of(index)
    assert fmt.Storage == kind and fmt.Bucket == format_bucket
    raw = index.read_bytes().decode("latin-1")
    assert not [secret for secret in secrets if secret in raw]

    if kind == "gs":
        pytest.skip(
            "the JuiceFS client's Go GCS SDK reads objects through the XML API, where "
            "fake-gcs-server answers 'object doesn't exist' for keys holding '/' (the blocks that "
            "gcsfs reads back fine); the Format above is the client's own gs:// form"
        )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # only the credentials (S3's endpoint comes from the Format)
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
        subprocess.run([JUICEFS, "umount", str(mnt)], capture_output=True, timeout=60, check=False)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        store.close()


def _format_of(index: Path) -> Format:
    with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as db:
        (value,) = db.execute("select value from jfs_setting where name='format'").fetchone()
    return Format.from_json(value)
