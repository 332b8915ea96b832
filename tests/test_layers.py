"""``clipcl layers``: the modules, linear layers and parameters of a CLIP, with the names that
``lora.targets`` and ``gpm.layers``/``gpm.blocks`` take — checked against the code that selects
them, so the listing cannot drift from what a config really picks."""

from __future__ import annotations

import json

import torch

from clipcl.methods.configs import ALL_LAYERS, DEFAULT_TARGETS, LoRATarget
from clipcl.methods.gpm import protected_layers
from clipcl.models import ModelConfig, build_model
from clipcl.models.lora import lora_modules
from tests.helpers import clipcl_inprocess


def _json(*args: str) -> dict:
    got = clipcl_inprocess("layers", *args, "--json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


def _tiny():
    return build_model(ModelConfig(arch="tiny", pretrained=None), torch.device("cpu"))


def test_linear_layers_carry_the_names_lora_and_gpm_select():
    listed = _json("tiny", "--linear-only")["linear"]
    model = _tiny()
    by_name = {x["name"]: x for x in listed}
    lora = set(lora_modules(model.clip, LoRATarget.__args__))  # type: ignore[attr-defined]
    assert {n for n, x in by_name.items() if any("lora" in k for k in x["named_by"])} == lora
    default = set(lora_modules(model.clip, DEFAULT_TARGETS))
    assert {n for n, x in by_name.items() if "lora.targets (default)" in x["named_by"]} == default
    gpm, _ = protected_layers(model, ALL_LAYERS, None)

    def weight(name: str) -> str:
        return f"{name}_weight" if name.endswith(".in_proj") else f"{name}.weight"

    assert {
        weight(n) for n, x in by_name.items() if "gpm.layers + gpm.blocks" in x["named_by"]
    } == set(gpm)
    weights = dict(model.clip.named_parameters())
    for name, x in by_name.items():  # every shape is the weight's
        assert tuple(weights[weight(name)].shape) == tuple(x["shape"]), name
    image = [x for x in listed if x["tower"] == "image"]
    assert {x["block"] for x in image} == set(range(len(model.clip.visual.transformer.resblocks)))


def test_params_and_modules_list_the_whole_model():
    model = _tiny().clip
    params = _json("tiny", "--params")["parameters"]
    assert [(p["name"], tuple(p["shape"])) for p in params] == [
        (n, tuple(p.shape)) for n, p in model.named_parameters()
    ]
    mods = _json("tiny")["modules"]
    assert [m["name"] for m in mods] == [n for n, _ in model.named_modules() if n]
    shown = clipcl_inprocess("layers", "tiny", "--params")
    total = sum(p.numel() for p in model.parameters())
    assert f"{total:,} values" in shown.stdout


def test_bad_input_is_one_error_line():
    for args in (("ViT-B-17",), ("tiny", "--params", "--linear-only")):
        got = clipcl_inprocess("layers", *args)
        errors = [line for line in got.stderr.splitlines() if line.startswith("error:")]
        assert got.returncode == 2 and len(errors) == 1, got.stderr
        assert "Traceback" not in got.stderr
