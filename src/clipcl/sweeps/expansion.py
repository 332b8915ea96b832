"""Pure, deterministic expansion of a sweep into chains.

benchmarks × methods × (sweep grid × method grid) × zip groups × seeds → ``ChainEntry`` list, in a
stable order. Each chain's spec is validated like ``clipcl chain run --set`` would be, with errors
naming the sweep file and the combination that failed.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from typing import Any

from clipcl.errors import ClipclError
from clipcl.methods import method_info
from clipcl.sweeps.schema import SweepFile
from clipcl.validation import set_dotted
from clipcl.workers.spec import ChainSpec

#: Train keys that still matter for a method that never trains (they shape evaluation).
EVAL_RELEVANT_TRAIN_KEYS = {"train.precision", "train.num_workers"}


def _training_only(key: str) -> bool:
    return key.startswith("train.") and key not in EVAL_RELEVANT_TRAIN_KEYS


@dataclass(frozen=True)
class ChainEntry:
    """One chain of a sweep and the settings that distinguish it from its siblings."""

    spec: ChainSpec
    method: str
    benchmark: str
    seed: int
    settings: tuple[tuple[str, Any], ...]  # varied (dotted key, value) pairs, seed excluded

    @property
    def chain_id(self) -> str:
        return self.spec.chain_id

    @property
    def spec_tasks(self) -> int:
        """Number of tasks of the chain's benchmark."""
        from clipcl.data import benchmark_info

        return len(benchmark_info(self.benchmark).task_names)

    @property
    def settings_label(self) -> str:
        return ", ".join(f"{k}={json.dumps(v)}" for k, v in self.settings) or "-"


def _assignments(grid: dict[str, list[Any]], zips: list[dict[str, list[Any]]]):
    """Every combination: the product of grid axes and of zip groups (each zip group one axis)."""
    axes: list[list[tuple[tuple[str, Any], ...]]] = []
    for key, values in grid.items():
        axes.append([((key, v),) for v in values])
    for group in zips:
        keys = list(group)
        n = len(group[keys[0]])
        axes.append([tuple((k, group[k][i]) for k in keys) for i in range(n)])
    for combo in itertools.product(*axes):
        yield tuple(pair for axis in combo for pair in axis)


def expand(sweep: SweepFile, source: str = "sweep") -> list[ChainEntry]:
    """Expand ``sweep`` into chains; raise ``ClipclError`` on invalid or duplicate chains."""
    entries: list[ChainEntry] = []
    seen: dict[str, ChainEntry] = {}
    for benchmark in sweep.benchmarks:
        for method, method_settings in sweep.methods.items():
            if benchmark not in sweep.benchmarks_of(method):
                continue
            settings = method_settings.knobs
            train = {**sweep.train, **method_settings.train}
            eval_ = {**sweep.eval, **method_settings.eval}
            grid = {**sweep.grid, **method_settings.grid}  # the schema refuses a key in both
            try:
                trains = method_info(method).trains
            except ClipclError as exc:
                raise ClipclError(f"{source}: methods.{method}: {exc}") from None
            for assignment in _assignments(grid, sweep.zip):
                if not trains:  # training knobs cannot change a method that never trains
                    assignment = tuple((k, v) for k, v in assignment if not _training_only(k))
                for seed in sweep.seeds:
                    raw: dict[str, Any] = {
                        "model": copy.deepcopy(sweep.model),
                        "benchmark": benchmark,
                        "method": {"name": method, **copy.deepcopy(settings)},
                        "train": copy.deepcopy(train),
                        "eval": copy.deepcopy(eval_),
                        "seed": seed,
                        "keep_checkpoints": sweep.keep_checkpoints,
                        "checkpoint_every_min": sweep.checkpoint_every_min,
                    }
                    label = ", ".join(f"{k}={v!r}" for k, v in assignment)
                    where = (
                        f"{source}: chain ({method} on {benchmark}{', ' + label if label else ''})"
                    )
                    for key, value in assignment:
                        set_dotted(raw, key, value, where)
                    if not trains:
                        raw["train"] = {
                            k: v
                            for k, v in raw["train"].items()
                            if not _training_only(f"train.{k}")
                        }
                    spec = ChainSpec.build(raw, source=where)
                    entry = ChainEntry(spec, method, benchmark, seed, assignment)
                    if spec.chain_id in seen and not trains:
                        continue  # the same zero-shot evaluation reached through the grid
                    if spec.chain_id in seen:
                        other = seen[spec.chain_id]
                        raise ClipclError(
                            f"{source}: duplicate chain: ({method} on {benchmark}, "
                            f"{entry.settings_label}, seed {seed}) resolves to the same spec as "
                            f"({other.method} on {other.benchmark}, {other.settings_label}, "
                            f"seed {other.seed})"
                        )
                    seen[spec.chain_id] = entry
                    entries.append(entry)
    return entries
