"""The seed's ``ROVolume`` page (``flyteplugins.union.io``), called exactly as it documents it.

``PAGE`` below transcribes that page: the model's fields and, for every method it lists, the
parameters in order with their documented types and the documented return type. The page shows
no defaults; the defaults are this project's and are fixed by the signature block of
``spec/volume.md``, which :func:`test_spec_signatures_are_the_code` holds to the code. Parameters
this project adds (``transport``, ...) may only follow the seed's and must have defaults, so a
call written against the seed runs unchanged; a renamed, reordered, retyped or removed one fails
here.
"""

from __future__ import annotations

import ast
import inspect
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from volume import ROVolume, RWVolume, Volume
from volume.errors import VolumeReadOnly

SPEC = Path(__file__).resolve().parents[2] / "spec" / "volume.md"

# (parameter, documented type) in the page's order, and the documented return type (None: none)
PAGE_FIELDS = [
    "kind", "name", "bucket", "storage", "region", "index", "metadata_store_type", "used_bytes",
    "inode_count", "index_bytes", "message", "produced_by", "parent_produced_by",
]  # fmt: skip
PAGE: dict[str, tuple[list[tuple[str, str]], str | None]] = {
    "commit": ([("mount_path", "str"), ("meta_dir", "str"), ("timeout", "float"),
                ("message", "Optional[str]")], "Volume"),
    "empty": ([("name", "str"), ("bucket", "Optional[str]"),
               ("storage", "Optional[StorageBackend]"),
               ("region", "Optional[str]"), ("metadata_store_type", "Optional[str]")], "Volume"),
    "fork": ([("name", "str"), ("meta_dir", "str"), ("timeout", "float")], "RWVolume"),
    "migrate_metadata_store_type": ([("new_metadata_store_type", "str"), ("meta_dir", "str"),
                                     ("new_meta_dir", "Optional[str]")], "Volume"),
    "model_post_init": ([("context", "Any")], None),
    "mount": ([("mount_path", "str"), ("meta_dir", "str"), ("cache_dir", "str"),
               ("timeout", "float"), ("attr_cache", "float"), ("entry_cache", "float"),
               ("dir_entry_cache", "float")], None),
    "new": ([("name", "Optional[str]"), ("bucket", "Optional[str]"),
             ("storage", "Optional[StorageBackend]"), ("region", "Optional[str]"),
             ("metadata_store_type", "Optional[str]")], "RWVolume"),
}  # fmt: skip


def parameters(method: Any) -> list[inspect.Parameter]:
    params = list(inspect.signature(method).parameters.values())
    return params[1:] if params and params[0].name in ("self", "cls") else params


def test_fields_are_the_pages_in_its_order() -> None:
    assert list(ROVolume.model_fields) == PAGE_FIELDS
    assert list(inspect.signature(ROVolume).parameters) == PAGE_FIELDS


@pytest.mark.parametrize("name", sorted(PAGE))
def test_method_signature_is_the_pages(name: str) -> None:
    check_against_page(name, getattr(ROVolume, name))


def check_against_page(name: str, method: Any) -> None:
    documented, returns = PAGE[name]
    params = parameters(method)
    assert [p.name for p in params[: len(documented)]] == [n for n, _ in documented]
    for p in params[: len(documented)]:  # every one can be passed by position, as documented
        assert p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    for p in params[len(documented) :]:  # additions come last and have defaults
        assert p.default is not p.empty, f"{name}: added parameter {p.name} needs a default"
    for p, (_, doc_type) in zip(params, documented):
        if doc_type.startswith("Optional["):  # documented as optional: defaults to None
            assert p.default is None, f"{name}({p.name}) should default to None"
    if returns is not None:
        assert inspect.signature(method).return_annotation == returns
    if name != "model_post_init":
        assert method.__doc__


def test_a_drifted_signature_fails() -> None:
    def reordered(self, meta_dir=None, name="x", timeout=60) -> RWVolume:  # noqa: ANN001
        """drifted"""

    def renamed(self, name, meta=None, timeout=60) -> RWVolume:  # noqa: ANN001
        """drifted"""

    def retyped(self, name, meta_dir=None, timeout=60) -> ROVolume:  # noqa: ANN001
        """drifted"""

    def appended_with_default(self, name, meta_dir=None, timeout=60, x=1) -> RWVolume:  # noqa
        """not drifted: the addition has a default"""

    def inserted(self, name, extra, meta_dir=None, timeout=60) -> RWVolume:  # noqa: ANN001
        """drifted"""

    for drifted in (reordered, renamed, retyped, inserted):
        with pytest.raises(AssertionError):
            check_against_page("fork", drifted)
    check_against_page("fork", appended_with_default)


def test_ro_volume_has_no_commit_of_its_own_and_no_finalize() -> None:
    # "There is no commit method here": the one it has is Volume's deprecated one
    assert ROVolume.commit is Volume.commit
    assert not hasattr(ROVolume, "finalize")


# --------------------------------------------------------------------------- spec/volume.md


def spec_signatures() -> dict[tuple[str, str], ast.FunctionDef]:
    block = re.search(r"## Handles and verbs.*?```python\n(.*?)```", SPEC.read_text(), re.S)
    assert block, "spec/volume.md has lost its signature block"
    tree = ast.parse(block.group(1))
    return {
        (cls.name, fn.name): fn
        for cls in tree.body if isinstance(cls, ast.ClassDef)
        for fn in cls.body if isinstance(fn, ast.FunctionDef)
    }  # fmt: skip


SPEC_SIGNATURES = spec_signatures()
CLASSES = {"Volume": Volume, "ROVolume": ROVolume, "RWVolume": RWVolume}


@pytest.mark.parametrize("where", sorted(SPEC_SIGNATURES), ids="{0[0]}.{0[1]}".format)
def test_spec_signatures_are_the_code(where: tuple[str, str]) -> None:
    fn = SPEC_SIGNATURES[where]
    method = getattr(CLASSES[where[0]], where[1])
    args = fn.args.args[1:]  # self / cls
    defaults = [None] * (len(args) - len(fn.args.defaults)) + list(fn.args.defaults)
    documented = [
        (a.arg, ast.unparse(a.annotation), inspect.Parameter.empty if d is None else
         ast.literal_eval(d))
        for a, d in zip(args, defaults)
    ]  # fmt: skip
    actual = [(p.name, p.annotation, p.default) for p in parameters(method)]
    assert actual == documented
    assert inspect.signature(method).return_annotation == ast.unparse(fn.returns)


def test_every_verb_of_the_code_is_in_the_spec() -> None:
    public = {
        (cls_name, name)
        for cls_name, cls in CLASSES.items()
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(getattr(cls, name, None))
        and name in {"empty", "new", "from_locator", "mount", "fork", "commit", "finalize",
                     "migrate_metadata_store_type", "unmount"}
    }  # fmt: skip
    assert public <= set(SPEC_SIGNATURES)


# --------------------------------------------------------------------------- called as documented


def files(vol: Volume) -> dict[str, bytes]:
    return {p.rsplit("/", 1)[-1]: vol.fs.cat_file(p) for p in sorted(vol.fs.find("/"))}


def test_every_method_called_as_the_page_documents(
    bucket: str, tmp_path: Path, twin_store_type: str
) -> None:
    # empty(name, bucket, storage, region, metadata_store_type) -> Volume
    declared = ROVolume.empty("seed-empty", bucket, None, None, "sqlite")
    assert type(declared) is Volume and declared.index is None
    # new(name, bucket, storage, region, metadata_store_type) -> RWVolume
    rw = ROVolume.new("seed-page", bucket, None, None, "sqlite")
    assert type(rw) is RWVolume
    rw.mount(transport="none").fs.pipe_file("/a.txt", b"alpha")
    ro = rw.finalize("base")
    # the constructor, every field by keyword
    rebuilt = ROVolume(**{f: getattr(ro, f) for f in PAGE_FIELDS})
    assert rebuilt == ro
    # model_post_init(context)
    assert rebuilt.model_post_init(None) is None
    # mount(mount_path, meta_dir, cache_dir, timeout, attr_cache, entry_cache, dir_entry_cache)
    mounted = ro.mount(str(tmp_path / "mnt"), str(tmp_path / "meta"), str(tmp_path / "cache"),
                       30.0, 1.0, 1.0, 1.0, transport="none")  # fmt: skip
    assert mounted is ro and files(ro) == {"a.txt": b"alpha"}
    # commit(mount_path, meta_dir, timeout, message) -> Volume: deprecated; a read-only mount
    # has nothing to commit
    with pytest.warns(DeprecationWarning), pytest.raises(VolumeReadOnly):
        ro.commit(str(tmp_path / "mnt"), str(tmp_path / "meta"), 30.0, "nothing")
    ro.unmount()
    # fork(name, meta_dir, timeout) -> RWVolume
    child = ro.fork("seed-child", str(tmp_path / "fork-meta"), 30.0)
    assert type(child) is RWVolume and child.parent_produced_by == ro.produced_by
    fork_point = child.produced_by
    child.mount(mount_path=str(tmp_path / "child"), transport="none")
    child.fs.pipe_file("/b.txt", b"beta")
    # the deprecated commit of the seed's page, called on the ROVolume, commits the mount it
    # names, whichever handle owns it
    with pytest.warns(DeprecationWarning, match="deprecated"):
        version = ro.commit(str(tmp_path / "child"), None, 30.0, "through the page")
    assert isinstance(version, Volume) and version.message == "through the page"
    assert not child.mounted and version.parent_produced_by == fork_point
    with version.mount(transport="none") as committed:
        assert files(committed) == {"a.txt": b"alpha", "b.txt": b"beta"}
    # migrate_metadata_store_type(new_metadata_store_type, meta_dir, new_meta_dir) -> Volume
    migrated = ro.migrate_metadata_store_type(
        twin_store_type, str(tmp_path / "m-src"), str(tmp_path / "m-dst")
    )
    assert isinstance(migrated, Volume) and migrated.metadata_store_type == twin_store_type
    assert migrated.parent_produced_by == ro.produced_by
    with migrated.mount(transport="none") as again:
        assert files(again) == {"a.txt": b"alpha"}


@pytest.mark.fuse
def test_mount_exactly_as_documented_is_a_kernel_mount(bucket: str, tmp_path: Path) -> None:
    import os

    rw = Volume.new("seed-kernel", bucket=bucket)
    rw.mount(transport="none").fs.pipe_file("/k.txt", b"kernel")
    ro = rw.finalize()
    mnt = tmp_path / "mnt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "auto" must not fall back to in-process here
        ro.mount(str(mnt), str(tmp_path / "meta"), str(tmp_path / "cache"), 30.0, 1.0, 1.0, 1.0)
    try:
        assert os.path.ismount(mnt)
        assert (mnt / "k.txt").read_bytes() == b"kernel"
    finally:
        ro.unmount()
    assert not os.path.ismount(mnt)
