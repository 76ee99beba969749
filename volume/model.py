"""Placeholder: replaced by the real pydantic models."""
from pydantic import BaseModel


class ActionRef(BaseModel):
    name: str


class File(BaseModel):
    path: str


class Volume(BaseModel):
    name: str


class ROVolume(Volume):
    pass


class RWVolume(Volume):
    pass
