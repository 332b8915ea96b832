"""Thin wrapper over open_clip's factory: configs, offline weight resolution, device, precision.

Architectures are open_clip model names (``ViT-B-16``) or project configs shipped as open_clip JSON
files in ``models/configs`` and registered at import (``clipcl-tiny``, alias ``tiny``). Weights come
from a local file or an open_clip pretrained tag already in the local cache; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import open_clip
import torch

from clipcl.errors import ClipclError, did_you_mean
from clipcl.models import config
from clipcl.models.checkpoint import load_error
from clipcl.models.clip import ClipModel
from clipcl.models.config import (  # noqa: F401  (re-exported)
    ALIASES,
    CONFIG_DIR,
    ModelConfig,
    Precision,
    default_pretrained,
)

_registered = False


def register_project_configs() -> None:
    """Register every JSON config in ``models/configs`` with open_clip (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def resolve_arch(arch: str) -> str:
    """:func:`clipcl.models.config.resolve_arch`, with the project's configs registered in
    open_clip (what building a model needs)."""
    register_project_configs()
    return config.resolve_arch(arch)


def _cached_tag_file(arch: str, tag: str, cache_dir: str | None) -> Path:
    """Return the local file of an open_clip pretrained tag, or raise if it is not cached."""
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ClipclError(
            f"pretrained '{tag}' is neither an existing file nor a known open_clip tag for "
            f"'{arch}'{did_you_mean(tag, tags)}; known tags: {', '.join(tags) or 'none'}"
        )
    hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    where: list[str] = []
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        for fname in (
            [filename]
            if filename
            else ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"]
        ):
            found = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
            where.append(f"Hugging Face cache entry {repo}/{fname}")
    if url:
        path = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if path.is_file():
            return path
        where.append(str(path))
    raise ClipclError(
        f"pretrained '{arch}/{tag}' is not in the local cache (looked for: {'; '.join(where)}); "
        "nothing is downloaded at run time: copy the weights file there or pass its path"
    )


PACKAGED = {("clipcl-tiny", "clipcl-tiny"): Path(__file__).parent / "weights" / "clipcl-tiny.pt"}


def resolve_pretrained(
    arch: str, pretrained: str | None, cache_dir: str | None = None
) -> Path | None:
    """Return the weights file to load for ``pretrained``, or None for random init."""
    if pretrained is None or pretrained.lower() == "none":
        return None
    packaged = PACKAGED.get((arch, pretrained))
    if packaged is not None:
        if not packaged.is_file():
            raise ClipclError(
                f"packaged weights missing: {packaged} (regenerate them with "
                f"`clipcl pretrain-tiny --out {packaged}`)"
            )
        return packaged
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    named = _name_tag(arch, pretrained)
    if named is not None:
        return _cached_tag_file(arch, named, cache_dir)
    looks_like_path = os.sep in pretrained or path.suffix in {".pt", ".pth", ".bin", ".safetensors"}
    if looks_like_path:
        raise ClipclError(f"pretrained checkpoint not found: {path} (no such file)")
    return _cached_tag_file(arch, pretrained, cache_dir)


def _name_tag(arch: str, pretrained: str) -> str | None:
    """The tag of an open_clip ``name/tag`` value (e.g. ``ViT-B-16/openai``) naming ``arch``;
    ``None`` when ``pretrained`` is not of that form."""
    name, sep, tag = pretrained.partition("/")
    if not sep or "/" in tag or name not in open_clip.list_models():
        return None
    if resolve_arch(name) != arch:
        raise ClipclError(
            f"pretrained '{pretrained}' names the model '{name}', but the model is '{arch}'"
        )
    return tag


def uses_quick_gelu(arch: str, pretrained: str | None, weights: Path | None) -> bool:
    """Whether the weights were trained with QuickGELU (OpenAI's CLIPs were): an OpenAI
    TorchScript archive, or an open_clip tag whose config says so. A plain state-dict file of
    OpenAI weights needs the ``-quickgelu`` architecture (e.g. ``ViT-B-16-quickgelu``)."""
    if weights is None or arch.endswith("-quickgelu"):
        return False
    if is_torchscript(weights):
        return True
    tag = None
    if pretrained and not Path(pretrained).expanduser().is_file():
        tag = _name_tag(arch, pretrained) or pretrained
    cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    return bool(cfg.get("quick_gelu", False))


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given (validated), else CUDA when present, else CPU."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    allowed = "cpu, cuda, cuda:N"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ClipclError(f"device '{device}' is not a device; allowed: {allowed}") from None
    if dev.type not in {"cpu", "cuda"}:
        raise ClipclError(f"device '{device}' is not supported; allowed: {allowed}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ClipclError(f"device '{device}': no CUDA GPU is visible on this machine")
        if dev.index is not None and dev.index >= count:
            raise ClipclError(
                f"device '{device}': only {count} CUDA GPU(s) visible (cuda:0..cuda:{count - 1})"
            )
    return dev


def device_name(device: torch.device) -> str:
    """``cpu``, or the CUDA device's name (``NVIDIA H200``): what throughput is recorded on."""
    if device.type != "cuda":
        return device.type
    return str(torch.cuda.get_device_name(device))


def gpu_uuid(device: torch.device) -> str | None:
    """The CUDA device's UUID (``None`` on the CPU or where torch does not report it)."""
    if device.type != "cuda":
        return None
    try:
        return str(torch.cuda.get_device_properties(device).uuid)
    except (AttributeError, RuntimeError):
        return None


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Autocast context for the chosen compute precision (weights stay fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (OpenAI's released CLIP ``.pt`` files are)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.endswith("constants.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _load_weights(clip: Any, path: Path) -> None:
    """Load a state-dict checkpoint (open_clip / OpenAI state dict, ``.safetensors``; read with
    ``weights_only=True``) or an OpenAI TorchScript archive (read with ``torch.jit.load``, which
    unpickles no Python objects) into ``clip``."""
    if not is_torchscript(path):
        open_clip.load_checkpoint(clip, str(path), weights_only=True)
        return
    # TorchScript: take only its tensors, then load them like any state dict.
    scripted = torch.jit.load(str(path), map_location="cpu")
    wanted = clip.state_dict().keys()
    # Buffers a script module also saves (attn_mask, input_resolution, context_length, ...) are
    # not weights; a real mismatch still fails the strict load below (missing keys).
    state = {k: v.detach().clone() for k, v in scripted.state_dict().items() if k in wanted}
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "state_dict.pt"
        torch.save(state, plain)
        open_clip.load_checkpoint(clip, str(plain), weights_only=True)


def build_model(config: ModelConfig, device: torch.device | None = None) -> ClipModel:
    """Build the CLIP described by ``config`` on ``device`` (fp32 master weights)."""
    name = resolve_arch(config.arch)
    weights = resolve_pretrained(name, config.pretrained)
    device = device or pick_device()
    # open_clip warns about random init at WARNING level; we decide that explicitly.
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    quick_gelu = uses_quick_gelu(name, config.pretrained, weights)
    clip = open_clip.create_model(name, pretrained=None, device="cpu", force_quick_gelu=quick_gelu)
    if weights is not None:
        try:
            _load_weights(clip, weights)
        except Exception as exc:  # a wrong or damaged file: say which
            raise ClipclError(
                f"could not load pretrained weights for '{name}' from {weights}: {load_error(exc)}"
            ) from exc
    tokenizer = open_clip.get_tokenizer(name)
    pp = clip.visual.preprocess_cfg if hasattr(clip.visual, "preprocess_cfg") else {}
    image_size = clip.visual.image_size
    image_size = image_size[0] if isinstance(image_size, tuple | list) else int(image_size)
    model = ClipModel(
        clip,
        tokenizer,
        image_size=image_size,
        mean=tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)),
        arch=name,
    )
    return model.to(device)


register_project_configs()
