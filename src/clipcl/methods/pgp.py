"""``pgp``: Prompt Gradient Projection (Qiao et al., ICLR 2024), CLIP variant (METHODS.md §3).

Trains one shared shallow image prompt (``L_p`` tokens after CLS) and, per task, a CoOp text
context (16 vectors; only the current task's trains); everything else is frozen. The modules are
in ``clipcl.models.prompt_tuning``. The classifier is the CoOp class embeddings: in training the
current task's classes under its context, in evaluation each seen task's classes under that
task's context (a task without a context yet — TIL evaluation of future tasks — falls back to
the default template embeddings).

After task t (every task, as the code does) a basis ``F`` (W × k) of "protected" directions of
the prompt's token space grows, and on tasks ≥ 1 the prompt gradient is projected,
``G_P ← G_P − G_P F Fᵀ`` (paper Eq. 11), in ``after_backward``. The CoOp contexts are **not**
projected: the authors' ``clip-pgp/methods/tprompt.py`` projects only ``image_prompt_pool``.

What the authors' code (``JingyangQiao/prompt-gradient-projection@c566b81``, ``clip-pgp``)
computes for ``F`` — re-implemented here from reading it:

1. *Input tokens*: the first 24 batches of 32 of a fresh pass over the (shuffled, augmented)
   training loader = 768 images (here: the first W images of a fresh pass over the task's
   training loader). For each, the image tower's token sequence after the CLS token and the
   positional embedding, before the prompt is inserted and before ``ln_pre`` (``act['rep']``,
   (197, 768)), flattened to one row of 197·768 values → X (768 images × 151 296).
2. *PCA of the tokens*: ``sklearn.PCA(5)`` on X (rows centred over the images) → the scores
   ``U₅Σ₅`` (768 × 5): one row per **image**.
3. *PCA of the prompt*: the prompt parameter (L_p, 768) transposed to (768, L_p), i.e. the 768
   embedding dimensions as samples and the L_p tokens as features, ``PCA(5)`` → scores (768 × 5):
   one row per **embedding dimension**.
4. ``R = scores_images + scores_prompt`` element-wise. This only type-checks because 768
   images = width 768 of ViT-B/16; row i mixes image i with dimension i, so the image half of
   ``F`` is not a subspace of the token space. With width W we keep that arithmetic by taking
   the first W training images (fewer images: the missing rows are 0).
5. GPM memory update (``utils/memory.update_memory``) with ε = 0.90 on the activation matrix
   ``M = R Rᵀ`` (W × W) — its singular values are ``σ_R²``, so the energy ratio counts ``σ_R⁴``.
   ``R`` has rank ≤ 5, hence ≤ 5 new columns per task. We call the engine's ``gpm_basis`` with
   the covariance of M (``M Mᵀ``), which reproduces that rule exactly (and, like GPM's code,
   an empty basis left by task 0 takes the update branch, which keeps ≥ 1 column).

PCA sign convention (it matters for the element-wise sum): scikit-learn 1.1's randomized PCA
(the authors' environment) flips each component so that the largest-magnitude entry of its
score column is positive; we do the same. The original's SGD adds its L2 weight decay *after*
the gradient projection, so the step still moves the prompt along ``F`` by ``lr·λ·P F``;
``project_update: true`` (corrected variant) also projects the whole update after the step.
``project: false`` is the prompt-Seq baseline (same modules, no projection).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.utils.data import DataLoader

from clipcl.data import Task
from clipcl.errors import ClipclError
from clipcl.methods.base import Method, TaskContext
from clipcl.methods.capture import capture
from clipcl.methods.configs import (  # noqa: F401  (re-exported)
    PGP_TRAIN_DEFAULTS,
    PGPConfig,
)
from clipcl.methods.projected import Mode, ProjectedParameters, statistics_pass, train_only
from clipcl.methods.projection import accumulate_covariance, eigh_desc, gpm_basis, remove_component
from clipcl.methods.registry import register_method
from clipcl.models import ClipModel
from clipcl.models.prompt_tuning import (
    ImagePrompt,
    Scaffold,
    TaskContexts,
    add_image_prompt,
    add_text_contexts,
    build_scaffold,
    context_key,
    encode_with_context,
    phrase_context,
    random_context,
    require_vit_clip,
)

CHUNK = 1 << 14  # feature columns per block when forming the images' Gram matrix


def pca_scores(x: torch.Tensor, k: int) -> torch.Tensor:
    """PCA scores (n, k) of the rows of ``x`` (n, f): ``(x − mean) V_k = U_k Σ_k``.

    Signs as scikit-learn 1.1 (``svd_flip``, u-based): each column's largest-|·| entry is
    positive. Columns beyond the rank of the centred data are 0 (sklearn would refuse).
    """
    n, f = x.shape
    mean = x.mean(dim=0, keepdim=True, dtype=torch.float64)  # (1, f)
    if f <= n:  # covariance of the features (f, f) → V
        xc = x.to(torch.float64) - mean  # (n, f)
        _, v = eigh_desc(accumulate_covariance(None, xc))
        scores = xc @ v[:, :k]  # (n, ≤k)
    else:  # Gram matrix of the centred samples (n, n), summed over feature blocks → U, σ
        gram = None
        for j in range(0, f, CHUNK):
            block = x[:, j : j + CHUNK].to(torch.float64) - mean[:, j : j + CHUNK]  # (n, c)
            gram = accumulate_covariance(gram, block.t())
        assert gram is not None
        sv, u = eigh_desc(gram)
        scores = u[:, :k] * sv[:k].sqrt()  # (n, ≤k)
    out = scores.new_zeros(n, k)
    out[:, : scores.shape[1]] = scores
    idx = out.abs().argmax(dim=0)  # (k,)
    signs = torch.sign(out[idx, torch.arange(k, device=out.device)])
    return out * torch.where(signs == 0, torch.ones_like(signs), signs)  # (n, k)


def grow_basis(
    r: torch.Tensor, basis: torch.Tensor | None, threshold: float, max_new: int
) -> torch.Tensor:
    """PGP's memory update (step 5): GPM on the activation matrix ``M = R Rᵀ`` (W × W).

    Args:
        r: the task's (W, k) matrix ``R``.
        basis: (W, j) orthonormal basis so far; None before the first update.
        threshold: ε; energies are ``σ_M² = σ_R⁴``.
        max_new: cap on new columns (``R`` has rank ≤ k, so the code never adds more).

    Returns:
        (W, j') float64 orthonormal basis, old columns first.
    """
    m = r @ r.t()  # (W, W) the code's "representation"
    cov = accumulate_covariance(None, m)  # M Mᵀ (M symmetric): eigenvalues σ_R⁴
    if basis is not None and basis.shape[1] == 0 and float(cov.trace()) > 0:
        # An empty basis after task 0: GPM's update branch (captured energy 0) keeps one column
        # more than the task-0 rule; the engine's gpm_basis treats an empty basis as task 0.
        first = gpm_basis(cov, None, threshold).shape[1]
        _, u = eigh_desc(cov)
        return u[:, : min(first + 1, max_new)].contiguous()
    return gpm_basis(cov, basis, threshold, max_new=max_new)


@register_method
class PGP(Method):
    """Shared image prompt + per-task CoOp contexts; the prompt's gradient avoids span F."""

    name = "pgp"
    Config = PGPConfig
    config: PGPConfig
    #: The authors' CIFAR-100 config: SGD momentum 0.9, lr 1e-3 on task 0 then 1e-2, weight
    #: decay 5e-4 on task 0 (their init_weight_decay) then 2e-4, plain CE, per-epoch cosine
    #: without warm-up.
    train_defaults: ClassVar[dict[str, Any]] = PGP_TRAIN_DEFAULTS

    def __init__(self, config: PGPConfig) -> None:
        super().__init__(config)
        self.basis: torch.Tensor | None = None  # (W, k) float64; None before task 0 ends
        self._scaffolds: dict[str, Scaffold] = {}
        #: this task's prompt projections: the gradient (Eq. 11), then the update (corrected)
        self._projections: list[ProjectedParameters] = []

    def check_model(self, model: ClipModel) -> None:
        require_vit_clip(model.clip)

    def setup(self, model: ClipModel) -> None:
        super().setup(model)
        self.prompt: ImagePrompt = add_image_prompt(model.clip, self.config.prompt_length)
        self.contexts: TaskContexts = add_text_contexts(model.clip)
        train_only(model, [])

    # ----- modules -----
    def _init_context(self, ctx: TaskContext) -> torch.Tensor:
        assert self.model is not None
        init, task = self.config.ctx_init, ctx.task
        if init == "random":
            width, gen = self.contexts.width, ctx.generator("context")
            return random_context(self.config.n_ctx, width, self.model.device, gen)
        if init == "template":
            template = task.templates[0]
            init = template.split("{}")[0].strip()
            if not init:
                raise ClipclError(
                    f"pgp ctx_init 'template': task {task.name}'s template {template!r} has no "
                    "words before {}"
                )
        return phrase_context(self.model, init)

    def before_task(self, ctx: TaskContext) -> None:
        assert self.model is not None
        key = context_key(ctx.task.name)
        current = self.contexts.get(key)
        if current is None:
            current = self.contexts.add(key, self._init_context(ctx))
        train_only(self.model, [self.prompt.prompt, current])
        self._projections = []
        if self._protects():
            basis = self.basis
            assert basis is not None
            modes: tuple[Mode, ...] = (
                ("gradient", "update") if self.config.project_update else ("gradient",)
            )
            self._projections = [
                ProjectedParameters(
                    [("prompt", self.prompt.prompt)],
                    lambda _, g: remove_component(g, basis, side="right"),  # (L_p, W)
                    mode,
                )
                for mode in modes
            ]

    def classifier(self, task: Task, *, training: bool) -> torch.Tensor | None:
        assert self.model is not None
        ctx = self.contexts.get(context_key(task.name))
        if ctx is None:
            return None
        scaffold = self._scaffolds.get(task.name)
        if scaffold is None or scaffold.tokens.device != self.model.device:
            scaffold = build_scaffold(self.model, task.class_names, ctx.shape[0])
            self._scaffolds[task.name] = scaffold
        return encode_with_context(self.model, ctx, scaffold)  # (C, D)

    # ----- projection -----
    def _protects(self) -> bool:
        return self.config.project and self.basis is not None and self.basis.shape[1] > 0

    def after_backward(self) -> None:
        for projection in self._projections:
            projection.after_backward()

    def after_step(self) -> None:
        for projection in self._projections:
            projection.after_step()

    def _token_rows(self, loader: DataLoader, n: int) -> torch.Tensor:
        """Flattened input tokens (≤ n, (1 + N)·W) of the first n training images (step 1); runs
        in a ``statistics_pass``."""
        assert self.model is not None
        visual = self.model.clip.visual
        rows: list[torch.Tensor] = []
        got = 0

        def keep(_: str, x: torch.Tensor) -> None:
            rows.append(x.reshape(x.shape[0], -1).float())  # (B, (1 + N)·W)

        with capture({"tokens": visual.patch_dropout}, keep, kind="output"):
            for images, _ in loader:
                take = min(n - got, images.shape[0])
                self.model.encode_image(self.model.preprocess(images[:take]))
                got += take
                if got >= n:
                    break
        return torch.cat(rows)

    def _task_matrix(self, loader: DataLoader) -> torch.Tensor:
        """``R = PCA_k(image tokens) + PCA_k(prompt)`` (W, k), steps 1–4 of the docstring."""
        assert self.model is not None
        width, k = self.prompt.prompt.shape[1], self.config.n_components
        with statistics_pass(self.model):
            tokens = self._token_rows(loader, width)  # (n ≤ W, (1 + N)·W)
        images = tokens.new_zeros(width, k, dtype=torch.float64)
        images[: tokens.shape[0]] = pca_scores(tokens, k)  # (W, k): rows = images
        prompt = pca_scores(self.prompt.prompt.detach().t(), k)  # (W, k): rows = dimensions
        return images + prompt.to(images.device)

    def after_task(self, ctx: TaskContext, loader: DataLoader) -> None:
        if not self.config.project:
            return
        r = self._task_matrix(loader)  # (W, k)
        basis = grow_basis(r, self.basis, self.config.threshold, self.config.n_components)
        self.basis = basis.cpu()

    # ----- state -----
    def state_dict(self) -> dict[str, Any]:
        return {"basis": self.basis}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        basis = state.get("basis")
        self.basis = None if basis is None else basis.to(torch.float64).cpu()
