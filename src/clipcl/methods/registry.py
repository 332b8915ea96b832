"""Name → Method class registry and strict construction from a config mapping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clipcl.errors import unknown_name
from clipcl.methods.base import Method, MethodConfig

_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register ``cls`` under ``cls.name`` (lowercase registry key)."""
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    if name not in _METHODS:
        raise unknown_name("method", name, _METHODS)
    return _METHODS[name]


def method_config(name: str, values: Mapping[str, Any]) -> MethodConfig:
    """Validate ``values`` against the method's config (raises pydantic's ValidationError)."""
    return method_class(name).Config.model_validate(dict(values))


def create_method(name: str, values: Mapping[str, Any]) -> Method:
    return method_class(name)(method_config(name, values))
