"""``ChainSpec``: everything that defines one continual-learning run, with a stable ``chain_id``."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import ConfigDict, Field, field_validator, model_validator

from clipcl.data import benchmark_info
from clipcl.errors import ClipclError, did_you_mean
from clipcl.methods import MethodConfig, method_info
from clipcl.methods.catalog import catalogued
from clipcl.models.config import ModelConfig, Precision, default_pretrained, resolve_arch
from clipcl.validation import StrictNumbers, apply_overrides, validate

T = TypeVar("T")


def _named(source: str, key: str, lookup: Callable[[str], T], value: str) -> T:
    """A registry lookup whose error names the source and the key."""
    try:
        return lookup(value)
    except ClipclError as exc:
        raise ClipclError(f"{source}: {key}: {exc}") from None


class TrainConfig(StrictNumbers):
    """Optimisation knobs shared by every training method (ZSCL's MTIL defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(1e-5, gt=0, description="Peak learning rate.")
    lr_first_task: float | None = Field(
        None, gt=0, description="Learning rate of task 0 (PGP: 1e-3, then lr); None = lr."
    )
    lr_per_task: dict[str, float] = Field(
        default_factory=dict, description="Learning rate overrides by task name."
    )
    batch_size: int = Field(64, ge=1, description="Training batch size.")
    iterations: int | None = Field(1000, ge=1, description="Optimizer steps per task.")
    epochs: int | None = Field(
        None,
        ge=1,
        description="Passes over the task's data (instead of iterations; set iterations to null).",
    )
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up steps, then cosine decay.")
    weight_decay: float = Field(
        0.0, ge=0, description="Weight decay (decoupled for adamw, L2 inside adam and sgd)."
    )
    weight_decay_first_task: float | None = Field(
        None,
        ge=0,
        description="Weight decay of task 0 (PGP's init_weight_decay: 5e-4, then weight_decay);"
        " None = weight_decay.",
    )
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimizer per task.")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum.")
    schedule: Literal["warmup_cosine", "multistep", "constant"] = Field(
        "warmup_cosine",
        description="Per-task learning-rate schedule (warm-up applies to all three).",
    )
    lr_milestones: tuple[float, ...] = Field(
        (0.5, 0.8), description="multistep: fractions of the task's steps where lr *= lr_gamma."
    )
    lr_gamma: float = Field(0.1, gt=0, description="multistep: the factor at each milestone.")
    label_smoothing: float = Field(0.2, ge=0, lt=1, description="Cross-entropy label smoothing.")
    grad_clip_norm: float | None = Field(None, gt=0, description="Clip the gradient norm.")
    precision: Precision = Field("fp32", description="Compute precision (autocast); weights fp32.")
    num_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader worker processes; null (auto): on CUDA min(8, the job's CPU"
        " threads - 1), on the CPU 0 (the cores train). The count changes no result: auto is"
        " hashed into the chain id as 0, the former default.",
    )
    tf32: bool = Field(
        True,
        description="CUDA: fp32 matmuls and convolutions on TF32 tensor cores (inputs rounded to"
        " a 10-bit mantissa); false: full fp32. No effect on the CPU.",
    )
    fused_optimizer: bool = Field(
        True,
        description="CUDA: torch's fused AdamW / Adam kernel (one launch for every parameter)"
        " instead of the per-tensor loop. No effect on the CPU.",
    )
    compile: bool = Field(
        False,
        description="Train through torch.compile'd image encoding (kernels fused; the first"
        " steps compile, minutes for ViT-B-16). Where compiling fails (a hook it cannot trace,"
        " no compiler) the task trains on without it, with a warning.",
    )

    def workers_on(self, device_type: str, threads: int) -> int:
        """Loader workers on ``device_type`` ("cuda", "cpu") for a job of ``threads`` CPU
        threads: ``num_workers`` when set, else the auto count."""
        if self.num_workers is not None:
            return self.num_workers
        return min(8, max(0, threads - 1)) if device_type == "cuda" else 0

    def lr_for(self, task_index: int, task_name: str) -> float:
        """Peak learning rate of a task: ``lr_per_task`` > ``lr_first_task`` (task 0) > ``lr``."""
        if task_name in self.lr_per_task:
            return self.lr_per_task[task_name]
        if task_index == 0 and self.lr_first_task is not None:
            return self.lr_first_task
        return self.lr

    def weight_decay_for(self, task_index: int) -> float:
        """Weight decay of a task: ``weight_decay_first_task`` on task 0 when set, else
        ``weight_decay``."""
        if task_index == 0 and self.weight_decay_first_task is not None:
            return self.weight_decay_first_task
        return self.weight_decay

    def steps_for(self, batches_per_epoch: int) -> int:
        """Optimizer steps for one task: ``iterations``, or ``epochs`` × batches per epoch."""
        if self.iterations is not None:
            return self.iterations
        assert self.epochs is not None  # guaranteed by the validator
        return self.epochs * batches_per_epoch

    @model_validator(mode="after")
    def _one_length(self) -> TrainConfig:
        if self.iterations is not None and self.epochs is not None:
            raise ValueError(
                f"train.epochs replaces train.iterations: set iterations: null in the file's "
                f"train section (or --set train.iterations=null) to train {self.epochs} epochs "
                f"per task (iterations is {self.iterations}, perhaps a default)"
            )
        if self.iterations is None and self.epochs is None:
            raise ValueError("set one of train.iterations and train.epochs")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones must lie in (0, 1), got {list(self.lr_milestones)}")
        return self


#: TrainConfig keys added after release (projection family); omitted from the hash at default.
#: Eval knobs added after chain ids were published: left out of the id at their defaults.
LATER_EVAL_KEYS = ("interval_steps", "interval_tasks", "extra")
LATER_TRAIN_KEYS = (
    "lr_first_task",
    "optimizer",
    "momentum",
    "schedule",
    "lr_milestones",
    "lr_gamma",
    "weight_decay_first_task",
    "tf32",
    "fused_optimizer",
    "compile",
)


#: ChainSpec keys that change how a chain runs, never its results: not hashed into the id.
RUN_TIME_KEYS = ("checkpoint_every_min",)
#: Keys whose null (auto) value is resolved where the chain runs: hashed as the fixed default
#: they replaced, so chain ids published before the auto value stay.
AUTO_KEYS = {"train": {"num_workers": 0}, "eval": {"batch_size": 256}}


def _legacy_method_values(name: str) -> dict[str, Any]:
    """The method's ``Config.legacy_values`` (none for a method no longer registered)."""
    try:
        return method_info(name).config.legacy_values
    except ClipclError:
        return {}


def _json_default(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class EvalConfig(StrictNumbers):
    """Evaluation knobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int | None = Field(
        None,
        ge=1,
        description="Evaluation batch size; null (auto): 1024 on CUDA, 256 on the CPU. It"
        " changes no count (up to float rounding): auto is hashed into the chain id as 256, the"
        " former default.",
    )
    interval_steps: int | None = Field(
        None,
        ge=1,
        description="Also evaluate every N steps inside each task (in-task rows: kept apart,"
        " never in the metrics); None: only after each task.",
    )
    extra: tuple[str, ...] = Field(
        (),
        description="Held-out real datasets (e.g. ImageNet, ImageNet-R) evaluated zero-shot-"
        "style (their class prompts) after every task and in the zero-shot row, never trained;"
        " their rows are kept apart from the matrix and shown as Held-out columns.",
    )
    interval_tasks: Literal["current", "all"] = Field(
        "current",
        description="What an in-task evaluation covers: the task being trained, or every task"
        " (class-incremental: the seen ones, among the seen classes).",
    )

    def batch_on(self, device_type: str) -> int:
        """The evaluation batch on ``device_type``: ``batch_size`` when set, else auto."""
        if self.batch_size is not None:
            return self.batch_size
        return 1024 if device_type == "cuda" else 256

    @field_validator("extra", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """``--set eval.extra=ImageNet,ImageNet-R`` (and ``extra: ImageNet``): a list."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("extra")
    @classmethod
    def _known_datasets(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from clipcl.data.catalog import real_dataset_name

        out = []
        for name in names:
            try:
                out.append(real_dataset_name(name))
            except ClipclError as exc:
                raise ValueError(str(exc)) from None
        if len(set(out)) != len(out):
            raise ValueError(f"datasets listed twice: {sorted(out)}")
        return tuple(out)


@dataclass(frozen=True)
class MethodSpec:
    """A chain's method, validated once: its registry name and its typed config.

    Attributes:
        name: The method's registry key (``finetune``, ``nsp2``, ...).
        config: The method's ``Config`` model, defaults filled in.
    """

    name: str
    config: MethodConfig

    @classmethod
    def resolve(cls, name: str, knobs: Mapping[str, Any], source: str = "spec") -> MethodSpec:
        """Validate ``knobs`` against the method's config.

        Raises:
            ClipclError: The method is unknown or a knob is (naming ``source`` and the key).
        """
        key = None  # the sweep's chains mostly share their method settings: validate each once
        if name in catalogued():
            with contextlib.suppress(TypeError, ValueError):  # not JSON: validate every time
                key = (name, json.dumps(dict(knobs), sort_keys=True))
        if key in _RESOLVED:
            return _RESOLVED[key]
        info = _named(source, "method.name", method_info, name)
        config = validate(info.config, knobs, source, prefix="method")
        resolved = cls(name, config)
        if key is not None and len(_RESOLVED) < _RESOLVED_MAX:
            _RESOLVED[key] = resolved
        return resolved

    def as_json(self) -> dict[str, Any]:
        """``{"name": ..., **config}`` as JSON data: what ``ChainSpec.method`` stores (and
        hashes into the chain id)."""
        return {"name": self.name, **self.config.model_dump(mode="json")}


#: (method name, its knobs as sorted JSON) → the validated method (frozen, so shared).
_RESOLVED: dict[tuple[str, str], MethodSpec] = {}
_RESOLVED_MAX = 10_000


class ChainSpec(StrictNumbers):
    """One chain: a model trained task after task over a benchmark by one method and seed.

    ``method`` holds ``name`` plus that method's config keys (validated by the method's config
    class and stored with defaults filled in, so equal runs hash equally).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelConfig = Field(default_factory=ModelConfig)
    benchmark: str
    method: dict[str, Any]
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    seed: int = 0
    keep_checkpoints: int = Field(2, ge=0, description="Checkpoints kept per chain (0 = all).")
    checkpoint_every_min: float = Field(
        10.0,
        ge=0,
        description="Minutes of training between mid-task snapshots (0 = none; a signal still "
        "writes one). A run-time knob: not part of the chain id.",
    )

    @property
    def method_name(self) -> str:
        return str(self.method["name"])

    @functools.cached_property
    def method_spec(self) -> MethodSpec:
        """The method as :class:`MethodSpec` (validated on first use unless built here).

        Raises:
            ClipclError: The stored method or one of its knobs is invalid.
        """
        knobs = {k: v for k, v in self.method.items() if k != "name"}
        return MethodSpec.resolve(self.method_name, knobs)

    def canonical_json(self) -> str:
        """The spec as sorted, compact JSON; train knobs added after chain ids were first
        published are left out while at their defaults, and method knobs while at their
        ``MethodConfig.legacy_values``, so existing runs keep their ids. Run-time knobs
        (:data:`RUN_TIME_KEYS`) are left out: they change how a chain runs, not what it
        computes."""
        data = self.model_dump(mode="json")
        for key in RUN_TIME_KEYS:
            data.pop(key, None)
        for section, keys in AUTO_KEYS.items():
            for key, legacy in keys.items():
                if data[section].get(key) is None:
                    data[section][key] = legacy
        defaults = TrainConfig.model_fields
        for key in LATER_TRAIN_KEYS:
            if data["train"].get(key) == _json_default(defaults[key].default):
                data["train"].pop(key)
        for key in LATER_EVAL_KEYS:
            if data["eval"].get(key) == _json_default(EvalConfig.model_fields[key].default):
                data["eval"].pop(key)
        for key, value in _legacy_method_values(self.method_name).items():
            if key in data["method"] and data["method"][key] == _json_default(value):
                data["method"].pop(key)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @functools.cached_property
    def chain_id(self) -> str:
        """Short hash of the canonical resolved spec: equal specs share a run directory."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    @classmethod
    def build(
        cls, data: Mapping[str, Any], source: str = "spec", overrides: Sequence[str] = ()
    ) -> ChainSpec:
        """Validate raw data (plus ``key=value`` overrides) into a resolved spec or raise
        ``ClipclError`` naming the source, the key and what is allowed."""
        # Without overrides a shallow copy will do: below, sections are replaced, never edited
        # (deep-copying every chain's spec was a quarter of expanding a sweep).
        raw = apply_overrides(dict(data), overrides) if overrides else dict(data)
        model = raw.get("model")
        if isinstance(model, dict) and model.get("pretrained") is None:
            # Unnamed weights: the architecture's default (packaged tiny CLIP, OpenAI's, none).
            arch = model.get("arch", ModelConfig.model_fields["arch"].default)
            pretrained = _named(source, "model.arch", default_pretrained, str(arch))
            raw["model"] = {**model, "pretrained": pretrained}
        method = raw.get("method")
        if isinstance(method, str):
            method = {"name": method}
        if not isinstance(method, dict) or "name" not in method:
            raise ClipclError(f"{source}: method: expected a name or a mapping with 'name'")
        knobs = {k: v for k, v in method.items() if k != "name"}
        method_spec = MethodSpec.resolve(str(method["name"]), knobs, source)
        raw["method"] = method_spec.as_json()
        cls_ = method_info(method_spec.name)
        info = None
        if "benchmark" in raw:
            info = _named(source, "benchmark", benchmark_info, str(raw["benchmark"]))
            train = raw.get("train") or {}
            if not isinstance(train, dict):
                raise ClipclError(f"{source}: train: expected a mapping, got {train!r}")
            raw["train"] = {**info.train_defaults, **cls_.train_defaults, **train}
        spec = validate(cls, raw, source)
        spec.__dict__["method_spec"] = method_spec  # seeds the cached property: validated once
        _named(source, "model.arch", resolve_arch, spec.model.arch)
        if info is not None:
            for task in spec.train.lr_per_task:
                if task not in info.task_names:
                    raise ClipclError(
                        f"{source}: train.lr_per_task: unknown task '{task}'"
                        f"{did_you_mean(task, info.task_names)}; tasks of '{info.name}': "
                        f"{', '.join(info.task_names)}"
                    )
        return spec
