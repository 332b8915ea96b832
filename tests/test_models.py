"""Models: factory, offline weights, template ensembles, heads, checkpoints, train modes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipcl.data import get_benchmark
from clipcl.errors import ClipclError
from clipcl.methods import TaskContext, create_method
from clipcl.models import (
    CheckpointError,
    ModelConfig,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from clipcl.schedules import warmup_cosine
from clipcl.workers import TrainConfig
from clipcl.workers.train import make_loader, train_task


@pytest.fixture(scope="module")
def smoke():
    return get_benchmark("smoke")


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="tiny"), torch.device("cpu"))


def test_tiny_builds_on_cpu_and_encodes() -> None:
    model = tiny()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    feats = model.encode_image(model.preprocess(images))
    assert feats.shape == (5, 64)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(5))


def test_preprocess_resizes_other_sizes() -> None:
    model = tiny()
    x = model.preprocess(torch.zeros(2, 3, 48, 48, dtype=torch.uint8))
    assert x.shape == (2, 3, 32, 32)


def test_class_embeddings_are_the_template_ensemble() -> None:
    model = tiny()
    names, templates = ["cat", "dog"], ["a {}.", "a photo of a {}.", "{}"]
    got = model.class_embeddings(names, templates)
    expected = []
    for n in names:
        each = model.encode_text(model.tokenize([t.format(n) for t in templates]))  # normalised
        expected.append(F.normalize(each.mean(dim=0), dim=-1))
    torch.testing.assert_close(got, torch.stack(expected))


def test_pretrained_local_file_loads_exact_weights(tmp_path: Path) -> None:
    source = tiny(seed=3)
    path = tmp_path / "tiny_openclip.pt"
    torch.save(source.clip.state_dict(), path)  # open_clip checkpoint format: a state dict
    torch.manual_seed(99)
    loaded = build_model(ModelConfig(arch="tiny", pretrained=str(path)), torch.device("cpu"))
    for (name, a), (_, b) in zip(
        source.clip.state_dict().items(), loaded.clip.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


def test_missing_pretrained_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ClipclError, match="not found.*nope.pt"):
        build_model(ModelConfig(arch="tiny", pretrained=str(tmp_path / "nope.pt")))


def test_uncached_tag_is_refused_without_download() -> None:
    with pytest.raises(ClipclError, match="not in the local cache|known open_clip tag"):
        build_model(ModelConfig(arch="ViT-B-16", pretrained="openai"))


def test_unknown_arch_suggests_a_name() -> None:
    with pytest.raises(ClipclError, match="did you mean 'tiny'"):
        build_model(ModelConfig(arch="tinny"))


def test_checkpoint_roundtrip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    sha = save_checkpoint({"w": torch.arange(5.0), "k": 3}, path)
    assert load_checkpoint(path, sha)["k"] == 3
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path, sha)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "absent.pt", sha)


def test_heads_survive_state_dict_roundtrip() -> None:
    a = tiny()
    a.add_head("shapes", torch.randn(4, 64))
    b = tiny(seed=1)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.head("shapes"), a.head("shapes"))


EXPECTED_TRAINABLE = {
    "whole": {"image", "text"},
    "image": {"image"},
    "text": {"text"},
    "image-fc": {"image", "heads"},
    "image-fc-fixed": {"image"},
    "fc": {"heads"},
}


@pytest.mark.parametrize("mode", sorted(EXPECTED_TRAINABLE))
def test_train_modes_update_only_their_parameters(mode: str, smoke) -> None:
    model = tiny()
    method = create_method("finetune", {"train_mode": mode})
    method.setup(model)
    ctx = TaskContext(index=1, task=smoke.tasks[1], benchmark=smoke, seed=0)
    method.before_task(ctx)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(iterations=2, batch_size=16, warmup_steps=0, lr=1e-2)
    loader = make_loader(ctx.task.train, 16, shuffle=True, seed=0, num_workers=0, pin_memory=False)
    train_task(model, method, ctx, cfg, loader)
    changed = set()
    for tower in ("image", "text", "logit", "heads"):
        for name, p in model.named_tower_parameters(tower):
            key = name if tower == "heads" else f"clip.{name}"
            ref = before.get(f"heads.{name}" if tower == "heads" else key)
            if ref is None or not torch.equal(ref, p.detach()):
                changed.add(tower)
    assert changed == EXPECTED_TRAINABLE[mode]
    if "fc" in mode:  # the task's head exists (and is used); fixed: still its initialisation
        with torch.no_grad():
            init = model.class_embeddings(ctx.task.class_names, ctx.task.templates[:1])
        head = model.head(ctx.task.name)
        assert head is not None
        assert torch.equal(head.detach(), init) is (mode == "image-fc-fixed")


def test_warmup_then_cosine_schedule() -> None:
    lrs = [warmup_cosine(s, 1.0, warmup=4, total=12) for s in range(12)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[8] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
