"""Name → Method class registry and strict construction from a config mapping.

A method's module (and torch) is imported the first time its class is asked for; what planning
needs (config class, ``trains``, train defaults) comes from :mod:`clipcl.methods.catalog`.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Any

from clipcl.methods import catalog
from clipcl.methods.catalog import MethodInfo, declare_method, method_names
from clipcl.methods.configs import MethodConfig

if TYPE_CHECKING:
    from clipcl.methods.base import Method

__all__ = [
    "create_method",
    "method_class",
    "method_config",
    "method_info",
    "method_names",
    "register_method",
]

_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register ``cls`` under ``cls.name`` (lowercase registry key)."""
    module = cls.__module__.removeprefix("clipcl.methods.")
    declare_method(MethodInfo(cls.name, module, cls.Config, cls.trains, cls.train_defaults))
    _METHODS[cls.name] = cls
    return cls


def method_info(name: str) -> MethodInfo:
    """What planning needs of ``name``: its catalog entry, or a class put in the registry by
    hand (tests); ``ClipclError`` if unknown."""
    cls = _METHODS.get(name)
    if cls is not None and cls.name not in catalog.catalogued():
        return MethodInfo(cls.name, cls.__module__, cls.Config, cls.trains, cls.train_defaults)
    return catalog.method_info(name)


def method_class(name: str) -> type[Method]:
    """The ``Method`` class of ``name`` (its module is imported here); ``ClipclError`` if
    unknown."""
    if name not in _METHODS:
        info = catalog.method_info(name)
        import_module(f"clipcl.methods.{info.module}")
    return _METHODS[name]


def method_config(name: str, values: Mapping[str, Any]) -> MethodConfig:
    """Validate ``values`` against the method's config (raises pydantic's ValidationError)."""
    return method_info(name).config.model_validate(dict(values))


def create_method(name: str, values: Mapping[str, Any]) -> Method:
    return method_class(name)(method_config(name, values))
