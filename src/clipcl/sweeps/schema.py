"""Sweep files: strict, typed loading of the YAML a researcher writes.

A sweep names a model, one or more benchmarks, methods with their settings, shared training
settings, a grid (cartesian product over dotted keys) and zip groups (lists advanced together),
seeds, per-chain resources and the run root. Unknown keys and wrong types fail here, naming the
file, the key path, the bad value and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clipcl.errors import ClipclError
from clipcl.resources import Resources
from clipcl.slurm.settings import SlurmSettings
from clipcl.validation import validate

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SweepFile(BaseModel):
    """The schema of ``sweeps/*.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Sweep name (letters, digits, '.', '_', '-').")
    root: str = Field("runs", description="Run root (relative paths: to the working directory).")
    data_root: str | None = Field(
        None, description="Root of the local datasets (default: --data-root or $CLIPCL_DATA_ROOT)."
    )
    model: dict[str, Any] = Field(
        default_factory=lambda: {"arch": "tiny"}, description="arch and pretrained."
    )
    benchmarks: list[str] = Field(min_length=1, description="Benchmark names.")
    methods: dict[str, dict[str, Any] | None] = Field(
        min_length=1, description="Method name → its settings (method keys; 'train'/'eval')."
    )
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides.")
    eval: dict[str, Any] = Field(default_factory=dict, description="EvalConfig overrides.")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="Dotted key → values (cartesian product)."
    )
    zip: list[dict[str, list[Any]]] = Field(
        default_factory=list,
        description="Groups of dotted keys whose value lists advance together.",
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    resources: Resources = Field(default_factory=Resources)
    keep_checkpoints: int = Field(2, ge=0)
    slurm: SlurmSettings = Field(
        default_factory=SlurmSettings, description="Slurm backend settings (chain_mode, ...)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("use letters, digits, '.', '_' and '-' (first a letter or digit)")
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid key '{key}' has an empty list of values")
        return v

    @field_validator("zip")
    @classmethod
    def _zip(cls, v: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        for i, group in enumerate(v):
            lengths = {k: len(vals) for k, vals in group.items()}
            if not group or len(set(lengths.values())) != 1 or 0 in lengths.values():
                raise ValueError(
                    f"zip group {i} needs non-empty lists of one common length, "
                    f"got lengths {lengths}"
                )
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v

    @model_validator(mode="after")
    def _keys_once(self) -> SweepFile:
        seen: dict[str, str] = {}
        for where, keys in [("grid", list(self.grid))] + [
            (f"zip[{i}]", list(g)) for i, g in enumerate(self.zip)
        ]:
            for key in keys:
                if key in seen:
                    raise ValueError(f"key '{key}' is varied twice ({seen[key]} and {where})")
                seen[key] = where
        return self


def load_sweep(path: str | Path) -> SweepFile:
    """Read and validate a sweep file; every problem is a ``ClipclError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ClipclError(f"sweep file not found: {path}")
    try:
        # libyaml's loader when PyYAML has it: a 10 000-seed sweep parses 10x faster.
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ClipclError(f"{path}:{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ClipclError(f"{path}: expected a mapping of sweep keys at the top level")
    return validate(SweepFile, data, str(path))
