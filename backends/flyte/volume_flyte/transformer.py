"""The Flyte type transformer for ``Volume``, ``ROVolume`` and ``RWVolume``.

A volume crosses a task boundary as its JSON document (``spec/volume.md``), in the encoding Flyte
uses for structured values: a msgpack binary scalar of that JSON object, typed as a STRUCT whose
metadata is the document's JSON Schema. The literal's metadata also records which class the value
was (``volume-class``) so the receiving side can tell a published version from a working copy.

Task outputs (while Flyte converts a task's return value):

* an ``RWVolume`` is finalized (drained, published, unmounted) and the output is the ``ROVolume``;
  a fork that was never mounted is mounted in-process and finalized;
* an ``ROVolume`` passes through unchanged;
* ``produced_by.output_name`` is filled in when empty and ``produced_by`` is this task's action.

Task inputs are documents as they are: a working copy must not be mounted (its unpublished
writes could not reach the task). A ``@flyte.trace`` call's result is recorded as it stands (not
finalized: the call returns the live handle to the task). A declared ``ROVolume`` never receives an ``RWVolume`` or the
reverse; both are :class:`~volume_flyte.errors.VolumeTypeMismatch`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Mapping, Optional, Type

try:
    import msgpack
    from flyte.types import TypeEngine, TypeTransformer, TypeTransformerFailedError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"volume_flyte.transformer needs the Flyte 2 SDK ({exc}); install the extra: "
        f"pip install 'volume[flyte]'"
    ) from exc
from flyteidl2.core.literals_pb2 import Binary, Literal, Scalar
from flyteidl2.core.types_pb2 import LiteralType, SimpleType, TypeAnnotation, TypeStructure
from google.protobuf import json_format, struct_pb2

from volume.model import VOLUME_KIND, ROVolume, RWVolume, Volume

from . import context
from .errors import (
    VolumeFlyteError,
    VolumeMountedInput,
    VolumeNothingToFinalize,
    VolumeTypeMismatch,
)

__all__ = ["VolumeTransformer", "register", "CLASS_KEY", "MSGPACK"]

MSGPACK = "msgpack"  # Flyte's binary tag for msgpack-encoded structured values
JSON = "json"  # also read: a binary scalar holding the JSON text itself
CLASS_KEY = "volume-class"  # literal metadata: the class the value had when it was serialised
_CLASSES: dict[str, type[Volume]] = {"Volume": Volume, "ROVolume": ROVolume, "RWVolume": RWVolume}


def _kind(t: type) -> str:
    if isinstance(t, type) and issubclass(t, ROVolume):
        return "ROVolume"
    if isinstance(t, type) and issubclass(t, RWVolume):
        return "RWVolume"
    return "Volume"


def _where(output: Optional[str]) -> str:
    return f"task output {output!r}" if output else "task input"


class VolumeTransformer(TypeTransformer[Volume]):
    """Serialises volumes as their JSON document; finalizes working copies a task returns."""

    def __init__(self) -> None:
        # the declared-vs-returned check is ours (with its own errors), not the engine's isinstance
        super().__init__(VOLUME_KIND, Volume, enable_type_assertions=False)

    # ------------------------------------------------------------------ types

    def get_literal_type(self, t: Type[Volume]) -> LiteralType:
        schema = struct_pb2.Struct()
        schema.update(t.model_json_schema())
        annotation = struct_pb2.Struct()
        annotation.update({"cache-key-metadata": {"serialization-format": MSGPACK}})
        return LiteralType(
            simple=SimpleType.STRUCT,
            metadata=schema,
            annotation=TypeAnnotation(annotations=annotation),
            structure=TypeStructure(tag=self.name),
        )

    def guess_python_type(self, literal_type: LiteralType) -> Type[Volume]:
        if literal_type.HasField("structure") and literal_type.structure.tag == self.name:
            return Volume
        raise ValueError(f"{self.name} transformer cannot reverse {literal_type}")

    # ------------------------------------------------------------------ python -> literal

    async def to_literal(
        self, python_val: Any, python_type: Type[Volume], expected: Optional[LiteralType]
    ) -> Literal:
        if isinstance(python_val, Mapping):  # a JSON-like input (CLI, API): the declared class
            python_val = _CLASSES[_kind(python_type)].parse(python_val)
        if not _output_name_known():
            raise VolumeFlyteError(
                "this Flyte SDK does not say which task output it is converting, so a returned "
                "RWVolume cannot be finalized; install flyte>=2.12 (pip install 'volume[flyte]')"
            )
        output = context.output_name()
        if output is None:
            value = _as_input(python_val, python_type)
        elif context.recording_in_task():
            # the result of a @flyte.trace call, recorded as it stands: the call returns the live
            # handle to the task, and the task's own return is where a working copy is finalized
            _check_declared(python_val, python_type, output)
            value = python_val
        else:
            value = await _as_output(python_val, python_type, output)
        document = json.loads(value.model_dump_json())
        return Literal(
            scalar=Scalar(binary=Binary(value=msgpack.dumps(document), tag=MSGPACK)),
            metadata={CLASS_KEY: _kind(type(value))},
        )

    # ------------------------------------------------------------------ literal -> python

    async def to_python_value(self, lv: Literal, expected_python_type: Type[Volume]) -> Volume:
        document = _document(lv)
        was = lv.metadata.get(CLASS_KEY, "")
        expected = _kind(expected_python_type)
        if expected == "ROVolume":
            cls: type[Volume] = expected_python_type
        elif expected == "RWVolume":
            # a working copy a task returned was finalized: what arrives is the published version
            cls = ROVolume if was == "ROVolume" else expected_python_type
        else:
            cls = _CLASSES.get(was, expected_python_type)
        return cls.parse(document)


# ---------------------------------------------------------------------- helpers


def _output_name_known() -> bool:
    """Whether this Flyte SDK says which task output it is converting (``current_output_name``;
    without it a returned working copy cannot be told from an input)."""
    try:
        from flyte._internal.runtime import convert
    except ImportError:
        return False
    return callable(getattr(convert, "current_output_name", None))


def _check_declared(value: Any, declared: type, output: Optional[str]) -> None:
    """Raise VolumeTypeMismatch unless ``value`` may travel as ``declared``."""
    where = _where(output)
    if not isinstance(value, Volume):
        raise VolumeTypeMismatch(
            f"{where} is declared {declared.__name__} but got a {type(value).__name__}; pass a "
            f"volume handle (Volume.new(), a version, a fork) or change the declared type"
        )
    want, got = _kind(declared), _kind(type(value))
    if want == "ROVolume" and got == "RWVolume":
        fix = (
            "return rw.finalize() (or rw.commit()), or declare the output RWVolume, which is "
            "finalized when the task returns"
            if output
            else "pass rw.finalize() or rw.commit(), or declare the input RWVolume"
        )
        raise VolumeTypeMismatch(
            f"{where} is declared ROVolume but the RWVolume {value.name!r} (a working copy) was "
            f"given; {fix}"
        )
    if want == "RWVolume" and got == "ROVolume":
        raise VolumeTypeMismatch(
            f"{where} is declared RWVolume but the ROVolume {value.name!r} (an immutable version) "
            f"was given; declare it ROVolume to pass the version on, or pass ro.fork(name), a "
            f"writable copy sharing its blocks"
        )


def _as_input(value: Any, declared: type) -> Volume:
    _check_declared(value, declared, None)
    if isinstance(value, RWVolume) and value.mounted:
        raise VolumeMountedInput(
            f"the RWVolume {value.name!r} passed as a task input is mounted here, and its "
            f"unpublished writes could not reach the task; pass rw.commit() or rw.finalize() "
            f"(an ROVolume), or unmount it first"
        )
    return value


async def _as_output(value: Any, declared: type, output: str) -> Volume:
    _check_declared(value, declared, output)
    if isinstance(value, RWVolume):
        version = await asyncio.to_thread(_finalize, value, output)
    elif isinstance(value, ROVolume):
        version = value
    elif value.index is not None:  # a plain Volume document of a published version
        version = value.as_ro()
    else:
        raise VolumeNothingToFinalize(
            f"{_where(output)} is the volume declaration {value.name!r}, which was never mounted, "
            f"so there is no version to return; return Volume.new(...) mounted and written to "
            f"(finalized at return), or pass the declaration as another task's input instead"
        )
    return _with_output_name(version, output)


def _finalize(rw: RWVolume, output: str) -> ROVolume:
    if rw.mounted:
        return rw.finalize()
    if rw._staged_meta_dir is not None:  # a fork never mounted: publish it as it stands
        return rw.mount(transport="none").finalize()
    if rw.index is None:
        raise VolumeNothingToFinalize(
            f"task output {output!r} is the RWVolume {rw.name!r}, which was never mounted, so "
            f"there is nothing to finalize; mount() it and write to it before returning it, or "
            f"do not return it"
        )
    raise VolumeNothingToFinalize(
        f"task output {output!r} is the RWVolume {rw.name!r}, which is not mounted (already "
        f"finalized or unmounted), so there is nothing to finalize; return the ROVolume that "
        f"finalize() or commit() returned and declare the output ROVolume"
    )


def _with_output_name(version: ROVolume, output: str) -> ROVolume:
    ref = version.produced_by
    here = context.FlyteContext.action()
    if (
        ref is None
        or ref.output_name
        or here is None
        or (ref.name, ref.run_name) != (here.name, here.run_name)
    ):
        return version
    named = ref.model_copy(update={"output_name": output})
    return version.model_copy(update={"produced_by": named})


def _document(lv: Literal) -> Any:
    """The JSON document a literal carries (msgpack or JSON binary, or a generic struct)."""
    if lv.HasField("scalar") and lv.scalar.HasField("binary"):
        binary = lv.scalar.binary
        if binary.tag == MSGPACK:
            return msgpack.loads(binary.value, strict_map_key=False)
        if binary.tag == JSON:
            return json.loads(binary.value)
        raise TypeTransformerFailedError(
            f"a volume literal must be a msgpack or json binary, not {binary.tag!r}"
        )
    if lv.HasField("scalar") and lv.scalar.HasField("generic"):
        return json_format.MessageToDict(lv.scalar.generic)
    raise TypeTransformerFailedError(f"not a volume literal: {lv}")


_TRANSFORMER: Optional[VolumeTransformer] = None


def register() -> VolumeTransformer:
    """Register the transformer for Volume, ROVolume and RWVolume (once; later calls return it)."""
    global _TRANSFORMER
    if _TRANSFORMER is None:
        transformer = VolumeTransformer()
        for t in (Volume, ROVolume, RWVolume):
            TypeEngine.register_additional_type(transformer, t, override=True)
        _TRANSFORMER = transformer
    return _TRANSFORMER
