"""``nsp2``: visual prompt tuning in the null space of the old tasks' attention (Lu et al., NeurIPS
2024, "Visual Prompt Tuning in Null Space for Continual Learning"), CLIP variant (METHODS.md §3).

M = 4 deep prompts in image blocks 0–3 (``clipcl.models.deep_prompts``) and ``logit_scale`` train;
the text tower is frozen and the classifier is the frozen CLIP's template ensemble. After each
task but the last, per prompted block, two uncentred covariances accumulate over the task's
training images (the paper's two consistency conditions); their null spaces constrain the
prompts' Adam update from task 1 on: ``ΔP ← [η B2 + (1−η) I] Δ_adam [η B1 + (1−η) I]``.

What the authors' code (``zugexiaodui/VPTinNSforCL@0d9c547``: ``train_eval.py``,
``utils/vit_builder.py``, ``utils/mod_adam.py``, ``train_*_clip.sh``) settles:

- **J1** rows are ``q_{h,n} W_{k,h}``: the image-token query of head h (after the in-projection,
  with its bias, before the 1/√dh scaling; CLS + patch tokens, prompt queries excluded) times that
  head's key weights (dh × D) → a D-vector, for every head and token. **J2** rows are the softmax
  probabilities of the image queries on the M prompt keys. Each batch of 100 images (their eval
  batch, ``stats_batch_size``) adds ``JᵀJ / rows`` (rows = B·H·N of that batch); batches and
  tasks are summed (``--null_interm_accum sum``). Statistics run in eval mode, without
  augmentation; they, their sums and their decomposition are fp32 as in the authors' code
  (``stats_dtype: float32``, the default; ``float64`` is the named option, and what clipcl did
  before issue 14 — on real-size statistics the two null spaces differ by 1–3 directions in
  about 1 % of spectra). C1 is computed as ``Σ_h W_{k,h}ᵀ (Q_hᵀ Q_h) W_{k,h}`` — the same
  matrix without materialising the (B·H·N, D) J1.
- **Null space**: singular vectors of C (symmetric PSD: ``eigh``); knee = argmax of the second
  difference of the curve, smoothed (Gaussian σ = 10) and trimmed by ``int(0.015·n)`` at each end
  only when n ≥ 128 — shorter curves (C2 is M × M; the tiny CLIP's C1 is 96 × 96) use the raw
  curve. The knee value and all after it form U0; ``B = U0U0ᵀ / ‖U0U0ᵀ‖_F``; η1 = η2 = 0.98.
  (On the tiny CLIP's raw 96-value C1 curve the knee sits at the top: 1–2 protected directions.)
  The engine's ``knee_index`` computes it as their code does (scipy's smoothing: radius 4σ,
  reflecting ends; the null space starts at the last value ≥ the knee value).
- **Update**: their ``ModAdam`` projects Adam's whole step ``−lr·m̂/(√v̂+ε)`` (L2 decay 5e-5 is
  added to the gradient inside Adam, so it is projected too); moments stay unprojected; only the
  prompts are projected (``logit_scale`` is not). Here: ``UpdateProjection`` around the step.
- **Loss**: plain CE (no label smoothing, temperature 1) of ``exp(logit_scale)·cos`` over the
  current task's classes + ``L_LN`` (weight 1, from task 1, against the previous task's prompts;
  per-token mean and biased std over channels, L1-averaged over tokens, summed over blocks). The
  code forces ``L_LN`` off without the null-space update.
- **Schedule**: Adam lr 1e-3, 10 "epochs" of the data repeated twice = 20 data epochs, ×0.1 after
  50 % and 80 %, no warm-up, batch 220, fp16 autocast (``train_defaults`` + the preset sweep).
- **Head refinement** (``--refine_head True``), after every task including the last and after the
  statistics: per class of the task, mean and ``torch.cov`` (unbiased) + 1e-4·I in float64 of the
  pre-projection CLS feature (after ``ln_post``) of the just-trained model; then 50 epochs, each
  drawing 256 fresh Gaussian samples per seen class, shuffled, batches of 256, SGD lr 1e-3,
  momentum 0.9, wd 1e-4 (constant), CE of ``exp(logit_scale)·cos(x W, text)`` over all seen
  classes' text features. Their head is timm's Linear 768→512 with a zero-initialised bias;
  open_clip's ``visual.proj`` has none, so only ``proj`` is refined here. Stored per class: mean
  and the Cholesky factor (float32; ViT-B/16 on CIFAR-100: ≈ 240 MB of method state).
- **Text**: the frozen CLIP's ensemble over the dataset's template list (their ``text_prompts``:
  CIFAR-100's 18 CLIP templates; ImageNet-R's 7, to which clipcl's list adds the CIL prompt).

``project: false`` is the "CLIP-Seq" baseline: the same prompts and ``logit_scale`` trained
sequentially, no statistics, no projection and no ``L_LN`` (as the authors' code without
``--use_null_space``). Head refinement follows ``refine_head`` on its own, so the default pair
isolates the null-space update; set ``refine_head: false`` as well for the paper's Seq row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from clipcl.data import Benchmark, Task
from clipcl.methods.base import Method, StepOutputs, TaskContext
from clipcl.methods.capture import attention_internals, capture, key_weights_per_head
from clipcl.methods.configs import (  # noqa: F401  (re-exported)
    NSP2_TRAIN_DEFAULTS,
    NSP2Config,
)
from clipcl.methods.projected import ProjectedParameters, statistics_pass, train_only
from clipcl.methods.projection import accumulate_covariance, null_space_knee, projector
from clipcl.methods.registry import register_method
from clipcl.models import ClipModel
from clipcl.models.deep_prompts import (
    BlockPrompt,
    add_deep_prompts,
    block_attention,
    image_blocks,
)

KNEE_MIN_POINTS = 128  # shorter singular-value curves are neither smoothed nor trimmed


def stats_torch_dtype(cfg: NSP2Config) -> torch.dtype:
    """``cfg.stats_dtype`` as a torch dtype."""
    return torch.float32 if cfg.stats_dtype == "float32" else torch.float64


def prompt_blocks(cfg: NSP2Config, depth: int) -> list[int]:
    """Prompted block indices: start..end, the end clamped to the tower's last block."""
    if cfg.prompt_start_block >= depth:
        raise ValueError(
            f"prompt_start_block {cfg.prompt_start_block} does not exist: the image tower has "
            f"{depth} blocks (0..{depth - 1})"
        )
    return list(range(cfg.prompt_start_block, min(cfg.prompt_end_block, depth - 1) + 1))


def update_projector(
    cov: torch.Tensor,
    eta: float,
    smooth_std: float,
    trim: float,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``η B + (1−η) I`` (float64) with ``B = U0U0ᵀ / ‖U0U0ᵀ‖_F``, U0 = null space of ``cov``
    found by an eigendecomposition in ``dtype``."""
    n = cov.shape[0]
    smooth = smooth_std if n >= KNEE_MIN_POINTS else 0.0
    u0 = null_space_knee(cov, smooth, trim, dtype)  # (n, k0)
    b = projector(u0)  # (n, n)
    b = b / b.norm()
    return eta * b + (1 - eta) * torch.eye(n, dtype=b.dtype, device=b.device)


def prompt_statistics(
    attn: nn.MultiheadAttention,
    prompt: BlockPrompt,
    x: torch.Tensor,
    batch_first: bool = True,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's ``J1ᵀJ1 / rows`` (D, D) and ``J2ᵀJ2 / rows`` (M, M) of a prompted attention,
    computed in ``dtype``.

    Args:
        x: the attention's query input, ``ln_1`` of the image tokens (B, N, D) (batch-first).
    """
    kv = prompt.extend(x, batch_first)  # keys/values: image tokens, then ln_1(P)
    inner = attention_internals(attn, x, kv, batch_first=batch_first)
    q = inner.q.to(dtype)  # (B, H, N, dh)
    b, h, n, _ = q.shape
    w = key_weights_per_head(attn).detach().to(dtype)  # (H, dh, D)
    gram = torch.einsum("bhnd,bhne->hde", q, q)  # (H, dh, dh): Q_hᵀ Q_h
    c1 = torch.einsum("hdD,hdE->DE", w, gram @ w) / (b * h * n)  # Σ_h W_hᵀ Q_hᵀ Q_h W_h
    c2 = accumulate_covariance(None, inner.probs[..., n:], mean=True, dtype=dtype)  # (M, M)
    return c1, c2


def ln_loss(
    prompts: Mapping[int, torch.Tensor], previous: Mapping[int, torch.Tensor]
) -> torch.Tensor:
    """``L_LN = Σ_blocks mean_m |µ(P_m) − µ(P'_m)| + mean_m |σ(P_m) − σ(P'_m)|`` (per-token mean
    and biased std over channels; NSP²'s LayerNorm-consistency loss)."""
    total = torch.zeros(())
    for i, p in prompts.items():
        old = previous[i].to(p.device)
        total = total.to(p.device) + F.l1_loss(p.mean(-1), old.mean(-1))
        total = total + F.l1_loss(p.std(-1, unbiased=False), old.std(-1, unbiased=False))
    return total


def pre_projection_features(visual: Any, pixels: torch.Tensor) -> torch.Tensor:
    """The pooled CLS feature of an open_clip ViT before ``proj`` (B, width)."""
    x = visual._embeds(pixels)  # (B, N, width)
    x = visual.transformer(x)
    pooled, _ = visual._pool(x)  # (B, width), after ln_post
    return pooled


def dataset_templates(benchmark: Benchmark, task: Task) -> tuple[str, ...]:
    """The template list of the benchmark's one real dataset, else the task's templates."""
    from clipcl.data.real import get_dataset
    from clipcl.data.real.benchmarks import BENCHMARK_DATASETS

    datasets = BENCHMARK_DATASETS.get(benchmark.name, ())
    if len(datasets) != 1:
        return task.templates
    return tuple(get_dataset(datasets[0]).templates) or task.templates


@register_method
class NSP2(Method):
    """Deep visual prompts whose updates keep the old tasks' attention (nearly) unchanged."""

    name = "nsp2"
    Config = NSP2Config
    config: NSP2Config
    train_defaults: ClassVar[dict[str, Any]] = NSP2_TRAIN_DEFAULTS

    def __init__(self, config: NSP2Config) -> None:
        super().__init__(config)
        self.prompts: dict[int, BlockPrompt] = {}
        self.cov1: dict[int, torch.Tensor] = {}  # (D, D) per block, summed over tasks
        self.cov2: dict[int, torch.Tensor] = {}  # (M, M)
        self.proj1: dict[int, torch.Tensor] = {}  # η B1 + (1−η) I of the current task
        self.proj2: dict[int, torch.Tensor] = {}
        self.previous: dict[int, torch.Tensor] = {}  # prompts at the end of the previous task
        self.class_mean: torch.Tensor | None = None  # (C, W) pre-projection class means
        self.class_tril: torch.Tensor | None = None  # (C, W, W) Cholesky of cov + eps I
        self._update: ProjectedParameters | None = None
        self._benchmark: Benchmark | None = None
        self._text: dict[str, torch.Tensor] = {}

    # ----- model -----
    def check_model(self, model: ClipModel) -> None:
        image_blocks(model.clip.visual)

    def setup(self, model: ClipModel) -> None:
        super().setup(model)
        cfg = self.config
        depth = len(image_blocks(model.clip.visual))
        blocks = prompt_blocks(cfg, depth)
        self.prompts = add_deep_prompts(
            model.clip.visual, blocks, cfg.prompt_length, cfg.prompt_init_range
        )
        self._freeze()

    def _freeze(self) -> None:
        assert self.model is not None
        trained = [prompt.tokens for prompt in self.prompts.values()]
        if self.config.train_logit_scale:
            trained.append(self.model.clip.logit_scale)
        train_only(self.model, trained)

    def before_task(self, ctx: TaskContext) -> None:
        cfg = self.config
        self._freeze()
        self._benchmark = ctx.benchmark
        self.previous = {}
        self.proj1, self.proj2, self._update = {}, {}, None
        if not cfg.project or ctx.index == 0:
            return
        self.previous = {i: p.tokens.detach().clone() for i, p in self.prompts.items()}
        if self.cov1:
            for i, prompt in self.prompts.items():  # projectors live beside their prompt
                dev = prompt.tokens.device
                dtype = stats_torch_dtype(cfg)
                self.proj1[i] = update_projector(
                    self.cov1[i], cfg.eta1, cfg.knee_smooth_std, cfg.knee_trim, dtype
                ).to(dev)
                self.proj2[i] = update_projector(
                    self.cov2[i], cfg.eta2, cfg.knee_smooth_std, cfg.knee_trim, dtype
                ).to(dev)
            self._update = ProjectedParameters(
                ((str(i), p.tokens) for i, p in self.prompts.items()), self._project, "update"
            )

    # ----- training hooks -----
    def classifier(self, task: Task, *, training: bool) -> torch.Tensor:
        """The frozen CLIP's template-ensemble class embeddings (C, E), cached per task."""
        if task.name not in self._text:
            assert self.model is not None
            templates = task.templates
            if self.config.text_templates == "dataset" and self._benchmark is not None:
                templates = dataset_templates(self._benchmark, task)
            with torch.no_grad(), torch.autocast(self.model.device.type, enabled=False):
                emb = self.model.class_embeddings(task.class_names, templates)  # (C, E)
            self._text[task.name] = emb
        return self._text[task.name]

    def extra_loss(
        self, batch: tuple[torch.Tensor, torch.Tensor], outputs: StepOutputs
    ) -> torch.Tensor | None:
        if not self.previous or self.config.ln_loss_weight == 0:
            return None
        current = {i: p.tokens for i, p in self.prompts.items()}
        return self.config.ln_loss_weight * ln_loss(current, self.previous)

    def extra_loss_terms(
        self, batch: tuple[torch.Tensor, torch.Tensor], outputs: StepOutputs
    ) -> dict[str, torch.Tensor]:
        """The weighted L_LN, named ``ln``."""
        loss = self.extra_loss(batch, outputs)
        return {} if loss is None else {"ln": loss}

    def after_backward(self) -> None:
        if self._update is not None:
            self._update.after_backward()

    def after_step(self) -> None:
        if self._update is not None:
            self._update.after_step()

    def _project(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        """``[η B2 + (1−η) I] Δ [η B1 + (1−η) I]`` for one block's update Δ (M, D)."""
        i = int(name)
        p2 = self.proj2[i]  # (M, M), on the prompt's device
        p1 = self.proj1[i]  # (D, D)
        return p2 @ delta.to(torch.float64) @ p1  # (M, D)

    # ----- after a task -----
    def after_task(self, ctx: TaskContext, loader: DataLoader) -> None:
        cfg = self.config
        stats = cfg.project and bool(self.prompts) and ctx.index < len(ctx.benchmark.tasks) - 1
        if stats or cfg.refine_head:
            feats, labels = self._task_pass(ctx.task, stats=stats, features=cfg.refine_head)
            if cfg.refine_head:
                self._add_class_statistics(feats, labels, ctx.task.num_classes)
                self._refine_head(ctx)
        self._update = None

    def _task_pass(
        self, task: Task, *, stats: bool, features: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One eval-mode pass over the task's training images: accumulate C1/C2 (``stats``) and
        return the pre-projection CLS features (n, W) with their labels (``features``)."""
        assert self.model is not None
        model, visual = self.model, self.model.clip.visual
        batch_first = visual.transformer.batch_first
        blocks = image_blocks(visual)
        attns = {str(i): block_attention(blocks[i]) for i in self.prompts}

        def accumulate(name: str, x: torch.Tensor) -> None:
            i = int(name)
            x = x if batch_first else x.transpose(0, 1)  # (B, N, D)
            c1, c2 = prompt_statistics(
                attns[name], self.prompts[i], x, dtype=stats_torch_dtype(self.config)
            )
            self.cov1[i] = c1 if i not in self.cov1 else self.cov1[i] + c1.to(self.cov1[i])
            self.cov2[i] = c2 if i not in self.cov2 else self.cov2[i] + c2.to(self.cov2[i])

        loader = DataLoader(task.train, batch_size=self.config.stats_batch_size, shuffle=False)
        hooks = capture(attns, accumulate) if stats else contextlib.nullcontext()
        feats, labels = [], []
        with statistics_pass(model), hooks:
            for images, y in loader:
                pixels = model.preprocess(images)  # (B, 3, S, S)
                if features:
                    feats.append(pre_projection_features(visual, pixels).float().cpu())
                    labels.append(y)
                else:
                    visual(pixels)
        if not features:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        return torch.cat(feats), torch.cat(labels)

    def _add_class_statistics(
        self, feats: torch.Tensor, labels: torch.Tensor, num_classes: int
    ) -> None:
        """Append per-class mean (C, W) and Cholesky factor of cov + eps I (C, W, W)."""
        means, trils = [], []
        eye = torch.eye(feats.shape[1], dtype=torch.float64)
        for c in range(num_classes):
            f = feats[labels == c].to(torch.float64)  # (n_c, W)
            if f.shape[0] == 0:
                raise ValueError(f"class {c} has no training images: cannot refine the head")
            cov = torch.cov(f.t()) if f.shape[0] > 1 else torch.zeros_like(eye)  # (W, W)
            means.append(f.mean(0))
            trils.append(torch.linalg.cholesky(cov + self.config.refine_cov_eps * eye))
        mean, tril = torch.stack(means).float(), torch.stack(trils).float()
        if self.class_mean is None or self.class_tril is None:
            self.class_mean, self.class_tril = mean, tril
        else:
            self.class_mean = torch.cat([self.class_mean, mean])
            self.class_tril = torch.cat([self.class_tril, tril])

    def _refine_head(self, ctx: TaskContext) -> None:
        """Retrain ``visual.proj`` on Gaussian pseudo-features of every seen class."""
        assert self.model is not None and self.class_mean is not None
        assert self.class_tril is not None
        cfg, model = self.config, self.model
        dev = model.device
        proj: nn.Parameter = model.clip.visual.proj  # (W, E)
        text = torch.cat(
            [self.classifier(t, training=False) for t in ctx.benchmark.tasks[: ctx.index + 1]]
        )
        mean = self.class_mean.to(dev, proj.dtype)  # (C, W)
        tril = self.class_tril.to(dev, proj.dtype)  # (C, W, W)
        n_cls, s = mean.shape[0], cfg.refine_samples_per_class
        if text.shape[0] != n_cls:
            raise RuntimeError(f"{n_cls} class statistics for {text.shape[0]} seen classes")
        targets = torch.arange(n_cls, device=dev).repeat_interleave(s)  # (C·S,)
        scale = model.logit_scale().detach()
        gen = ctx.generator("refine", device=dev)  # pseudo-features and their order
        proj.requires_grad_(True)
        opt = torch.optim.SGD(
            [proj],
            lr=cfg.refine_lr,
            momentum=cfg.refine_momentum,
            weight_decay=cfg.refine_weight_decay,
        )
        with torch.enable_grad():
            for _ in range(cfg.refine_epochs):
                shape = (n_cls, s, mean.shape[1])
                z = torch.randn(shape, generator=gen, device=dev, dtype=mean.dtype)  # (C, S, W)
                x = (mean[:, None] + z @ tril.transpose(1, 2)).reshape(n_cls * s, -1)  # (C·S, W)
                order = torch.randperm(n_cls * s, generator=gen, device=dev)
                for idx in order.split(cfg.refine_batch_size):
                    logits = scale * F.normalize(x[idx] @ proj, dim=-1) @ text.t()  # (b, C)
                    loss = F.cross_entropy(logits, targets[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        proj.requires_grad_(False)
        proj.grad = None

    # ----- resume -----
    def state_dict(self) -> dict[str, Any]:
        return {
            "cov1": {str(i): c for i, c in self.cov1.items()},
            "cov2": {str(i): c for i, c in self.cov2.items()},
            "class_mean": self.class_mean,
            "class_tril": self.class_tril,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cov1 = {int(i): c for i, c in state.get("cov1", {}).items()}
        self.cov2 = {int(i): c for i, c in state.get("cov2", {}).items()}
        self.class_mean = state.get("class_mean")
        self.class_tril = state.get("class_tril")
