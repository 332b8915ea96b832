"""``lora``: low-rank adapters on CLIP's attention out-projections and MLPs, nothing else trains.

The baseline of the ZSCL-derived framework (METHODS.md §4): rank 8, alpha 16 on every
transformer block's ``attn.out_proj``, ``mlp.c_fc`` and ``mlp.c_proj`` in both towers
(``attn.in_proj`` adds the q/k/v projections). One set of adapters is trained continually
across all tasks; with ``merge_after_task`` the adapters are folded into the base weights after
each task and fresh ones (``B = 0``) start the next task. ``shared: true`` is the framework's
shared LoRA: one master A/B per (layer type, dimensions) used by every layer of that key
(``split_qkvo``: one per attention projection type), see :func:`clipcl.models.lora.share_lora`.
The layers and their arithmetic are in ``clipcl.models.lora``; the adapters live inside the
model, so checkpoints hold them and a resumed chain needs no method state.
"""

from __future__ import annotations

from clipcl.errors import ClipclError
from clipcl.methods.base import Method, TaskContext
from clipcl.methods.configs import (  # noqa: F401  (re-exported)
    DEFAULT_TARGETS,
    LoRAConfig,
    LoRATarget,
)
from clipcl.methods.registry import register_method
from clipcl.models import ClipModel
from clipcl.models.lora import (
    Adapter,
    add_lora,
    lora_modules,
    merge_lora,
    share_lora,
    unique_parameters,
)


def _tower(name: str) -> str:
    """Tower of a module named within ``ClipModel.clip`` (as ``named_tower_parameters`` does)."""
    return "image" if name.startswith("visual.") else "text"


@register_method
class LoRAMethod(Method):
    """Continually trained low-rank adapters; the pretrained weights stay frozen."""

    name = "lora"
    Config = LoRAConfig
    config: LoRAConfig

    def setup(self, model: ClipModel) -> None:
        super().setup(model)
        cfg = self.config
        towers = {"image", "text"} if cfg.towers == "both" else {cfg.towers}
        layers = {
            n: m for n, m in lora_modules(model.clip, cfg.targets).items() if _tower(n) in towers
        }
        for target in cfg.targets:
            if not any(n.endswith("." + target) for n in layers):
                raise ClipclError(
                    f"LoRA target '{target}' matches no layer of the {cfg.towers} tower(s) "
                    f"of model {model.arch}"
                )
        self.adapters: dict[str, Adapter] = add_lora(
            model.clip, layers, cfg.rank, cfg.alpha, cfg.dropout
        )
        if cfg.shared:
            share_lora(model.clip, self.adapters, cfg.split_qkvo)
        self._freeze_base()

    def _freeze_base(self) -> None:
        assert self.model is not None
        self.model.requires_grad_(False)
        for lora in self.adapters.values():
            lora.requires_grad_(True)

    def num_trainable(self) -> int:
        """Number of LoRA parameters: ``Σ r · (in + out)`` over the adapted layers (over the
        masters when shared)."""
        return sum(p.numel() for p in unique_parameters(self.adapters))

    def before_task(self, ctx: TaskContext) -> None:
        self._freeze_base()

    def after_task(self, ctx: TaskContext, loader) -> None:
        if self.config.merge_after_task:
            assert self.model is not None
            merge_lora(self.model.clip, self.adapters)
