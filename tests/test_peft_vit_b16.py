"""The prompt modules on a real architecture: ViT-B-16 (random weights, 224 px, 197 tokens of width
768, text width 512); adapters on ViT-B-16 are covered in ``test_dmnsp.py``. And a clear refusal of
architectures the projection methods cannot attach to (a ResNet image tower)."""

from __future__ import annotations

import pytest
import torch

from clipcl.errors import ClipclError
from clipcl.methods import create_method
from clipcl.models import ClipModel, ModelConfig, build_model
from clipcl.models.deep_prompts import add_deep_prompts
from clipcl.models.prompt_tuning import (
    add_image_prompt,
    build_scaffold,
    encode_with_context,
    phrase_context,
)
from clipcl.results.records import RunDir
from clipcl.workers import ChainSpec, run_chain


@pytest.fixture(scope="module")
def vit_b16() -> ClipModel:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="ViT-B-16", pretrained="none"), torch.device("cpu"))
    return model.eval().requires_grad_(False)


def _pixels(model: ClipModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8, generator=g)
    return model.preprocess(images)


def _tokens_seen(model: ClipModel, pixels: torch.Tensor) -> list[int]:
    """Token count entering each image block (a pre-hook on the blocks)."""
    seen: list[int] = []
    hooks = [
        b.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
        for b in model.clip.visual.transformer.resblocks
    ]
    try:
        with torch.no_grad():
            model.encode_image(pixels)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_deep_and_shallow_prompts_on_vit_b16(vit_b16: ClipModel) -> None:
    model = vit_b16
    pixels = _pixels(model)
    with torch.no_grad():
        plain = model.encode_image(pixels)
    assert _tokens_seen(model, pixels) == [197] * 12
    prompts = add_deep_prompts(model.clip.visual, blocks=[0, 1, 2, 3], length=4)
    assert sorted(prompts) == [0, 1, 2, 3]
    assert all(p.tokens.shape == (4, 768) for p in prompts.values())
    # deep prompts are extra keys/values only: the token stream keeps 197 tokens
    assert _tokens_seen(model, pixels) == [197] * 12
    with torch.no_grad():
        prompted = model.encode_image(pixels)
    assert prompted.shape == plain.shape == (2, 512)
    assert not torch.allclose(prompted, plain, atol=1e-4)
    image_prompt = add_image_prompt(model.clip, 10)
    # the shallow prompt lengthens the token stream by 10 from the first block on
    assert _tokens_seen(model, pixels) == [207] * 12
    assert image_prompt.prompt.shape == (10, 768)


def test_coop_context_from_the_template_phrase_reproduces_vit_b16_text_features(
    vit_b16: ClipModel,
) -> None:
    model = vit_b16
    names = ["apple", "sweet pepper"]
    ctx = phrase_context(model, "a bad photo of a")  # (5, 512)
    assert ctx.shape == (5, 512)
    scaffold = build_scaffold(model, names, n_ctx=ctx.shape[0])
    with torch.no_grad():
        got = encode_with_context(model, ctx, scaffold)  # (2, 512)
        want = model.encode_text(model.tokenize([f"a bad photo of a {n}." for n in names]))
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("name", ["gpm", "nsp2", "pgp", "dmnsp"])
def test_projection_methods_refuse_a_resnet_image_tower_clearly(name: str) -> None:
    model = build_model(ModelConfig(arch="RN50", pretrained="none"), torch.device("cpu"))
    with pytest.raises(ClipclError, match="ViT"):
        create_method(name, {}).check_model(model)  # before anything runs
    with pytest.raises(ClipclError, match="ViT"):
        create_method(name, {}).setup(model)


def test_a_chain_refuses_the_model_before_evaluating_anything(tmp_path) -> None:
    spec = ChainSpec.build(
        {
            "model": {"arch": "RN50", "pretrained": "none"},
            "benchmark": "test-cil",
            "method": "nsp2",
            "train": {"iterations": 1},
        }
    )
    with pytest.raises(ClipclError, match="ViT"):
        run_chain(spec, tmp_path / "chain")
    assert not RunDir(tmp_path / "chain").rows_path.exists()  # no zero-shot row either
