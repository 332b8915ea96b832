"""Sweep files: golden expansions and the bad-sweep messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clipcl.errors import ClipclError
from clipcl.resources import Resources
from clipcl.sweeps import expand, load_sweep

DATA = Path(__file__).parent / "data" / "sweeps"
REPO = Path(__file__).resolve().parents[1]


def _resolved(path: Path) -> list[dict]:
    sweep = load_sweep(path)
    return [
        {
            "chain_id": e.chain_id,
            "method": e.method,
            "benchmark": e.benchmark,
            "seed": e.seed,
            "settings": dict(e.settings),
            "spec": e.spec.model_dump(mode="json"),
        }
        for e in expand(sweep, str(path))
    ]


@pytest.mark.parametrize("name", ["grid"])
def test_expansion_matches_golden(name: str) -> None:
    got = _resolved(DATA / f"{name}.yaml")
    golden = DATA / f"{name}.expected.json"
    if os.environ.get("CLIPCL_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(golden.read_text())


def test_grid_expansion_shape() -> None:
    chains = _resolved(DATA / "grid.yaml")
    fin = [c for c in chains if c["method"] == "finetune"]
    zs = [c for c in chains if c["method"] == "zeroshot"]
    assert len(fin) == 2 * 2 * 2  # lr × zip group × seeds
    # training knobs collapse for a method that never trains; eval.batch_size (zipped) and seeds
    # still vary its chains
    assert len(zs) == 2 * 2
    assert {c["spec"]["train"]["lr"] for c in fin} == {1e-3, 1e-4}
    pairs = {(c["spec"]["train"]["iterations"], c["spec"]["eval"]["batch_size"]) for c in fin}
    assert pairs == {(10, 64), (20, 128)}  # zipped, not crossed
    assert all(c["spec"]["train"]["warmup_steps"] == 5 for c in fin)  # per-method train
    assert all(c["spec"]["method"]["train_mode"] == "image" for c in fin)
    assert len({c["chain_id"] for c in chains}) == len(chains)


def test_expansion_is_deterministic() -> None:
    assert _resolved(DATA / "grid.yaml") == _resolved(DATA / "grid.yaml")


def test_every_shipped_sweep_loads_and_expands() -> None:
    files = sorted((REPO / "sweeps").glob("*.yaml"))
    for path in files:
        sweep = load_sweep(path)
        assert expand(sweep, str(path)), path
        # the repository's runs/ (where `make demo` and the README look), from any directory
        assert sweep.run_root(path) == REPO / "runs" / sweep.name, path


def test_readme_sweep_example_loads_and_expands(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Sweeps") :]
    example = section[section.index("```yaml\n") + 8 : section.index("```\n", 8)]
    path = tmp_path / "lr-study.yaml"
    path.write_text(example)
    chains = expand(load_sweep(path), str(path))
    assert {e.method for e in chains} == {"zeroshot", "finetune"}


BASE = """name: bad
benchmarks: [smoke]
methods: {finetune: {}}
seeds: [0]
"""

BAD = {
    "not-yaml": ("name: [unclosed", "not valid YAML"),
    "top-level-list": ("- a\n- b\n", "expected a mapping"),
    "unknown-top-key": (BASE + "seed: [1]\n", "unknown key 'seed' (did you mean 'seeds'?)"),
    "missing-name": (
        "benchmarks: [smoke]\nmethods: {finetune: {}}\n",
        "missing required key 'name'",
    ),
    "bad-name": (BASE.replace("name: bad", "name: 'a b'"), "name"),
    "empty-benchmarks": (BASE.replace("[smoke]", "[]"), "benchmarks"),
    "unknown-benchmark": (BASE.replace("[smoke]", "[smok]"), "did you mean 'smoke'"),
    "unknown-method": (BASE.replace("finetune: {}", "fintune: {}"), "did you mean 'finetune'"),
    "unknown-method-key": (
        BASE.replace("finetune: {}", "finetune: {train_modes: image}"),
        "method.train_modes",
    ),
    "bad-method-value": (
        BASE.replace("finetune: {}", "finetune: {train_mode: all}"),
        "method.train_mode",
    ),
    "seed-type": (BASE.replace("seeds: [0]", "seeds: [a]"), "seeds.0"),
    "duplicate-seeds": (BASE.replace("seeds: [0]", "seeds: [0, 0]"), "seeds repeat"),
    "empty-grid": (BASE + "grid: {train.lr: []}\n", "empty list"),
    "grid-unknown-key": (BASE + "grid: {train.lrr: [1.0e-3]}\n", "train.lrr"),
    "grid-bad-type": (BASE + "grid: {train.iterations: [many]}\n", "train.iterations"),
    "zip-unequal": (
        BASE + "zip: [{train.lr: [1.0e-3, 1.0e-4], train.iterations: [5]}]\n",
        "common length",
    ),
    "varied-twice": (
        BASE + "grid: {train.lr: [1.0e-3]}\nzip: [{train.lr: [1.0e-4]}]\n",
        "varied twice",
    ),
    "resources-key": (BASE + "resources: {gpu: 1}\n", "did you mean 'gpus'"),
    "resources-type": (BASE + "resources: {mem_gb: lots}\n", "resources.mem_gb"),
    "duplicate-chain": (BASE + "grid: {train.lr: [1.0e-3, 1.0e-3]}\n", "duplicate chain"),
    "unknown-model": (BASE + "model: {arch: tinyy}\n", "did you mean 'tiny'"),
    "train-section-type": (BASE + "train: 5\n", "train"),
    # bools are not numbers, numbers are finite, a key is written once
    "iterations-bool": (BASE + "train: {iterations: true}\n", "train.iterations"),
    "seeds-bool": (BASE.replace("seeds: [0]", "seeds: [true]"), "seeds"),
    "keep-checkpoints-bool": (BASE + "keep_checkpoints: false\n", "keep_checkpoints"),
    "lr-inf": (BASE + "train: {lr: .inf}\n", "train.lr"),
    "lr-nan-in-grid": (BASE + "grid: {train.lr: [.nan]}\n", "train.lr"),
    "mem-inf": (BASE + "resources: {mem_gb: .inf}\n", "resources.mem_gb"),
    "resources-bool": (BASE + "resources: {gpus: true}\n", "resources.gpus"),
    "method-knob-bool": (
        BASE.replace("finetune: {}", "gpm: {threshold: true}"),
        "method.threshold",
    ),
    # grid keys that change a chain's identity have their own place in the sweep
    "grid-benchmark": (
        BASE + "grid: {benchmark: [mini-cil]}\n",
        "grid.benchmark: a chain's benchmark is not a grid key; list benchmarks in 'benchmarks:'",
    ),
    "grid-method-name": (
        BASE + "grid: {method.name: [zeroshot]}\n",
        "grid.method.name: a chain's method is not a grid key; list methods under 'methods:'",
    ),
    "grid-method-section": (
        BASE + "grid: {method: [{name: zeroshot}]}\n",
        "list methods under 'methods:'",
    ),
    "grid-seed": (BASE + "grid: {seed: [1, 2]}\n", "grid.seed: a chain's seed is not a grid key"),
    "zip-seed": (
        BASE + "zip: [{seed: [1, 2], train.lr: [1.0e-3, 1.0e-4]}]\n",
        "zip[0].seed: a chain's seed is not a grid key; list seeds in 'seeds:'",
    ),
    "method-grid-benchmark": (
        BASE.replace("finetune: {}", "finetune: {grid: {benchmark: [mini-cil]}}"),
        "methods.finetune.grid.benchmark: a chain's benchmark is not a grid key",
    ),
    # a method's own grid gets the checks of the top-level one
    "method-grid-empty": (
        BASE.replace("finetune: {}", "finetune: {grid: {train.lr: []}}"),
        "methods.finetune.grid: grid key 'train.lr' has an empty list of values",
    ),
    "method-grid-string": (
        BASE.replace("finetune: {}", "finetune: {grid: {train.batch_size: '16'}}"),
        "methods.finetune.grid.train.batch_size",
    ),
    "method-grid-scalar": (
        BASE.replace("finetune: {}", "finetune: {grid: {train.batch_size: 16}}"),
        "methods.finetune.grid.train.batch_size",
    ),
    "method-grid-not-a-mapping": (
        BASE.replace("finetune: {}", "finetune: {grid: [train.lr]}"),
        "methods.finetune.grid",
    ),
    "method-train-not-a-mapping": (
        BASE.replace("finetune: {}", "finetune: {train: 5}"),
        "methods.finetune.train",
    ),
    "method-grid-varied-twice": (
        BASE.replace("finetune: {}", "finetune: {grid: {train.lr: [1.0e-3]}}")
        + "grid: {train.lr: [1.0e-4]}\n",
        "key 'train.lr' is varied twice (grid and methods.finetune.grid)",
    ),
    "method-grid-and-zip": (
        BASE.replace("finetune: {}", "finetune: {grid: {train.lr: [1.0e-3]}}")
        + "zip: [{train.lr: [1.0e-4]}]\n",
        "key 'train.lr' is varied twice (zip[0] and methods.finetune.grid)",
    ),
    # a fixed value that a grid or zip always overrides never takes effect
    "method-train-overridden-by-zip": (
        BASE.replace("finetune: {}", "finetune: {train: {warmup_steps: 20}}")
        + "zip: [{train.iterations: [10, 20], train.warmup_steps: [1, 2]}]\n",
        "methods.finetune.train.warmup_steps: 20 never takes effect: zip[0] varies "
        "train.warmup_steps",
    ),
    "method-knob-overridden-by-its-grid": (
        BASE.replace(
            "finetune: {}",
            "finetune: {train_mode: whole, grid: {method.train_mode: [image, text]}}",
        ),
        "methods.finetune.train_mode: 'whole' never takes effect: methods.finetune.grid varies "
        "method.train_mode",
    ),
    "sweep-train-overridden-by-grid": (
        BASE + "train: {lr: 1.0e-3}\ngrid: {train.lr: [1.0e-4, 1.0e-5]}\n",
        "train.lr: 0.001 never takes effect: grid varies train.lr",
    ),
    "sweep-train-overridden-by-method-train": (
        BASE.replace("finetune: {}", "finetune: {train: {lr: 1.0e-4}}") + "train: {lr: 1.0e-3}\n",
        "train.lr: 0.001 never takes effect: methods.finetune.train sets train.lr",
    ),
    "model-overridden-by-grid": (
        BASE + "model: {arch: tiny}\ngrid: {model.arch: [tiny, ViT-B-16]}\n",
        "model.arch: 'tiny' never takes effect: grid varies model.arch",
    ),
    "epochs-without-unsetting-iterations": (
        BASE + "train: {epochs: 1}\n",
        "train.epochs replaces train.iterations: set iterations: null",
    ),
    # a method runs on a subset of the sweep's benchmarks
    "method-benchmarks-unknown": (
        BASE.replace("finetune: {}", "finetune: {benchmarks: [mini-cil]}"),
        "methods.finetune.benchmarks: 'mini-cil' is not in the sweep's benchmarks ['smoke']",
    ),
    "method-benchmarks-empty": (
        BASE.replace("finetune: {}", "finetune: {benchmarks: []}"),
        "methods.finetune.benchmarks",
    ),
    "method-benchmarks-repeated": (
        BASE.replace("finetune: {}", "finetune: {benchmarks: [smoke, smoke]}"),
        "methods.finetune.benchmarks repeats a benchmark",
    ),
    "benchmark-no-method-runs": (
        BASE.replace("[smoke]", "[smoke, mini-cil]").replace(
            "finetune: {}", "finetune: {benchmarks: [smoke]}"
        ),
        "benchmarks: no method runs on 'mini-cil'",
    ),
    "duplicate-top-key": (BASE + "seeds: [1]\n", "duplicate key 'seeds' (line 5"),
    "duplicate-nested-key": (
        BASE + "train: {lr: 1.0e-3, lr: 1.0e-4}\n",
        "duplicate key 'lr' (line 5",
    ),
}


def test_a_method_runs_only_on_its_benchmarks(tmp_path: Path) -> None:
    """``methods.<m>.benchmarks`` keeps that method's chains to those benchmarks (in the
    sweep's order); the other methods run on every benchmark; the ids do not change."""
    path = tmp_path / "s.yaml"
    text = (
        "name: b\nbenchmarks: [mini-mtil, mini-cil]\nseeds: [0, 1]\nmethods:\n"
        "  zeroshot: {}\n  finetune: {benchmarks: [mini-cil, mini-mtil]}\n"
    )
    nsp2 = "  nsp2: {benchmarks: [mini-cil], grid: {method.project: [true, false]}}\n"
    path.write_text(text + nsp2)
    got = [(e.benchmark, e.method, e.seed) for e in expand(load_sweep(path))]
    assert ("mini-mtil", "nsp2", 0) not in got
    assert (
        sorted(g for g in got if g[1] == "nsp2")
        == [("mini-cil", "nsp2", 0)] * 2 + [("mini-cil", "nsp2", 1)] * 2
    )
    assert {(b, m) for b, m, _ in got} == {
        ("mini-mtil", "zeroshot"),
        ("mini-mtil", "finetune"),
        ("mini-cil", "zeroshot"),
        ("mini-cil", "finetune"),
        ("mini-cil", "nsp2"),
    }
    plain = tmp_path / "plain.yaml"
    plain.write_text(text.replace("{benchmarks: [mini-cil, mini-mtil]}", "{}"))
    assert [e.chain_id for e in expand(load_sweep(plain))] == [
        e.chain_id for e in expand(load_sweep(path)) if e.method != "nsp2"
    ]


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_sweep_is_one_clear_error(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(ClipclError) as info:
        expand(load_sweep(path), str(path))
    message = str(info.value)
    assert str(path) in message, message
    assert expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"mem_gb": float("inf")}, "resources.mem_gb: expected a finite number > 0, got inf"),
        ({"gpus": True}, "resources.gpus: expected an integer >= 0, got True"),
    ],
)
def test_resources_built_directly_refuse_bools_and_infinity(kw: dict, expected: str) -> None:
    with pytest.raises(ClipclError) as info:
        Resources(**kw)
    assert str(info.value) == expected


@pytest.mark.parametrize(
    ("root", "where"),
    [("../runs/s", "runs/s"), ("out", "sweeps/out"), ("~/r", "home/r"), ("'~'", "home")],
)
def test_run_root_is_relative_to_the_sweep_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: str, where: str
) -> None:
    """A relative root is the sweep file's directory's, whatever the working directory; '~'
    is the home directory. status and results look there too."""
    from clipcl.orchestrator.plan import load_entries
    from tests.helpers import clipcl_inprocess

    (tmp_path / "sweeps").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "elsewhere")
    path = tmp_path / "sweeps" / "s.yaml"
    path.write_text(BASE + f"root: {root}\n")
    expected = (tmp_path / where).resolve()
    assert load_entries(Path("../sweeps/s.yaml"))[2] == expected
    status = clipcl_inprocess("status", "../sweeps/s.yaml")
    assert f"no results store under {expected} " in status.stderr, status.stderr
    assert not list((tmp_path / "elsewhere").iterdir())  # nothing written here


def test_missing_sweep_file(tmp_path: Path) -> None:
    with pytest.raises(ClipclError, match="sweep file not found"):
        load_sweep(tmp_path / "nope.yaml")
