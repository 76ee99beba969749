"""The error hierarchy: every error is a VolumeError and also the builtin it behaves like."""

from __future__ import annotations

import inspect

import pytest

import volume
from volume import errors
from volume.errors import (
    InvalidKeyError,
    ObjectNotFound,
    VolumeError,
    VolumeMountError,
    VolumeMountTimeout,
    VolumeReadOnly,
    VolumeSystemError,
    VolumeUsageError,
)

ALL = [getattr(errors, name) for name in errors.__all__]

USAGE_ERRORS = [
    "VolumeValidationError",
    "VolumeNotForkable",
    "VolumeNotMounted",
    "VolumeAlreadyMounted",
    "VolumeMigrateNoop",
    "VolumeNoIndex",
    "VolumeStoreMismatch",
    "VolumeBucketNotEmpty",
    "VolumeReadOnly",
    "InvalidKeyError",
    "PluginNotFound",
]


def test_all_names_every_error_class_in_the_module():
    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_error_is_a_volume_error_with_a_docstring(cls):
    assert issubclass(cls, VolumeError)
    assert cls.__doc__


@pytest.mark.parametrize("name", USAGE_ERRORS)
def test_usage_errors_are_value_errors_not_system_errors(name):
    cls = getattr(errors, name)
    assert issubclass(cls, VolumeUsageError) and issubclass(cls, ValueError)
    assert not issubclass(cls, VolumeSystemError)


@pytest.mark.parametrize(
    "name", sorted(set(errors.__all__) - set(USAGE_ERRORS) - {"VolumeError", "VolumeUsageError"})
)
def test_the_rest_are_system_errors(name):
    assert issubclass(getattr(errors, name), VolumeSystemError)


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (VolumeMountTimeout, VolumeMountError),
        (VolumeMountTimeout, TimeoutError),
        (VolumeReadOnly, PermissionError),
        (ObjectNotFound, FileNotFoundError),
        (errors.ObjectExists, FileExistsError),
        (InvalidKeyError, KeyError),
        (errors.PluginNotFound, LookupError),
        (errors.PluginLoadError, ImportError),
        (errors.ObjectStoreError, OSError),
    ],
)
def test_errors_are_also_the_builtin_they_behave_like(cls, builtin):
    assert issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("boom")


def test_invalid_key_error_str_is_the_plain_message():
    message = "key '../x' escapes the store root"
    assert str(InvalidKeyError(message)) == message
    assert str(InvalidKeyError()) == ""


def test_volume_re_exports_every_error():
    for name in errors.__all__:
        assert getattr(volume, name) is getattr(errors, name)
        assert name in volume.__all__
