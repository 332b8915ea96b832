"""Sweep files: strict, typed loading of the YAML a researcher writes.

A sweep names a model, one or more benchmarks, methods with their settings, shared training
settings, a grid (cartesian product over dotted keys) and zip groups (lists advanced together),
seeds, per-chain resources and the run root. Unknown keys and wrong types fail here, naming the
file, the key path, the bad value and what is allowed.

Precedence, lowest first, for one method's chains: the benchmark's and the method's train
defaults < the sweep's ``train``/``eval``/``model`` < the method's ``train``/``eval`` and knobs <
the values of ``grid``, the method's ``grid`` and ``zip`` (each key varied in one place only). A
fixed value that a later level always replaces is refused: it could never take effect.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, field_validator, model_validator

from clipcl.errors import ClipclError
from clipcl.resources import Resources
from clipcl.slurm.settings import SlurmSettings
from clipcl.validation import StrictNumbers, validate

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

#: Grid keys that would change what a chain is (and how results label it) → where it belongs.
IDENTITY_KEYS = {
    "benchmark": ("benchmark", "list benchmarks in 'benchmarks:'"),
    "method": ("method", "list methods under 'methods:'"),
    "method.name": ("method", "list methods under 'methods:'"),
    "seed": ("seed", "list seeds in 'seeds:'"),
}


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of the YAML text sets one key twice (PyYAML keeps the last silently)."""

    def __init__(self, key: Any, at: str, first: str) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.at, self.first = key, at, first


# libyaml's parser when PyYAML has it: a 10 000-seed sweep parses 10x faster.
_SafeLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[misc,valid-type]
    """PyYAML's safe loader (libyaml's when present) that refuses a key written twice in one
    mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[tuple[type, Any], str] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *anchor' merges; its keys may be overridden on purpose
            key = self.construct_object(key_node, deep=True)
            mark = key_node.start_mark
            at = f"line {mark.line + 1}, column {mark.column + 1}"
            try:
                if (type(key), key) in first:
                    raise DuplicateKeyError(key, at, first[(type(key), key)])
                first[(type(key), key)] = at
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error says so
        return super().construct_mapping(node, deep=deep)


def _check_grid(grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
    for key, values in grid.items():
        if not values:
            raise ValueError(f"grid key '{key}' has an empty list of values")
    return grid


def _leaf_values(section: str, data: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 1e-3, "train.lr_per_task.a": ...}`` of a section's nested mapping."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{section}.{key}"
        if isinstance(value, dict) and value:
            out.update(_leaf_values(path, value))
        else:
            out[path] = value
    return out


def _overridden(path: str, varied: dict[str, str]) -> str | None:
    """Where a key that replaces ``path`` (itself or a section above it) is varied."""
    for key, where in varied.items():
        if path == key or path.startswith(key + "."):
            return where
    return None


class MethodSettings(StrictNumbers):
    """One entry of ``methods:``: the method's own keys plus its ``train``/``eval``/``grid``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    train: dict[str, Any] = Field(
        default_factory=dict, description="TrainConfig overrides for this method's chains."
    )
    eval: dict[str, Any] = Field(
        default_factory=dict, description="EvalConfig overrides for this method's chains."
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="More grid axes for this method's chains only."
    )
    benchmarks: list[str] | None = Field(
        None,
        min_length=1,
        description="The sweep's benchmarks this method runs on (default: all of them).",
    )

    @property
    def knobs(self) -> dict[str, Any]:
        """The method's own keys (validated by the method's config class at expansion)."""
        return dict(self.model_extra or {})

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return _check_grid(v)


class SweepFile(StrictNumbers):
    """The schema of ``sweeps/*.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Sweep name (letters, digits, '.', '_', '-').")
    root: str = Field(
        "runs", description="Run root ('~' expands; relative paths: to the sweep file's directory)."
    )
    store: str | None = Field(
        None,
        description="Results store: a PostgreSQL URL (postgresql://USER@HOST[:PORT]/DB) shared "
        "by every root and sweep of a lab; default: the SQLite store of the run root. --store "
        "and $CLIPCL_STORE replace it.",
    )
    data_root: str | None = Field(
        None,
        description="Root of the local datasets ('~' expands; relative: to the sweep file's "
        "directory; --data-root replaces it; default: $CLIPCL_DATA_ROOT).",
    )
    model: dict[str, Any] = Field(
        default_factory=lambda: {"arch": "tiny"}, description="arch and pretrained."
    )
    benchmarks: list[str] = Field(min_length=1, description="Benchmark names.")
    methods: dict[str, MethodSettings] = Field(
        min_length=1,
        description="Method name → its settings (method keys; 'train', 'eval', 'grid').",
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
    checkpoint_every_min: float = Field(
        10.0, ge=0, description="Minutes of training between mid-task snapshots (0 = none)."
    )
    slurm: SlurmSettings = Field(
        default_factory=SlurmSettings, description="Slurm backend settings (chain_mode, ...)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("use letters, digits, '.', '_' and '-' (first a letter or digit)")
        return v

    @field_validator("methods", mode="before")
    @classmethod
    def _no_settings(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: {} if s is None else s for k, s in v.items()}  # `zeroshot:` alone
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return _check_grid(v)

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

    def benchmarks_of(self, method: str) -> list[str]:
        """The benchmarks ``method`` runs on, in the order of the sweep's ``benchmarks``."""
        only = self.methods[method].benchmarks
        return [b for b in self.benchmarks if only is None or b in only]

    def data_root_path(self, sweep_file: str | Path) -> Path | None:
        """The absolute ``data_root`` (resolved like ``run_root``), or ``None`` when unset."""
        if not self.data_root:
            return None
        return (Path(sweep_file).parent / Path(self.data_root).expanduser()).resolve()

    def run_root(self, sweep_file: str | Path) -> Path:
        """The absolute run root: ``root`` with '~' expanded, a relative one taken from the
        directory of ``sweep_file`` (this sweep's file), not from the working directory."""
        root = Path(self.root).expanduser()
        return (Path(sweep_file).parent / root).resolve()

    def varied(self, method: str | None = None) -> dict[str, str]:
        """Dotted key → where it is varied (``grid``, ``zip[i]``, ``methods.<m>.grid``), for
        every method's chains (``None``) or one method's."""
        out = {key: "grid" for key in self.grid}
        for i, group in enumerate(self.zip):
            out.update({key: f"zip[{i}]" for key in group})
        if method is not None:
            out.update({key: f"methods.{method}.grid" for key in self.methods[method].grid})
        return out

    @model_validator(mode="after")
    def _method_benchmarks(self) -> SweepFile:
        for m, settings in self.methods.items():
            only = settings.benchmarks or []
            if len(set(only)) != len(only):
                raise ValueError(f"methods.{m}.benchmarks repeats a benchmark: {only}")
            unknown = [b for b in only if b not in self.benchmarks]
            if unknown:
                raise ValueError(
                    f"methods.{m}.benchmarks: {', '.join(map(repr, unknown))} is not in the "
                    f"sweep's benchmarks {self.benchmarks}; a method runs on a subset of them"
                )
        used = {b for m in self.methods for b in self.benchmarks_of(m)}
        idle = [b for b in self.benchmarks if b not in used]
        if idle:
            raise ValueError(
                f"benchmarks: no method runs on {', '.join(map(repr, idle))} (every method's "
                "'benchmarks' leaves it out); remove it or add it to a method"
            )
        return self

    @model_validator(mode="after")
    def _keys_once(self) -> SweepFile:
        places = [("grid", list(self.grid))]
        places += [(f"zip[{i}]", list(g)) for i, g in enumerate(self.zip)]
        places += [(f"methods.{m}.grid", list(s.grid)) for m, s in self.methods.items()]
        for where, keys in places:
            for key in keys:
                if key.strip() in IDENTITY_KEYS:
                    what, instead = IDENTITY_KEYS[key.strip()]
                    raise ValueError(
                        f"{where}.{key}: a chain's {what} is not a grid key; {instead}"
                    )
        shared: dict[str, str] = {}
        for where, keys in places[: 1 + len(self.zip)]:
            for key in keys:
                if key in shared:
                    raise ValueError(f"key '{key}' is varied twice ({shared[key]} and {where})")
                shared[key] = where
        for where, keys in places[1 + len(self.zip) :]:  # methods' grids never meet each other
            for key in keys:
                if key in shared:
                    raise ValueError(f"key '{key}' is varied twice ({shared[key]} and {where})")
        return self

    @model_validator(mode="after")
    def _every_value_counts(self) -> SweepFile:
        """Refuse a fixed value that a later level of the precedence always replaces."""
        for m, settings in self.methods.items():
            varied = self.varied(m)
            fixed = {**_leaf_values("train", settings.train), **_leaf_values("eval", settings.eval)}
            fixed.update({f"method.{k}": v for k, v in settings.knobs.items()})
            for path, value in fixed.items():
                where = _overridden(path, varied)
                if where is not None:
                    shown = path.removeprefix("method.")
                    raise ValueError(
                        f"methods.{m}.{shown}: {value!r} never takes effect: {where} varies "
                        f"{path}; remove it (or the grid key)"
                    )
        sections = {"train": self.train, "eval": self.eval}
        if "model" in self.model_fields_set:
            sections["model"] = self.model
        for section, data in sections.items():
            for path, value in _leaf_values(section, data).items():
                where = _overridden(path, self.varied())
                why = f"{where} varies {path}" if where else self._set_by_every_method(path)
                if why is not None:
                    raise ValueError(f"{path}: {value!r} never takes effect: {why}; remove it")
        return self

    def _set_by_every_method(self, path: str) -> str | None:
        """How every method replaces the sweep-level ``path`` (``None`` if one keeps it)."""
        reasons = []
        for m, s in self.methods.items():
            own = {**_leaf_values("train", s.train), **_leaf_values("eval", s.eval)}
            if path in own:
                reasons.append(f"methods.{m}.{path.split('.')[0]} sets {path}")
            elif _overridden(path, self.varied(m)) is not None:
                reasons.append(f"methods.{m}.grid varies {path}")
            else:
                return None
        return ", ".join(reasons)


def load_sweep(path: str | Path) -> SweepFile:
    """Read and validate a sweep file; every problem is a ``ClipclError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ClipclError(f"sweep file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except DuplicateKeyError as exc:
        raise ClipclError(
            f"{path}: duplicate key '{exc.key}' ({exc.at}; first at {exc.first}): "
            "write each key once"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ClipclError(f"{path}:{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ClipclError(f"{path}: expected a mapping of sweep keys at the top level")
    return validate(SweepFile, data, str(path))
