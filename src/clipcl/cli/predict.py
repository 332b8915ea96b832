"""``clipcl predict``: classify one image file with a saved chain checkpoint (or pretrained CLIP).

The model comes from a chain checkpoint (``RUN/ckpt/task_NNN.pt``; its architecture from
``RUN/spec.json`` when present, else ``--model``) or from a weights spec (``tiny`` = the packaged
tiny CLIP, an open_clip tag in the local cache, a weights file): zero-shot. The image is resized
like every real dataset's images (:func:`clipcl.data.real.base.clip_resize`: shorter side to 224,
bicubic, centre crop; the model then resizes to its own input size), and classified among the
class names of FILE (one per line) with one prompt template.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import typer

from clipcl.cli.common import app, out
from clipcl.errors import ClipclError

_WEIGHT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors"}


def _class_names(path: Path) -> list[str]:
    """Non-empty stripped lines of ``path``; distinct and at least one."""
    if not path.is_file():
        raise ClipclError(f"--class-names '{path}': no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClipclError(f"--class-names '{path}': cannot read it as UTF-8 text: {exc}") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise ClipclError(f"--class-names '{path}' is empty; expected one class name per line")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ClipclError(f"--class-names '{path}': class '{name}' appears twice")
        seen.add(name)
    return names


def _check_template(template: str) -> None:
    """``template`` holds exactly one plain ``{}`` (for the class name) and nothing else to fill.

    Raises:
        ClipclError: It does not (e.g. ``{0} {1} {}``, ``{name}``, an unmatched brace).
    """
    try:
        fields = [f for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
        ok = fields == [""] and "{}" in template
        template.format("x")
    except (ValueError, IndexError, KeyError):
        ok = False
    if not ok:
        raise ClipclError(
            f"--template '{template}': expected exactly one '{{}}' for the class and no other "
            "braces (write '{{' or '}}' for a literal brace)"
        )


def _image(path: Path) -> Any:
    """The image file as a uint8 tensor (3, 224, 224), resized like the real datasets."""
    from PIL import Image, UnidentifiedImageError

    from clipcl.data.real.base import IMAGE_SIZE, clip_resize

    if not path.is_file():
        raise ClipclError(f"image '{path}': no such file")
    try:
        with Image.open(path) as im:
            return clip_resize(im, IMAGE_SIZE)
    except Image.DecompressionBombError:
        raise ClipclError(
            f"image '{path}' is too large to open safely (more than "
            f"{2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels: a decompression bomb?)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClipclError(f"image '{path}' is not a readable image: {detail}") from None


def _chain_model_config(checkpoint: Path, model_arg: str | None) -> Any:
    """How the chain built its model: ``model`` of ``spec.json`` two directories up; without
    one, ``--model`` (default ViT-B-16) with its default weights, as ``chain run`` does."""
    from clipcl.models import ModelConfig, default_pretrained
    from clipcl.results.records import RunDir

    spec = RunDir(checkpoint.resolve().parent.parent).spec_path
    if not spec.is_file():
        arch = model_arg or "ViT-B-16"
        return ModelConfig(arch=arch, pretrained=default_pretrained(arch))
    try:
        config = ModelConfig.model_validate(json.loads(spec.read_text())["model"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        detail = str(exc).splitlines()[0]
        raise ClipclError(f"{spec}: cannot read the chain's model: {detail}") from None
    if model_arg is not None and model_arg != config.arch:
        raise ClipclError(
            f"--model '{model_arg}' differs from the chain's model '{config.arch}' ({spec});"
            " drop --model"
        )
    return config


def _chain_model(checkpoint: Path, state: dict[str, Any], model_arg: str | None, device: Any):
    """The chain's model (built as the worker built it, so QuickGELU and the like match)
    holding the checkpoint's weights."""
    from clipcl.models import build_model

    config = _chain_model_config(checkpoint, model_arg)
    model = build_model(config, device)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ClipclError(
            f"checkpoint '{checkpoint}' does not fit the model '{config.arch}'"
            f" (pass the chain's architecture with --model): {str(exc).splitlines()[0][:300]}"
        ) from None
    return model


def load_model(checkpoint: str, model_arg: str | None, device: Any):
    """A chain checkpoint, a weights file, or a pretrained spec → a ``ClipModel`` in eval mode."""
    from clipcl.models import (
        CheckpointError,
        ModelConfig,
        build_model,
        default_pretrained,
        load_checkpoint,
    )
    from clipcl.models.factory import ALIASES
    from clipcl.results.records import RunDir

    path = Path(checkpoint).expanduser()
    if path.is_file():
        try:
            state = load_checkpoint(path, map_location="cpu")
        except CheckpointError as exc:
            if RunDir(path.resolve().parent.parent).has_spec():  # in a chain's run dir
                raise ClipclError(f"--checkpoint: {exc}") from None
            state = None  # not a chain checkpoint: maybe weights open_clip can read
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            return _chain_model(path, state, model_arg, device).eval()
        arch = model_arg or "ViT-B-16"
        return build_model(ModelConfig(arch=arch, pretrained=str(path)), device).eval()
    if "/" in checkpoint or path.suffix in _WEIGHT_SUFFIXES:
        raise ClipclError(f"--checkpoint '{checkpoint}': no such file")
    if checkpoint in ALIASES or checkpoint in ALIASES.values():  # 'tiny': packaged weights
        arch = checkpoint
        if model_arg is not None and ALIASES.get(model_arg, model_arg) != ALIASES.get(arch, arch):
            raise ClipclError(f"--checkpoint '{checkpoint}' is a '{arch}' model, not '{model_arg}'")
        weights = default_pretrained(arch)
    else:  # an open_clip tag of --model, resolved offline (a clear error when not cached)
        arch, weights = model_arg or "ViT-B-16", checkpoint
    return build_model(ModelConfig(arch=arch, pretrained=weights), device).eval()


def classify(model: Any, image: Any, class_names: list[str], template: str) -> Any:
    """Class probabilities (C,) of one uint8 image (3, H, W): softmax of ``s · f(x) g(c)ᵀ``."""
    import torch

    with torch.no_grad():
        text = model.class_embeddings(class_names, [template])  # (C, D)
        feats = model.encode_image(model.preprocess(image[None]))  # (1, D)
        logits = model.logit_scale() * feats @ text.t()  # (1, C)
        return torch.softmax(logits.float(), dim=-1)[0].cpu()


@app.command()
def predict(
    image: Path = typer.Argument(..., help="Image file to classify (any format PIL reads)."),
    checkpoint: str = typer.Option(
        ...,
        "--checkpoint",
        help="Chain checkpoint (RUN/ckpt/task_NNN.pt), a weights file, or pretrained weights"
        " ('tiny' = the packaged tiny CLIP, or an open_clip tag of --model): zero-shot.",
    ),
    class_names: Path = typer.Option(
        ..., "--class-names", help="Text file with one class name per line."
    ),
    top_k: int | None = typer.Option(
        None,
        "--top-k",
        min=1,
        help="How many classes to print (default 5, or all classes when there are fewer).",
    ),
    template: str = typer.Option(
        "a photo of a {}.", "--template", help="Prompt template with one '{}'."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Architecture when the checkpoint has no spec.json two directories up"
        " (default ViT-B-16).",
    ),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: auto)."),
    as_json: bool = typer.Option(False, "--json", help="Print the predictions as JSON."),
) -> None:
    """Classify one image among the given class names; print the top-k with probabilities."""
    from clipcl.models import pick_device

    pixels = _image(image)
    _check_template(template)
    names = _class_names(class_names)
    top_k = min(5 if top_k is None else top_k, len(names))  # all classes when fewer
    clip = load_model(checkpoint, model, pick_device(device))
    probs = classify(clip, pixels, names, template)
    values, indices = probs.topk(top_k)
    top: list[dict[str, Any]] = [
        {"class": names[int(i)], "probability": round(float(p), 6)}
        for p, i in zip(values, indices, strict=True)
    ]
    if as_json:
        print(json.dumps({"image": str(image), "checkpoint": checkpoint, "predictions": top}))
        return
    width = max(len(t["class"]) for t in top)
    for t in top:
        out.print(f"{t['class']:<{width}}  {t['probability']:.4f}", highlight=False, markup=False)
