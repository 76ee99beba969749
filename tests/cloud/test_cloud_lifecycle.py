"""End to end on each cloud store, through a counting proxy in front of the real server:
new -> mount -> write (a big file, many small files, a hard link, a symlink) -> commit -> fork ->
write -> finalize; then a separate process that has only the two version documents mounts both
read-only and compares every byte. The fork moves zero block bytes, and no credential reaches
any object the lifecycle wrote nor any log record."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import sys

import pytest

from volume import Volume
from volume.engine import PathFS

from . import servers
from .conftest import AZURE_CONTAINER, GCS_BUCKET, S3_BUCKET
from .proxy import CountingProxy

MiB = 1 << 20
SLOW = os.environ.get("VOLUME_CLOUD_FULL") == "1"


def _sizes(request: pytest.FixtureRequest) -> tuple[int, int]:
    """(big file bytes, small file count): the issue's full size under -m slow."""
    if SLOW or request.node.get_closest_marker("slow") is not None:
        return 100 * MiB, 1000
    return 12 * MiB + 12345, 100


@pytest.fixture(params=["s3", "gs", "wasb"])
def cloud(request, monkeypatch, unique_prefix):
    """(bucket URI, proxy, secrets) for one store, its endpoint pointed at a counting proxy."""
    kind = request.param
    if kind == "s3":
        server = request.getfixturevalue("s3_env")
        proxy = CountingProxy(server.url)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        uri = f"s3://{S3_BUCKET}/{unique_prefix}"
        secrets = [servers.S3_SECRET, servers.S3_KEY_ID]
    elif kind == "gs":
        server = request.getfixturevalue("gcs_env")
        proxy = CountingProxy(server.url)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        uri = f"gs://{GCS_BUCKET}/{unique_prefix}"
        secrets = []  # the emulator is anonymous
    else:
        server = request.getfixturevalue("azure_env")
        proxy = CountingProxy(server.url)
        conn = server.env["AZURE_STORAGE_CONNECTION_STRING"].replace(server.url, proxy.url)
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
        uri = f"abfss://{AZURE_CONTAINER}/{unique_prefix}"
        secrets = [servers.AZURITE_KEY]
    yield kind, uri, proxy, secrets
    proxy.close()


def _write_tree(fs: PathFS, root: str, big: int, small: int, seed: int) -> dict[str, str]:
    """Write the test tree below ``root``; returns {path: sha256} of every regular file."""
    rng = random.Random(seed)
    digests: dict[str, str] = {}
    fs.makedirs(f"{root}/small", exist_ok=True)
    fd = fs.open(f"{root}/big.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    h = hashlib.sha256()
    written = 0
    while written < big:
        piece = rng.randbytes(min(4 * MiB + 7, big - written))
        fs.write(fd, piece)
        h.update(piece)
        written += len(piece)
    fs.close(fd)
    digests[f"{root}/big.bin"] = h.hexdigest()
    for n in range(small):
        data = rng.randbytes(rng.randrange(0, 3000))
        path = f"{root}/small/{n:04d}.dat"
        fd = fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        fs.write(fd, data)
        fs.close(fd)
        digests[path] = hashlib.sha256(data).hexdigest()
    fs.link(f"{root}/big.bin", f"{root}/hardlink.bin")
    digests[f"{root}/hardlink.bin"] = digests[f"{root}/big.bin"]
    fs.symlink("big.bin", f"{root}/symlink")
    return digests


_CHECKER = r"""
import hashlib, json, os, sys
from volume import Volume
from volume.engine import PathFS
spec = json.load(open(sys.argv[1]))
out = {}
for which in ("v1", "v2"):
    vol = Volume.parse(spec[which])
    vol.mount(meta_dir=os.path.join(spec["tmp"], which + "-ro"), transport="none")
    fs = PathFS(vol._mount.engine)
    seen = {}
    for path in spec["expected_" + which]:
        h = hashlib.sha256()
        fd = fs.open(path)
        offset = 0
        while True:
            piece = fs.read(fd, 8 << 20, offset)
            if not piece:
                break
            h.update(piece)
            offset += len(piece)
        fs.close(fd)
        seen[path] = h.hexdigest()
    links = {p: fs.readlink(p) for p in spec["links_" + which]}
    nlink = fs.stat("/a/big.bin").st_nlink
    vol.unmount()
    out[which] = {"digests": seen, "links": links, "nlink": nlink}
json.dump(out, sys.stdout)
"""


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "size", ["small", pytest.param("full", marks=pytest.mark.slow)]
)  # full: the 100 MiB file and 1,000 small files
def test_end_to_end(cloud, tmp_path, request, caplog, size):
    kind, uri, proxy, secrets = cloud
    big, small = _sizes(request)
    caplog.set_level(logging.DEBUG)
    name = f"e2e-{kind}"
    rw = Volume.new(name, bucket=uri).mount(
        meta_dir=tmp_path / "meta", cache_dir=tmp_path / "cache", transport="none"
    )
    fs = PathFS(rw._mount.engine)
    expected_v1 = _write_tree(fs, "/a", big, small, seed=1)
    v1 = rw.commit("first")
    # fork: metadata only
    proxy.reset_counts()
    fork = v1.fork(f"{name}-fork")
    assert proxy.block_requests() == 0 and proxy.block_bytes() == 0, proxy.requests
    fork.mount(meta_dir=tmp_path / "fork-meta", cache_dir=tmp_path / "fork-cache",
               transport="none")  # fmt: skip
    ffs = PathFS(fork._mount.engine)
    expected_v2 = dict(expected_v1)
    ffs.unlink("/a/small/0000.dat")
    del expected_v2["/a/small/0000.dat"]
    expected_v2.update(_write_tree(ffs, "/b", 3 * MiB + 1, 20, seed=2))
    v2 = fork.finalize("forked")
    rw.finalize("done")

    # a separate process that has only the version documents
    spec = {
        "v1": v1.model_dump_json(), "v2": v2.model_dump_json(), "tmp": str(tmp_path),
        "expected_v1": sorted(expected_v1), "expected_v2": sorted(expected_v2),
        "links_v1": ["/a/symlink"], "links_v2": ["/a/symlink", "/b/symlink"],
    }  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    checked = subprocess.run(
        [sys.executable, "-c", _CHECKER, str(tmp_path / "spec.json")],
        capture_output=True, text=True, timeout=600, env=os.environ.copy(), check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr[-3000:]
    result = json.loads(checked.stdout)
    assert result["v1"]["digests"] == expected_v1
    assert result["v2"]["digests"] == expected_v2
    assert result["v1"]["links"] == {"/a/symlink": "big.bin"}
    assert result["v2"]["links"] == {"/a/symlink": "big.bin", "/b/symlink": "big.bin"}
    assert result["v1"]["nlink"] == 2 and result["v2"]["nlink"] == 2

    # credentials: never in an object the lifecycle wrote, a version document, or a log record
    from volume.plugins import object_store_class

    store = object_store_class(kind).from_uri(uri)
    leaks = []
    documents = [v1.model_dump_json(), v2.model_dump_json()]
    for info in store.list():
        if "/chunks/" in info.key:
            continue  # blocks hold only the random file data written above
        documents.append(store.get(info.key).decode("latin-1"))
    documents += [record.getMessage() for record in caplog.records]
    documents += [checked.stderr]
    for secret in secrets:
        leaks += [doc[:200] for doc in documents if secret in doc]
    assert not leaks, leaks
    assert any("meta" in info.key or "index" in info.key or info.key.endswith(".db")
               for info in store.list())  # fmt: skip
    store.close()
