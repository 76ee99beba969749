"""The Volume JSON document: fields, validation messages, round trips and the seed API surface."""

from __future__ import annotations

import inspect
import json

import pydantic
import pytest

from volume import ActionRef, File, ROVolume, RWVolume, Volume, plugins
from volume.errors import VolumeNotMounted, VolumeValidationError
from volume.juicefs import VOLUME_NAME_RULE

FIELDS = [
    "kind",
    "name",
    "bucket",
    "storage",
    "region",
    "index",
    "metadata_store_type",
    "used_bytes",
    "inode_count",
    "index_bytes",
    "message",
    "produced_by",
    "parent_produced_by",
]
CLASSES = [Volume, ROVolume, RWVolume]
INSTALLED_OBJECT_STORES = plugins.names(plugins.OBJECT_STORES)
INSTALLED_META_STORES = plugins.names(plugins.META_STORES)


def full_document() -> dict:
    """A document with every field set."""
    return {
        "kind": "flyte.volume/v1",
        "name": "training-data",
        "bucket": "s3://my-bucket/volumes",
        "storage": "s3",
        "region": "us-east-1",
        "index": {
            "path": "s3://my-bucket/volumes/training-data/index/v3.db",
            "name": "v3.db",
            "format": "sqlite",
            "hash": "sha256:00ff",
        },
        "metadata_store_type": "sqlite",
        "used_bytes": 1 << 40,
        "inode_count": 12345,
        "index_bytes": 65536,
        "message": "add shards 7-9",
        "produced_by": {
            "name": "a0",
            "run_name": "r1",
            "project": "p",
            "domain": "development",
            "org": "o",
            "output_name": "o0",
            "locator": "s3://my-bucket/volumes/training-data/versions/3/volume.json",
        },
        "parent_produced_by": {
            "name": "a1",
            "run_name": None,
            "project": None,
            "domain": None,
            "org": None,
            "output_name": None,
            "locator": None,
        },
    }


def validation_message(**fields) -> str:
    """The pydantic error text for ``Volume(**fields)``, after checking parse() agrees."""
    with pytest.raises(pydantic.ValidationError) as pydantic_error:
        Volume(**fields)
    with pytest.raises(VolumeValidationError) as typed_error:
        Volume.parse(fields)
    assert isinstance(typed_error.value.__cause__, pydantic.ValidationError)
    for err in pydantic_error.value.errors():
        own = err.get("ctx", {}).get("error")
        assert str(own if isinstance(own, VolumeValidationError) else err["msg"]) in str(
            typed_error.value
        )
    return str(pydantic_error.value)


# --------------------------------------------------------------------------- fields


def test_fields_are_the_document_in_order_and_described():
    for cls in CLASSES:
        assert list(cls.model_fields) == FIELDS
        assert all(info.description for info in cls.model_fields.values())
    for cls in (ActionRef, File):
        assert all(info.description for info in cls.model_fields.values())


def test_minimal_volume_defaults():
    vol = Volume(name="abc", bucket="/tmp/b")
    assert vol.kind == "flyte.volume/v1"
    assert vol.storage == "file"
    assert all(getattr(vol, f) is None for f in FIELDS[4:])


def test_dump_is_exactly_the_document_fields():
    vol = RWVolume(name="abc", bucket="/tmp/b")
    assert list(json.loads(vol.model_dump_json())) == FIELDS
    assert vol._mount is None  # mount state exists, privately


def test_action_ref_and_file_shapes():
    assert list(ActionRef.model_fields) == [
        "name", "run_name", "project", "domain", "org", "output_name", "locator"
    ]
    assert list(File.model_fields) == ["path", "name", "format", "hash"]
    assert ActionRef(name="a").locator is None
    assert File(path="/x").hash is None
    with pytest.raises(pydantic.ValidationError, match="colour"):
        File(path="/x", colour="red")


# --------------------------------------------------------------------------- storage and bucket


@pytest.mark.parametrize(
    "bucket, storage",
    [
        ("s3://b", "s3"),
        ("s3://b/some/prefix", "s3"),
        ("gs://b/p", "gs"),
        ("gcs://b/p", "gs"),
        ("abfs://container/p", "wasb"),
        ("abfss://container@acct.dfs.core.windows.net/p", "wasb"),
        ("wasb://container/p", "wasb"),
        ("wasbs://container/p", "wasb"),
        ("file:///srv/volumes", "file"),
        ("/srv/volumes", "file"),
        ("relative/dir", "file"),
        ("mybucket", "file"),
        ("S3://b", "s3"),  # schemes are case-insensitive
    ],
)
def test_storage_is_inferred_from_bucket(bucket, storage):
    for given in ({}, {"storage": None}):
        vol = Volume(name="abc", bucket=bucket, **given)
        assert vol.storage == storage
        assert vol.bucket == bucket  # never normalised


@pytest.mark.parametrize("storage", sorted({"s3", "gs", "wasb", "file", *INSTALLED_OBJECT_STORES}))
def test_every_accepted_storage_with_a_plain_bucket(storage):
    assert Volume(name="abc", bucket="plain-name", storage=storage).storage == storage


@pytest.mark.parametrize("plugin", INSTALLED_OBJECT_STORES)
def test_installed_plugin_owns_its_scheme(plugin):
    assert Volume(name="abc", bucket=f"{plugin}://root").storage == plugin


def test_matching_explicit_storage_is_accepted():
    assert Volume(name="abc", bucket="gcs://b", storage="gs").storage == "gs"


def test_unknown_storage_lists_accepted_names():
    message = validation_message(name="abc", bucket="/b", storage="ceph")
    assert "'ceph'" in message
    for name in ("s3", "gs", "wasb", "file", *INSTALLED_OBJECT_STORES):
        assert name in message


@pytest.mark.parametrize("bucket", ["ftp://x", "hdfs://nn/path", "http://example.com/b"])
def test_unknown_scheme_is_named_and_supported_ones_listed(bucket):
    scheme = bucket.split("://")[0]
    message = validation_message(name="abc", bucket=bucket)
    assert f"'{scheme}://'" in message
    for supported in ("s3://", "gs://", "gcs://", "abfs://", "wasb://", "file://"):
        assert supported in message
    assert "plain local path" in message


@pytest.mark.parametrize(
    "bucket, says",
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("\t\n", "is empty"),
        ("s3://", "names no bucket"),
        ("gs://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("file://", "names no path"),
        ("/srv/a\0b", "NUL"),
    ],
)
def test_malformed_bucket(bucket, says):
    message = validation_message(name="abc", bucket=bucket)
    assert "bucket" in message and says in message


def test_malformed_bucket_is_the_only_error_when_storage_is_omitted():
    with pytest.raises(pydantic.ValidationError) as err:
        Volume(name="abc", bucket="s3://")
    assert [e["loc"] for e in err.value.errors()] == [("bucket",)]


@pytest.mark.parametrize(
    "storage, bucket, implied",
    [("gs", "s3://b", "s3"), ("s3", "abfs://c/p", "wasb"), ("s3", "file:///d", "file")],
)
def test_storage_bucket_mismatch(storage, bucket, implied):
    message = validation_message(name="abc", bucket=bucket, storage=storage)
    assert f"storage {storage!r}" in message
    assert bucket in message and f"storage {implied!r}" in message


# --------------------------------------------------------------------------- name


@pytest.mark.parametrize(
    "name",
    ["ab", "a", "", "Abc", "abC", "-abc", "abc-", "ab_c", "a.bc", "a" * 64, "abc\n"],
    ids=["two", "one", "empty", "upper", "upper-end", "lead-dash", "trail-dash", "underscore",
         "dot", "64-chars", "trailing-newline"],
)
def test_bad_name_quotes_the_rule(name):
    message = validation_message(name=name, bucket="/b")
    assert VOLUME_NAME_RULE in message
    assert repr(name) in message


@pytest.mark.parametrize("name", ["abc", "a-b", "0ab", "a--b", "a" * 63, "9" * 3])
def test_good_names(name):
    assert Volume(name=name, bucket="/b").name == name


# --------------------------------------------------------------------------- kind, store type, extra


def test_wrong_kind_says_which_kind_is_expected():
    message = validation_message(kind="flyte.volume/v2", name="abc", bucket="/b")
    assert "kind" in message and "'flyte.volume/v1'" in message


def test_json_without_kind_gets_the_default():
    vol = Volume.model_validate_json('{"name": "abc", "bucket": "s3://b"}')
    assert vol.kind == "flyte.volume/v1"


@pytest.mark.parametrize("store_type", sorted({"redis", *INSTALLED_META_STORES}))
def test_known_metadata_store_types(store_type):
    assert Volume(name="abc", bucket="/b", metadata_store_type=store_type).metadata_store_type


def test_unknown_metadata_store_type_lists_accepted_ones():
    message = validation_message(name="abc", bucket="/b", metadata_store_type="etcd")
    assert "'etcd'" in message
    for name in ("redis", *INSTALLED_META_STORES):
        assert name in message


def test_unknown_field_is_named():
    message = validation_message(name="abc", bucket="/b", colour="red")
    assert "colour" in message and "Extra inputs are not permitted" in message


def test_negative_counts_are_rejected():
    validation_message(name="abc", bucket="/b", used_bytes=-1)


# --------------------------------------------------------------------------- parse


@pytest.mark.parametrize("cls", CLASSES)
def test_parse_accepts_dict_str_and_bytes(cls):
    doc = full_document()
    text = json.dumps(doc)
    for data in (doc, text, text.encode()):
        vol = cls.parse(data)
        assert type(vol) is cls
        assert vol.model_dump() == doc


def test_parse_reports_every_error_with_its_field():
    with pytest.raises(VolumeValidationError) as err:
        Volume.parse('{"name": "A", "bucket": "ftp://x", "storage": "ceph"}')
    text = str(err.value)
    assert text.startswith("invalid Volume: ")
    assert "name: volume name 'A'" in text
    assert "bucket: bucket 'ftp://x'" in text
    assert "storage: unknown storage 'ceph'" in text
    assert "Value error" not in text


def test_parse_of_malformed_json():
    with pytest.raises(VolumeValidationError, match="Invalid JSON"):
        Volume.parse("{not json")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cls", CLASSES)
def test_json_round_trip_is_lossless(cls):
    vol = cls.model_validate(full_document())
    again = cls.model_validate_json(vol.model_dump_json())
    assert again == vol
    assert again.model_dump() == full_document()


def test_round_trip_of_a_minimal_document_keeps_the_inferred_storage():
    vol = Volume(name="abc", bucket="gcs://b")
    assert Volume.model_validate_json(vol.model_dump_json()) == vol


@pytest.mark.parametrize("source", CLASSES)
def test_conversions_keep_every_field(source):
    vol = source.model_validate(full_document())
    ro, rw = vol.as_ro(), vol.as_rw()
    assert type(ro) is ROVolume and type(rw) is RWVolume
    assert ro.model_dump() == rw.model_dump() == full_document()
    assert ROVolume.model_validate(rw.model_dump()) == ro
    assert RWVolume.model_validate(ro.model_dump()) == rw


def test_subclasses_are_volumes():
    assert issubclass(ROVolume, Volume) and issubclass(RWVolume, Volume)


# --------------------------------------------------------------------------- assignment


def test_assignment_is_validated_and_a_failure_changes_nothing():
    vol = Volume(name="abc", bucket="s3://b")
    with pytest.raises(pydantic.ValidationError, match=r"\^\[a-z0-9\]"):
        vol.name = "Bad"
    with pytest.raises(pydantic.ValidationError, match="does not match"):
        vol.bucket = "gs://other"
    assert (vol.name, vol.bucket, vol.storage) == ("abc", "s3://b", "s3")
    vol.message = "ok"
    assert vol.message == "ok"


def test_assigning_no_storage_infers_it_again():
    vol = Volume(name="abc", bucket="plain", storage="s3")
    with pytest.raises(pydantic.ValidationError, match="does not match"):
        vol.bucket = "gs://b"  # storage stays as given, so the scheme contradicts it
    vol.bucket = "s3://b"
    vol.storage = None
    assert vol.storage == "s3"
    vol.bucket = "plain"
    vol.storage = None
    assert vol.storage == "file"
    vol.storage = "s3"
    with pytest.raises(pydantic.ValidationError):
        vol.storage = "ceph"


# --------------------------------------------------------------------------- seed API surface


def ro() -> ROVolume:
    return ROVolume(name="abc", bucket="/b")


def rw() -> RWVolume:
    return RWVolume(name="abc", bucket="/b")


SEED_API = {
    # callable -> its parameters with their defaults, as the seed gives them
    Volume.empty: {"name": inspect.Parameter.empty, "bucket": None, "storage": None,
                   "region": None, "metadata_store_type": None},
    Volume.new: {"name": None, "bucket": None, "storage": None, "region": None,
                 "metadata_store_type": None},
    Volume.from_locator: {"uri": inspect.Parameter.empty},
    Volume.migrate_metadata_store_type: {
        "self": inspect.Parameter.empty, "new_metadata_store_type": inspect.Parameter.empty,
        "meta_dir": None, "new_meta_dir": None},
    ROVolume.mount: {
        "self": inspect.Parameter.empty, "mount_path": None, "meta_dir": None, "cache_dir": None,
        "timeout": 120, "attr_cache": 1.0, "entry_cache": 1.0, "dir_entry_cache": 1.0,
        "transport": "auto", "xattrs": True},
    ROVolume.fork: {"self": inspect.Parameter.empty, "name": inspect.Parameter.empty,
                    "meta_dir": None, "timeout": 60},
    ROVolume.unmount: {"self": inspect.Parameter.empty},
    RWVolume.mount: {
        "self": inspect.Parameter.empty, "mount_path": None, "meta_dir": None, "cache_dir": None,
        "timeout": 120, "attr_cache": 1.0, "entry_cache": 1.0, "dir_entry_cache": 1.0,
        "writeback": True, "upload_workers": 8, "buffer_size_mb": 300, "transport": "auto",
        "xattrs": True},
    RWVolume.commit: {"self": inspect.Parameter.empty, "message": None, "mount_path": None,
                      "meta_dir": None, "timeout": None},
    RWVolume.finalize: {"self": inspect.Parameter.empty, "message": None, "timeout": 60},
    RWVolume.unmount: {"self": inspect.Parameter.empty},
}  # fmt: skip


@pytest.mark.parametrize("method", SEED_API, ids=lambda m: m.__qualname__)
def test_seed_api_signature(method):
    params = inspect.signature(method).parameters
    assert {name: p.default for name, p in params.items()} == SEED_API[method]
    assert method.__doc__


def test_deprecated_volume_commit():
    params = inspect.signature(Volume.commit).parameters
    assert {n: p.default for n, p in params.items()} == {
        "self": inspect.Parameter.empty, "mount_path": None, "meta_dir": None, "timeout": 60,
        "message": None,
    }
    with pytest.warns(DeprecationWarning, match="RWVolume"):
        with pytest.raises(VolumeNotMounted, match="not mounted"):
            Volume(name="abc", bucket="/b").commit()


@pytest.mark.parametrize("handle", [ro, rw])
def test_unmounted_handles_say_so(handle):
    vol = handle()
    assert not vol.mounted
    with pytest.raises(VolumeNotMounted, match="mount"):
        vol.fs
    with pytest.raises(VolumeNotMounted):
        vol.unmount()
    with vol as entered:  # leaving the block of an unmounted handle is not an error
        assert entered is vol
