"""``ModelConfig`` and architecture names, checked without importing torch or open_clip.

Planning thousands of chains must not pay for torch: the names open_clip knows are the stems of
the JSON model configs it ships (``open_clip/model_configs/*.json``, located with
``importlib.util.find_spec``) plus the project's own (``models/configs``). When open_clip is
already imported, configs registered at run time (``open_clip.add_model_config``) count too.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clipcl.errors import ClipclError, did_you_mean

CONFIG_DIR = Path(__file__).parent / "configs"
ALIASES = {"tiny": "clipcl-tiny"}
Precision = Literal["fp32", "bf16", "fp16"]

#: Architectures with OpenAI's weights among open_clip's pretrained tags (checked against
#: ``open_clip.list_pretrained_tags_by_model`` by tests/test_models.py).
OPENAI_ARCHS = frozenset(
    f"{base}{suffix}"
    for base in ("RN50", "RN50x4", "RN50x16", "RN50x64", "RN101")
    + ("ViT-B-16", "ViT-B-32", "ViT-L-14", "ViT-L-14-336")
    for suffix in ("", "-quickgelu")
)


class ModelConfig(BaseModel):
    """Which CLIP to build and from which weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str = Field("ViT-B-16", description="open_clip model name or project alias ('tiny').")
    pretrained: str | None = Field(
        None,
        description="Local checkpoint path, open_clip tag in the local cache, or None for random"
        " initialisation.",
    )


@functools.cache
def _shipped_archs() -> frozenset[str]:
    """Stems of open_clip's shipped model configs and of the project's configs."""
    names = {p.stem for p in CONFIG_DIR.glob("*.json")}
    spec = importlib.util.find_spec("open_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        names.update(p.stem for p in (Path(location) / "model_configs").glob("*.json"))
    return frozenset(names)


def known_archs() -> list[str]:
    """Every architecture name a chain may use (aliases excluded), sorted."""
    names = set(_shipped_archs())
    open_clip = sys.modules.get("open_clip")
    if open_clip is not None:  # configs added at run time (tests register tiny ones)
        names.update(open_clip.list_models())
    return sorted(names)


def resolve_arch(arch: str) -> str:
    """Map an alias to an open_clip name and check that open_clip knows it."""
    name = ALIASES.get(arch, arch)
    if name in _shipped_archs():
        return name
    known = known_archs()
    if name not in known:
        examples = ", ".join([*ALIASES, "ViT-B-16", "ViT-B-32", "ViT-L-14", "RN50"])
        raise ClipclError(
            f"unknown model '{arch}'{did_you_mean(arch, [*ALIASES, *known])}; allowed: "
            f"{examples} or any of the {len(known)} open_clip architectures "
            "(open_clip.list_models())"
        )
    return name


def default_pretrained(arch: str) -> str:
    """The weights an architecture gets when none are named: the packaged tiny CLIP for
    ``tiny``, OpenAI's for architectures that have them, else random initialisation."""
    name = resolve_arch(arch)
    if name == "clipcl-tiny":
        return "clipcl-tiny"
    return "openai" if name in OPENAI_ARCHS else "none"
