"""``zscl`` (Zheng et al., ICCV 2023) and ``lwf``: distillation on reference data, an L2 pull to
the previous task's weights and weight ensembling, as run in ZSCL's MTIL code (METHODS.md §4).

Per step, on top of the cross-entropy of the current task (``finetune``'s train modes)::

    L += l2 · Σ ‖θ − θ_{t−1}‖²                                    (if l2 > 0)
    Z_teacher = s · f_T(x_ref) G_refᵀ,  Z_student = s · f_θ(x_ref) G_refᵀ
    L += KD(Z_teacher, Z_student) [image_loss] + KD(Z_teacherᵀ, Z_studentᵀ) [text_loss]
    KD(t, s) = τ² · mean_rows CE(softmax(t/τ), log_softmax(s/τ))

``G_ref`` are the teacher's text embeddings of the reference captions; both sides use them, so
the distillation trains the image tower only and ``G_ref`` is computed once (per run for the
frozen original CLIP, per task for the previous-task teacher) instead of every step
(``cache_text: false`` recomputes it per step like the original code, for comparison). With
``we``, the weights are averaged every ``avg_freq`` steps, ``θ̄ ← (n θ̄ + θ)/(n + 1)`` starting
from θ_{t−1}; after the task θ̄ replaces θ (it is what is saved, evaluated and carried on).

The seed-002 framework's other averaging flags, on the same ``avg_freq`` schedule:

- ``we_wise`` (``--we-wise``, α = ``we_wise_alpha`` 0.98): each ensemble update is followed by
  ``θ̄ ← α θ̄ + (1 − α) θ_{t−1}`` (its ``wise_we``), so the ensemble is pulled back towards the
  task's starting weights at every update;
- ``moving_avg`` (``--moving-avg``, d = ``moving_avg_decay`` 0.999): the trained weights
  themselves become ``d θ + (1 − d) θ_ref`` (its ``moving_avg``), θ_ref being the task's starting
  weights (``task-start``, its ``n``), the pretrained ones (``zeroshot``) or the weights at the
  previous update before it was applied (``previous``, its ``t``); nothing replaces θ after the
  task. It excludes ``we``, as the framework's branches do.

Its ``--wise-merge`` is the ``wise-ft`` method.

``lwf``: the previous task's model as teacher, the current task's images and class prompts as
reference data, no L2 and no weight ensembling. ``l2``/``we`` alone (``image_loss: false``,
``text_loss: false``) give the L2 and WE baselines.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clipcl.errors import ClipclError
from clipcl.methods.base import StepOutputs, TaskContext
from clipcl.methods.configs import (  # noqa: F401  (re-exported)
    L2Config,
    LwFConfig,
    WEConfig,
    ZSCLConfig,
)
from clipcl.methods.finetune import Finetune
from clipcl.methods.registry import register_method
from clipcl.models import ClipModel

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def distillation(teacher: torch.Tensor, student: torch.Tensor, tau: float) -> torch.Tensor:
    """``τ² · mean_rows CE(softmax(teacher/τ), log_softmax(student/τ))`` (ZSCL's KD)."""
    target = F.softmax(teacher / tau, dim=1)
    return F.cross_entropy(student / tau, target, reduction="mean") * tau**2


def _resolve(path: str, data_root: str | None) -> Path:
    """``path`` as given when absolute (or without a data root), else under the data root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or data_root is None else Path(data_root) / p


def _folder_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ClipclError(f"reference_images: not a directory: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ClipclError(f"reference_images: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


@register_method
class ZSCL(Finetune):
    """Zero-shot continual learning: distill the teacher on reference data, L2, WE."""

    name = "zscl"
    Config = ZSCLConfig
    config: ZSCLConfig

    def setup(self, model: ClipModel) -> None:
        super().setup(model)
        self.teacher: ClipModel | None = None
        if self.config.teacher == "original" and self._distills():
            self.teacher = self._frozen_copy(model)
        self._text_cache: torch.Tensor | None = None
        self._ref_images: torch.Tensor | list[Path] | None = None
        self._ref_captions: list[str] = []
        #: moving_avg_model zeroshot: the pretrained weights (setup sees the freshly built model)
        self._zeroshot: dict[str, torch.Tensor] = {}
        if self.config.moving_avg and self.config.moving_avg_model == "zeroshot":
            self._zeroshot = {n: p.detach().clone() for n, p in model.named_parameters()}

    def _load_reference(self, data_root: str | None) -> None:
        """The reference images and captions (once per run; relative paths: the data root)."""
        cfg = self.config
        if cfg.reference == "world":
            from clipcl.data.mini import reference_set

            self._ref_images, self._ref_captions = reference_set(cfg.reference_size)
        elif cfg.reference == "folder":
            folder = _resolve(str(cfg.reference_images), data_root)
            self._ref_images = _folder_images(folder)
            path = _resolve(str(cfg.reference_captions), data_root)
            if not path.is_file():
                raise ClipclError(f"reference_captions: file not found: {path}")
            self._ref_captions = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            if not self._ref_captions:
                raise ClipclError(f"reference_captions: no captions in {path}")

    def _distills(self) -> bool:
        return self.config.image_loss or self.config.text_loss

    @staticmethod
    def _frozen_copy(model: ClipModel) -> ClipModel:
        teacher = copy.deepcopy(model)
        teacher.requires_grad_(False)
        teacher.eval()
        return teacher

    # ----- per task -----
    def before_task(self, ctx: TaskContext) -> None:
        super().before_task(ctx)
        model = self.model
        assert model is not None
        self._trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._previous = [p.detach().clone() for _, p in self._trainable]  # θ_{t−1}
        self._we = [p.detach().clone() for _, p in self._trainable] if self.config.we else []
        self._we_n = 0
        self._mv_ref: list[torch.Tensor] = []  # θ_ref of moving_avg, aligned with _trainable
        if self.config.moving_avg:
            self._mv_ref = [
                self._zeroshot.get(name, prev).clone()  # a head has no zero-shot value: θ_{t−1}
                for (name, _), prev in zip(self._trainable, self._previous, strict=True)
            ]
        self._step = -1
        if self._distills() and self._ref_images is None and self.config.reference != "current":
            self._load_reference(ctx.data_root)
        self._merged_at = -1
        if self.config.teacher == "previous" and self._distills():
            self.teacher = self._frozen_copy(model)
            self._text_cache = None
        if self.config.reference == "current":
            self._ref_images = None  # drawn from the task's own training set
            self._ref_captions = [ctx.task.templates[0].format(c) for c in ctx.task.class_names]
            self._text_cache = None
            self._ref_dataset = ctx.task.train
        # the reference stream depends only on the chain seed and the task
        self._gen = ctx.generator("reference")

    def _reference_batch(self) -> torch.Tensor:
        """The next reference images (B, 3, H, W) uint8."""
        b = self.config.reference_batch_size
        if self.config.reference == "current":
            ds = self._ref_dataset
            n = len(ds)  # type: ignore[arg-type]
            idx = torch.randint(0, n, (b,), generator=self._gen).tolist()
            return torch.stack([ds[i][0] for i in idx])
        images = self._ref_images
        assert images is not None
        idx = torch.randint(0, len(images), (b,), generator=self._gen).tolist()
        if isinstance(images, torch.Tensor):
            return images[idx]
        from PIL import Image

        from clipcl.data.real.base import clip_resize

        out = []
        for i in idx:
            with Image.open(images[i]) as im:
                out.append(clip_resize(im))
        return torch.stack(out)

    def reference_text(self) -> torch.Tensor:
        """G_ref (N, D): the teacher's text embeddings of the reference captions."""
        if self._text_cache is not None and self.config.cache_text:
            return self._text_cache
        teacher = self.teacher
        assert teacher is not None
        with torch.no_grad():
            feats = [
                teacher.encode_text(teacher.tokenize(self._ref_captions[i : i + 512]))
                for i in range(0, len(self._ref_captions), 512)
            ]
        self._text_cache = torch.cat(feats).float()
        return self._text_cache

    def kd_loss(self, ref_images: torch.Tensor) -> torch.Tensor:
        """Image- and text-side distillation on one reference batch."""
        model, teacher = self.model, self.teacher
        assert model is not None and teacher is not None
        text = self.reference_text()  # (N, D)
        scale = model.logit_scale().detach()
        with torch.no_grad():
            t_feat = teacher.encode_image(teacher.preprocess(ref_images)).float()
        s_feat = model.encode_image(model.preprocess(ref_images)).float()
        z_t = scale * t_feat @ text.t()  # (B, N)
        z_s = scale * s_feat @ text.t()
        tau = self.config.temperature
        loss = torch.zeros((), device=z_s.device)
        if self.config.image_loss:
            loss = loss + distillation(z_t, z_s, tau)
        if self.config.text_loss:
            loss = loss + distillation(z_t.t(), z_s.t(), tau)
        return loss

    def l2_loss(self) -> torch.Tensor:
        """Σ ‖θ − θ_{t−1}‖² over the trainable parameters."""
        total = torch.zeros((), device=self._previous[0].device if self._previous else "cpu")
        for (_, p), q in zip(self._trainable, self._previous, strict=True):
            total = total + (p - q).pow(2).sum()
        return total

    def extra_loss_terms(
        self, batch: tuple[torch.Tensor, torch.Tensor], outputs: StepOutputs
    ) -> dict[str, torch.Tensor]:
        """``l2`` (l2 · Σ‖θ − θ_{t−1}‖², when on) and ``distill`` (the distillation, when on)."""
        terms = {}
        if self.config.l2 > 0:
            terms["l2"] = self.config.l2 * self.l2_loss()
        if self.config.image_loss or self.config.text_loss:
            terms["distill"] = self.kd_loss(self._reference_batch())
        return terms

    def extra_loss(
        self, batch: tuple[torch.Tensor, torch.Tensor], outputs: StepOutputs
    ) -> torch.Tensor | None:
        terms = list(self.extra_loss_terms(batch, outputs).values())
        return None if not terms else terms[0] if len(terms) == 1 else terms[0] + terms[1]

    # ----- weight ensembling -----
    def _merge(self) -> None:
        """``θ̄ ← (n θ̄ + θ)/(n + 1)``; with we_wise then ``θ̄ ← α θ̄ + (1 − α) θ_{t−1}``
        (seed 002's ``merge_we`` / ``wise_we``)."""
        self._we_n += 1
        n = self._we_n
        alpha = self.config.we_wise_alpha
        with torch.no_grad():
            for (_, p), avg, prev in zip(self._trainable, self._we, self._previous, strict=True):
                avg.mul_(n).add_(p.detach()).div_(n + 1)
                if self.config.we_wise:
                    avg.mul_(alpha).add_(prev, alpha=1 - alpha)
        self._merged_at = self._step

    @torch.no_grad()
    def _pull(self) -> None:
        """moving_avg: ``θ ← d θ + (1 − d) θ_ref`` (seed 002's ``moving_avg``); for
        ``moving_avg_model: previous`` θ_ref then becomes θ as it was before this pull."""
        d = self.config.moving_avg_decay
        follow = self.config.moving_avg_model == "previous"
        for (_, p), ref in zip(self._trainable, self._mv_ref, strict=True):
            before = p.detach().clone() if follow else None
            p.mul_(d).add_(ref, alpha=1 - d)
            if before is not None:
                ref.copy_(before)

    def after_step(self) -> None:
        self._step += 1
        if self._step % self.config.avg_freq:
            return
        if self.config.moving_avg:
            self._pull()
        elif self.config.we:
            self._merge()

    def task_state_dict(self) -> dict[str, Any]:
        """The weight ensemble so far, the step counter and the reference stream's state."""
        return {
            "we": [t.clone() for t in self._we],
            "we_n": self._we_n,
            "step": self._step,
            "merged_at": self._merged_at,
            "generator": self._gen.get_state(),
            "mv_ref": [t.clone() for t in self._mv_ref],
        }

    def load_task_state_dict(self, state: dict[str, Any]) -> None:
        we = list(state["we"])
        if [tuple(t.shape) for t in we] != [tuple(t.shape) for t in self._we]:
            raise ValueError("zscl task state: the weight ensemble does not fit the model")
        self._we = [t.to(q) for t, q in zip(we, self._we, strict=True)]
        self._we_n = int(state["we_n"])
        self._step = int(state["step"])
        self._merged_at = int(state["merged_at"])
        self._gen.set_state(state["generator"].cpu())
        mv_ref = list(state.get("mv_ref", []))
        if [tuple(t.shape) for t in mv_ref] != [tuple(t.shape) for t in self._mv_ref]:
            raise ValueError("zscl task state: the moving-average reference does not fit")
        self._mv_ref = [t.to(q) for t, q in zip(mv_ref, self._mv_ref, strict=True)]

    def after_task(self, ctx: TaskContext, loader) -> None:
        if self.config.we:
            if self._merged_at != self._step:  # the final weights join the average once
                self._merge()
            with torch.no_grad():
                for (_, p), avg in zip(self._trainable, self._we, strict=True):
                    p.copy_(avg)
        self._previous = []
        self._we = []
        self._mv_ref = []


@register_method
class LwF(ZSCL):
    """Learning without Forgetting: ZSCL's distillation with the previous model as teacher and
    the current task's data as reference; no L2, no weight ensembling."""

    name = "lwf"
    Config = LwFConfig
    config: LwFConfig


@register_method
class L2(ZSCL):
    """ZSCL's L2 term alone: cross-entropy + l2 · Σ‖θ − θ_{t−1}‖² (no distillation, no WE)."""

    name = "l2"
    Config = L2Config
    config: L2Config


@register_method
class WE(ZSCL):
    """ZSCL's weight ensembling alone (no distillation, no L2)."""

    name = "we"
    Config = WEConfig
    config: WEConfig
