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
