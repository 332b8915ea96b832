"""The packaged tiny CLIP: loads offline, reproduces its zero-shot table, is regenerable."""

from __future__ import annotations

import json

import pytest
import torch

from clipcl.cli import _zeroshot_table
from clipcl.models import ModelConfig, build_model, default_pretrained
from clipcl.models.pretrain import PACKAGED_PROVENANCE, PACKAGED_WEIGHTS, pretrain_tiny
from clipcl.workers import ChainSpec


def test_packaged_weights_are_small_and_documented() -> None:
    assert PACKAGED_WEIGHTS.is_file(), "run `clipcl pretrain-tiny` to regenerate"
    assert PACKAGED_WEIGHTS.stat().st_size <= 20 * 2**20
    prov = json.loads(PACKAGED_PROVENANCE.read_text())
    assert prov["command"].startswith("clipcl pretrain-tiny")
    assert {"seconds", "arguments", "zeroshot", "sha256"} <= set(prov)


def test_tiny_defaults_to_the_packaged_weights() -> None:
    assert default_pretrained("tiny") == "clipcl-tiny"
    spec = ChainSpec.build({"model": {"arch": "tiny"}, "benchmark": "smoke", "method": "finetune"})
    assert spec.model.pretrained == "clipcl-tiny"
    none = ChainSpec.build(
        {
            "model": {"arch": "tiny", "pretrained": "none"},
            "benchmark": "smoke",
            "method": "finetune",
        }
    )
    assert none.model.pretrained == "none" and none.chain_id != spec.chain_id


def test_packaged_model_reproduces_its_recorded_zeroshot_table() -> None:
    recorded = json.loads(PACKAGED_PROVENANCE.read_text())["zeroshot"]
    model = build_model(ModelConfig(arch="tiny", pretrained="clipcl-tiny"), torch.device("cpu"))
    table = _zeroshot_table(model, "mini-mtil")
    assert set(table) == set(recorded)
    for name, row in recorded.items():
        assert table[name]["accuracy"] == pytest.approx(row["accuracy"], abs=1.0), name


def test_packaged_model_has_zero_shot_ability_where_the_world_taught_it() -> None:
    recorded = json.loads(PACKAGED_PROVENANCE.read_text())["zeroshot"]
    ratio = {n: r["accuracy"] / (100 / r["num_classes"]) for n, r in recorded.items()}
    assert sum(v >= 2 for v in ratio.values()) >= len(ratio) / 2, ratio
    assert min(ratio["letters"], ratio["digits"]) < 1.6, ratio  # never named in captions


def test_pretraining_is_deterministic() -> None:
    a = pretrain_tiny(steps=2, batch_size=8, warmup_steps=1, seed=5)
    b = pretrain_tiny(steps=2, batch_size=8, warmup_steps=1, seed=5)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_package_data_ships_the_weights_and_configs() -> None:
    """A wheel (not only an editable install) must carry the weights and model configs."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    repo = Path(__file__).resolve().parents[1]
    package = repo / "src" / "clipcl"
    patterns = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["clipcl"]
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    for data_dir in ("models/weights", "models/configs"):
        for path in (package / data_dir).iterdir():
            assert path in shipped, f"{path} is not in [tool.setuptools.package-data]"
