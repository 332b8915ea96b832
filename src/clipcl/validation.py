"""Strict config loading helpers: ``--set key=value`` overrides and one-line validation errors.

Every error names where the value came from (a file or a flag), the dotted key, the bad value and
what is allowed, with a did-you-mean for misspelt keys.
"""

from __future__ import annotations

import copy
import json
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError, ValidationInfo, field_validator

from clipcl.errors import ClipclError, did_you_mean


def parse_scalar(text: str) -> Any:
    """Parse an override value: JSON (numbers, true/false/null, lists, objects) or a bare string."""
    lowered = text.strip().lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    if lowered in {"none", "null", "~"}:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _admits(annotation: Any, kinds: tuple[type, ...], any_: bool = True) -> bool:
    """Whether ``annotation`` (or a type nested in it: ``X | None``, ``dict[str, X]``, ...) is
    one of ``kinds`` (or ``Any``, with ``any_``)."""
    if (any_ and annotation is Any) or annotation in kinds:
        return True
    return any(_admits(arg, kinds, any_) for arg in typing.get_args(annotation))


def _leaves(value: Any):
    """``value`` and every value nested in its lists, tuples and mappings."""
    yield value
    children = value.values() if isinstance(value, Mapping) else value
    if isinstance(value, Mapping | list | tuple):
        for child in children:
            yield from _leaves(child)


class StrictNumbers(BaseModel):
    """Mixin of the config models: a bool is not a number and a number is finite.

    pydantic reads ``true`` as ``1`` for an ``int`` field and accepts ``inf``/``nan`` for a
    ``float`` one; neither is ever what a config means. Fields typed ``bool`` (or ``Any``) keep
    their booleans.
    """

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools(cls, value: Any, info: ValidationInfo) -> Any:
        ann = cls.model_fields[info.field_name or ""].annotation
        if _admits(ann, (bool,)) or not _admits(ann, (int, float)):
            return value
        if any(isinstance(v, bool) for v in _leaves(value)):
            kind = "a number" if _admits(ann, (float,)) else "an integer"
            raise ValueError(f"expected {kind}, not a boolean")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _finite(cls, value: Any, info: ValidationInfo) -> Any:
        ann = cls.model_fields[info.field_name or ""].annotation
        if not _admits(ann, (float,), any_=False):  # untyped values are checked where typed
            return value
        if any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(value)):
            raise ValueError("expected a finite number")
        return value


def set_dotted(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set ``data[a][b][c] = value`` for ``key == 'a.b.c'``, creating sections as needed."""
    parts = key.strip().split(".")
    if not all(parts):
        raise ClipclError(f"{source}: empty component in key '{key}'")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ClipclError(f"{source}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], source: str = "--set") -> dict:
    """Return a copy of ``data`` with each ``key.path=value`` applied (nested dicts are created)."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ClipclError(f"{source} '{item}': expected KEY=VALUE, e.g. train.lr=1e-4")
        key, _, raw = item.partition("=")
        set_dotted(out, key, parse_scalar(raw), f"{source} '{item}'")
    return out


def _fields_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str] | None:
    """Allowed field names of the (nested) model that ``loc`` points into."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        ann = fields[part].annotation
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields is not None else None


def format_validation_error(
    err: ValidationError, model: type[BaseModel], source: str, prefix: str = ""
) -> str:
    """Turn pydantic's first error into ``source: key.path: problem; allowed ...``."""
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc)
    if e["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1]) or []
        return (
            f"{source}: unknown key '{key}'{did_you_mean(loc[-1], allowed)}; "
            f"allowed: {', '.join(allowed)}"
        )
    if e["type"] == "missing":
        return f"{source}: missing required key '{key}'"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "value_error" and isinstance(e.get("input"), dict):
        return f"{source}: {key + ': ' if key else ''}{msg}"  # a check across several keys
    return f"{source}: {key}: {msg} (got {e.get('input')!r})"


def validate(model: type[BaseModel], data: Mapping[str, Any], source: str, prefix: str = ""):
    """``model.model_validate(data)`` with errors converted to ``ClipclError``."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as err:
        raise ClipclError(format_validation_error(err, model, source, prefix)) from None
