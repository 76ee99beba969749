"""Failures on S3 (moto behind a fault-injecting proxy): a block deleted behind our back reads as
EIO naming the key, never wrong bytes; a commit whose blocks cannot be stored fails and publishes
no version."""

from __future__ import annotations

import contextlib
import errno
import os
import random

import pytest
from volume_s3 import S3ObjectStore

from volume import Volume
from volume.engine import PathFS
from volume.errors import VolumeError

from .conftest import S3_BUCKET
from .proxy import CountingProxy

MiB = 1 << 20


def test_a_block_deleted_behind_our_back_is_eio_naming_the_key(
    s3_env, unique_prefix, tmp_path
) -> None:
    uri = f"s3://{S3_BUCKET}/{unique_prefix}"
    data = random.Random(8).randbytes(6 * MiB)
    rw = Volume.new("deleted", bucket=uri).mount(meta_dir=tmp_path / "rw", transport="none")
    PathFS(rw._mount.engine).write_bytes("/f", data)
    version = rw.finalize("v")
    store = S3ObjectStore.from_uri(uri)
    blocks = sorted(info.key for info in store.list("deleted/chunks/"))
    assert len(blocks) == 2
    store.delete(blocks[1])  # the second 4 MiB block
    version.mount(meta_dir=tmp_path / "ro", transport="none")
    fs = PathFS(version._mount.engine)
    fd = fs.open("/f")
    assert fs.read(fd, MiB, 0) == data[:MiB]  # the block that is still there reads fine
    with pytest.raises(OSError) as caught:
        fs.read(fd, MiB, 5 * MiB)
    assert caught.value.errno == errno.EIO
    assert blocks[1] in str(caught.value)  # the message names the missing key
    fs.close(fd)
    version.unmount()
    store.close()


def test_a_commit_whose_blocks_cannot_be_stored_publishes_nothing(
    s3_env, unique_prefix, tmp_path, monkeypatch
) -> None:
    proxy = CountingProxy(s3_env.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    uri = f"s3://{S3_BUCKET}/{unique_prefix}"
    try:
        rw = Volume.new("unstored", bucket=uri).mount(meta_dir=tmp_path / "rw", transport="none")
        engine = rw._mount.engine
        proxy.inject(*([403] * 1000), methods={"PUT"})  # every PUT refused, not retried
        fs = PathFS(engine)
        fd = fs.open("/f", os.O_WRONLY | os.O_CREAT)
        fs.write(fd, random.Random(9).randbytes(5 * MiB))
        fs.close(fd)
        with pytest.raises((VolumeError, OSError)):
            rw.commit("must fail")
        proxy.inject()
        direct = S3ObjectStore.from_uri(uri, endpoint=s3_env.url)
        published = [i.key for i in direct.list("unstored/_volume/versions/")]
        assert not [k for k in published if k.endswith("volume.json")], published
        direct.close()
        with contextlib.suppress(Exception):  # the store works again: leave nothing running
            rw.unmount()
    finally:
        proxy.close()
