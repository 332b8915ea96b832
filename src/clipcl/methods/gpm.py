"""``gpm``: Gradient Projection Memory (Saha et al., ICLR 2021) on the linear layers of CLIP's
image tower.

Protected layers (``layers`` × ``blocks`` of ``visual.transformer.resblocks``), each a weight
``W (out, d)`` acting on inputs ``x ∈ R^d``:

- ``attn.in_proj``: the packed q/k/v weight (3D, D); input = ``ln_1`` output, read by a hook on
  the block's ``attn`` (its query argument);
- ``attn.out_proj``: input = the attention context (heads concatenated), recomputed from that
  same hook with ``attention_internals`` (it never crosses a module boundary);
- ``mlp.c_fc`` (input = ``ln_2`` output) and ``mlp.c_proj`` (input = GELU output).

Everything else is frozen: text tower, LayerNorms, embeddings, ``logit_scale`` and the visual
``proj`` (the 768→512 map into the text-aligned space; GPM constrains representation layers
against a fixed classifier, and CLIP's class prompts play that role here).

After each task (METHODS.md §3; ``sahagobinda/GPM@1a238ec``): forward ``samples`` random
training images in eval mode, accumulate each layer's input covariance ``C = Σ xxᵀ`` over
images and all tokens, and grow its basis ``M`` with ``gpm_basis`` at ``ε_t = threshold +
t · threshold_step`` (the paper's 0.97 + 0.003 t on 10-split CIFAR-100). After task 0 the
authors' code keeps the directions whose cumulative energy stays *below* ε, leaving out the one
that crosses it, while later tasks include it (``gpm_basis``); so even with ε → 1 the first
basis misses one direction of the old inputs. ``first_task_rule: paper`` counts task 0 like the
later tasks (the smallest k whose energy reaches ε, the paper's Eq. 5). From task 1 on the
weights' gradients are projected in ``after_backward`` (``G ← G − G M Mᵀ``) and the
layers' biases are frozen (GPM zeroes their gradients after task 0). ``project_update: true``
projects the optimizer's update instead (the corrected variant for Adam(W), where a projected
gradient is rescaled per coordinate and decayed, so the step leaves the allowed subspace);
with plain SGD and no weight decay both are exact. ``project: false`` trains the same layers
with no projection and no bias freezing (the "-Seq" baseline).

``samples`` = 125 images, GPM's count for its fully connected layers; its conv layers use every
patch position of fewer images, and tokens play that role here: 125 × 197 tokens of ViT-B/16
give 24 625 rows, well above the widest input (3072, ``mlp.c_proj``). ``train_defaults`` are
the paper's optimizer and loss: SGD, lr 0.01, no momentum, no weight decay, plain cross-entropy.

Bases are method state (``state_dict``), stored in float32 on the CPU; the linear algebra runs
in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from clipcl.errors import ClipclError
from clipcl.methods.base import Method, TaskContext
from clipcl.methods.capture import attention_internals, capture
from clipcl.methods.configs import (  # noqa: F401  (re-exported)
    ALL_LAYERS,
    GPM_TRAIN_DEFAULTS,
    GPMConfig,
    LayerKind,
)
from clipcl.methods.projected import ProjectedParameters, statistics_pass, train_only
from clipcl.methods.projection import ComplementProjection, accumulate_covariance, gpm_basis
from clipcl.methods.registry import register_method
from clipcl.models import ClipModel


@dataclass(frozen=True)
class ProtectedLayer:
    """One protected linear map ``y = W x + b`` and where its input ``x`` is read."""

    weight: nn.Parameter  # (out, d)
    bias: nn.Parameter | None
    hook: str  # key of the module whose forward input is captured
    source: Literal["input", "context"]  # the hooked input itself, or the attention context


def protected_layers(
    model: ClipModel, kinds: tuple[str, ...], blocks: tuple[int, ...] | None
) -> tuple[dict[str, ProtectedLayer], dict[str, nn.Module]]:
    """The chosen layers of the image tower by weight name (within ``model.clip``), and the
    modules to hook by key.

    Raises:
        ClipclError: when the model has no open_clip ViT image tower or a block is missing.
    """
    try:
        resblocks = model.clip.visual.transformer.resblocks
    except AttributeError:
        raise ClipclError(f"gpm needs a ViT image tower; model {model.arch} has none") from None
    chosen = range(len(resblocks)) if blocks is None else blocks
    if max(chosen, default=-1) >= len(resblocks):
        raise ClipclError(
            f"gpm: blocks {list(chosen)} out of range: model {model.arch} has "
            f"{len(resblocks)} image blocks (0..{len(resblocks) - 1})"
        )
    layers: dict[str, ProtectedLayer] = {}
    hooks: dict[str, nn.Module] = {}
    for b in chosen:
        block = resblocks[b]
        prefix = f"visual.transformer.resblocks.{b}"
        attn = block.attn
        for kind in kinds:
            if kind == "attn.in_proj":
                hooks[f"{prefix}.attn"] = attn
                layer = ProtectedLayer(
                    attn.in_proj_weight, attn.in_proj_bias, f"{prefix}.attn", "input"
                )
                layers[f"{prefix}.attn.in_proj_weight"] = layer
            elif kind == "attn.out_proj":
                hooks[f"{prefix}.attn"] = attn
                out = attn.out_proj
                layer = ProtectedLayer(out.weight, out.bias, f"{prefix}.attn", "context")
                layers[f"{prefix}.attn.out_proj.weight"] = layer
            else:
                module = block.get_submodule(kind)
                hooks[f"{prefix}.{kind}"] = module
                layer = ProtectedLayer(module.weight, module.bias, f"{prefix}.{kind}", "input")
                layers[f"{prefix}.{kind}.weight"] = layer
    return layers, hooks


def input_covariances(
    model: ClipModel,
    layers: dict[str, ProtectedLayer],
    hooks: dict[str, nn.Module],
    loader: DataLoader,
) -> dict[str, torch.Tensor]:
    """``C = Σ xxᵀ`` (d, d) float64 of each layer's inputs over all images and tokens of
    ``loader`` (uint8 images, labels), the model in eval mode."""
    covs: dict[str, torch.Tensor | None] = dict.fromkeys(layers)
    by_hook: dict[str, list[tuple[str, str]]] = {}
    for name, layer in layers.items():
        by_hook.setdefault(layer.hook, []).append((name, layer.source))

    def collect(hook: str, x: torch.Tensor) -> None:
        context = None
        for name, source in by_hook[hook]:
            if source == "context":
                if context is None:
                    attn = hooks[hook]
                    assert isinstance(attn, nn.MultiheadAttention)
                    context = attention_internals(attn, x, batch_first=attn.batch_first).context
                value = context  # (B, N, D)
            else:
                value = x  # (B, N, d) or (N, B, d): every row is one token's input
            covs[name] = accumulate_covariance(covs[name], value)

    with statistics_pass(model), capture(hooks, collect):
        for images, _ in loader:
            model.encode_image(model.preprocess(images))
    missing = [n for n, c in covs.items() if c is None]
    if missing:
        raise RuntimeError(f"gpm: no inputs were captured for {missing}")
    return {n: c for n, c in covs.items() if c is not None}


def representation_subset(dataset: Dataset, samples: int, seed: int) -> Subset:
    """``samples`` random items of ``dataset`` (all of them when it is smaller), seeded."""
    n = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, sorted(order[: min(samples, n)].tolist()))


@register_method
class GPM(Method):
    """Gradient Projection Memory on the image tower's linear layers (see the module doc)."""

    name = "gpm"
    Config = GPMConfig
    config: GPMConfig
    train_defaults = GPM_TRAIN_DEFAULTS

    def __init__(self, config: GPMConfig) -> None:
        super().__init__(config)
        self.layers: dict[str, ProtectedLayer] = {}
        self.hooks: dict[str, nn.Module] = {}
        self.bases: dict[str, torch.Tensor] = {}  # weight name → (d, k) float32 on the CPU
        #: this task's projections (I − M Mᵀ), in the weights' dtype on the device
        self._active: dict[str, ComplementProjection] = {}
        self._projection: ProjectedParameters | None = None

    # ----- hooks -----
    def check_model(self, model: ClipModel) -> None:
        protected_layers(model, self.config.layers, self.config.blocks)

    def setup(self, model: ClipModel) -> None:
        super().setup(model)
        self.layers, self.hooks = protected_layers(model, self.config.layers, self.config.blocks)
        self._set_trainable(task_index=0)

    def before_task(self, ctx: TaskContext) -> None:
        self._set_trainable(ctx.index)
        model = self.model
        assert model is not None
        self._active = {}
        if self.config.project:
            self._active = {
                name: ComplementProjection(
                    basis, dtype=self.layers[name].weight.dtype, device=model.device
                )
                for name, basis in self.bases.items()
                if basis.shape[1] > 0
            }
        self._projection = None
        if self._active:
            self._projection = ProjectedParameters(
                ((name, self.layers[name].weight) for name in self._active),
                lambda name, g: self._active[name](g),  # G − G M Mᵀ (gradient or update)
                "update" if self.config.project_update else "gradient",
            )

    def after_backward(self) -> None:
        if self._projection is not None:
            self._projection.after_backward()

    def after_step(self) -> None:
        if self._projection is not None:
            self._projection.after_step()

    def after_task(self, ctx: TaskContext, loader: DataLoader) -> None:
        if not self.config.project:
            return
        model = self.model
        assert model is not None
        cfg = self.config
        subset = representation_subset(ctx.task.train, cfg.samples, ctx.stream_seed("samples"))
        batches = DataLoader(
            subset,
            batch_size=loader.batch_size or 64,
            shuffle=False,
            num_workers=loader.num_workers,
        )
        covs = input_covariances(model, self.layers, self.hooks, batches)
        eps = min(1.0, cfg.threshold + ctx.index * cfg.threshold_step)
        for name, cov in covs.items():
            old = self.bases.get(name)
            if old is None and cfg.first_task_rule == "paper":
                old = cov.new_zeros(cov.shape[0], 0)  # counts like a later task: +1 direction
            basis = gpm_basis(cov, None if old is None else old.to(cov.device), eps)
            self.bases[name] = basis.to("cpu", torch.float32)
        self._active, self._projection = {}, None

    def state_dict(self) -> dict[str, Any]:
        return {"bases": {name: basis.clone() for name, basis in self.bases.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        bases = dict(state.get("bases", {}))
        unknown = sorted(set(bases) - set(self.layers))
        if unknown:
            raise ValueError(f"gpm state: bases for layers that are not protected: {unknown}")
        for name, basis in bases.items():
            d = self.layers[name].weight.shape[1]
            if basis.ndim != 2 or basis.shape[0] != d:
                raise ValueError(f"gpm state: basis of {name} has shape {tuple(basis.shape)}")
        self.bases = {n: torch.as_tensor(b).to("cpu", torch.float32) for n, b in bases.items()}

    # ----- pieces -----
    def _set_trainable(self, task_index: int) -> None:
        """Only the protected weights (and, until frozen, their biases) train."""
        model = self.model
        assert model is not None
        cfg = self.config
        freeze = cfg.project if cfg.freeze_biases is None else cfg.freeze_biases
        trained = [layer.weight for layer in self.layers.values()]
        if not (freeze and task_index > 0):
            trained += [layer.bias for layer in self.layers.values() if layer.bias is not None]
        train_only(model, trained)

    def basis_sizes(self) -> dict[str, tuple[int, int]]:
        """(k, d) per protected layer: directions kept out of d."""
        return {name: (int(b.shape[1]), int(b.shape[0])) for name, b in self.bases.items()}
