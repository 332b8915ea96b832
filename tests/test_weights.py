"""Pretrained weights from local files in the formats researchers have: an open_clip training
checkpoint ({"state_dict": module.-prefixed}), an OpenAI TorchScript archive, safetensors."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from clipcl.errors import ClipclError
from clipcl.models import ModelConfig, build_model
from clipcl.models.factory import is_torchscript


def _source(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.create_model("clipcl-tiny", pretrained=None, device="cpu")


def _assert_same(source: torch.nn.Module, path: Path) -> None:
    torch.manual_seed(1234)  # a different random init: loading must overwrite every tensor
    loaded = build_model(ModelConfig(arch="tiny", pretrained=str(path)), torch.device("cpu"))
    got = loaded.clip.state_dict()
    for name, value in source.state_dict().items():
        torch.testing.assert_close(got[name], value, msg=name)


def test_open_clip_training_checkpoint_with_module_prefix(tmp_path: Path) -> None:
    source = _source(5)
    path = tmp_path / "epoch_32.pt"
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"epoch": 32, "name": "run", "state_dict": state}, path)
    _assert_same(source, path)


def test_openai_torchscript_archive(tmp_path: Path) -> None:
    source = _source(6)
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(source), str(path))
    assert is_torchscript(path)
    _assert_same(source, path)


def test_safetensors_file(tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    source = _source(7)
    path = tmp_path / "open_clip_model.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    _assert_same(source, path)


def test_wrong_or_damaged_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ClipclError, match=r"could not load pretrained weights .*broken\.pt"):
        build_model(ModelConfig(arch="tiny", pretrained=str(path)))
    other = tmp_path / "other.pt"
    torch.save({"visual.nothing": torch.zeros(1)}, other)
    with pytest.raises(ClipclError, match=r"other\.pt"):
        build_model(ModelConfig(arch="tiny", pretrained=str(other)))


def _activations(model) -> set[str]:
    return {type(m).__name__ for m in model.clip.modules() if "GELU" in type(m).__name__}


def test_openai_weights_get_quick_gelu(tmp_path: Path) -> None:
    """OpenAI's CLIPs were trained with QuickGELU: a TorchScript archive switches it on."""
    source = _source(8)
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(source), str(path))
    jit = build_model(ModelConfig(arch="tiny", pretrained=str(path)), torch.device("cpu"))
    assert _activations(jit) == {"QuickGELU"}
    plain_path = tmp_path / "state.pt"
    torch.save(source.state_dict(), plain_path)
    plain = build_model(ModelConfig(arch="tiny", pretrained=str(plain_path)), torch.device("cpu"))
    assert _activations(plain) == {"GELU"}


def _fake_hf_cache(cache: Path, repo: str, filename: str) -> Path:
    """The layout huggingface_hub leaves: models--org--name/{refs/main, snapshots/REV/FILE}."""
    base = cache / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0123abcd")
    target = base / "snapshots" / "0123abcd" / filename
    target.parent.mkdir(parents=True)
    target.write_bytes(b"weights")
    return target


def test_cached_tag_and_name_tag_resolve_offline(tmp_path: Path) -> None:
    from clipcl.models.factory import resolve_pretrained, uses_quick_gelu

    hub = open_clip.get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"].strip("/")
    target = _fake_hf_cache(tmp_path, hub, "open_clip_pytorch_model.bin")
    assert resolve_pretrained("ViT-B-16", "openai", cache_dir=str(tmp_path)) == target
    assert resolve_pretrained("ViT-B-16", "ViT-B-16/openai", cache_dir=str(tmp_path)) == target
    assert uses_quick_gelu("ViT-B-16", "ViT-B-16/openai", target)
    with pytest.raises(ClipclError, match="names the model 'ViT-B-32'"):
        resolve_pretrained("ViT-B-16", "ViT-B-32/openai", cache_dir=str(tmp_path))
    with pytest.raises(ClipclError, match="not in the local cache.*nothing is downloaded"):
        resolve_pretrained("ViT-B-16", "laion2b_s34b_b88k", cache_dir=str(tmp_path))


def test_a_file_with_python_objects_is_refused_in_one_line(tmp_path: Path) -> None:
    """The weights-only unpickler's refusal (many lines, advising weights_only=False) becomes
    one line saying the file is not a plain tensor checkpoint and was not loaded."""
    import argparse

    from clipcl.models.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "objects.pt"
    torch.save({"args": argparse.Namespace(lr=1.0), "state_dict": {}}, path)
    with pytest.raises(ClipclError) as info:
        build_model(ModelConfig(arch="tiny", pretrained=str(path)))
    message = str(info.value)
    assert "not a plain tensor checkpoint" in message and "was not loaded" in message
    assert "weights_only=False" not in message and "\n" not in message
    with pytest.raises(CheckpointError, match="not a plain tensor checkpoint") as ckpt:
        load_checkpoint(path)
    assert "\n" not in str(ckpt.value)
