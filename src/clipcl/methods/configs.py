"""Every method's knobs (``MethodConfig`` subclasses) and paper train defaults, without torch.

The method modules (``finetune.py``, ``gpm.py``, ...) hold the algorithms and import torch;
sweeps are expanded and chain specs validated with these classes alone (``methods.catalog``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from clipcl.validation import StrictNumbers


class MethodConfig(StrictNumbers):
    """Base of every method's knobs: strict (unknown keys and wrong types fail at load; a bool
    is not a number and numbers are finite)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Knobs added after chain ids were published, each with the value every earlier chain
    #: ran with: ``ChainSpec.canonical_json`` leaves a knob out of the hash at that value, so
    #: those chains keep their ids (and any other value, the new default included, is a new run).
    legacy_values: ClassVar[dict[str, Any]] = {}


TrainMode = Literal["whole", "image", "text", "image-fc", "image-fc-fixed", "fc"]


class FinetuneConfig(MethodConfig):
    train_mode: TrainMode = Field("whole", description="Which parts of CLIP are updated.")
    train_logit_scale: bool = Field(False, description="Also learn the logit scale.")


class IcarlConfig(FinetuneConfig):
    train_mode: Literal["whole", "image", "text"] = Field(
        "whole", description="Which parts of CLIP are updated (ZSCL's iCaRL: whole)."
    )
    memory_size: int = Field(
        10_000, ge=0, description="Exemplars kept in total over all seen tasks and classes."
    )
    batch_size: int | None = Field(
        None, ge=1, description="Exemplars per training step (None: the training batch size)."
    )
    distill_weight: float = Field(1.0, ge=0, description="Weight of the distillation term.")
    temperature: float = Field(2.0, gt=0, description="Distillation temperature τ.")
    teacher: Literal["previous", "pretrained"] = Field(
        "previous",
        description="Distil towards the model at the end of the previous task, or towards the"
        " pretrained CLIP (what ZSCL's code does when --ref-model is not given).",
    )
    kd_classes: Literal["own-task", "current-task"] = Field(
        "own-task",
        description="own-task: logits over each exemplar's own task classes, each model with"
        " its own text embeddings; current-task: over the current task's classes, both models"
        " using the teacher's text embeddings (ZSCL's code).",
    )


class JointConfig(FinetuneConfig):
    scope: Literal["seen", "all"] = Field(
        "seen", description="seen: tasks 0..k at task k; all: every task from the start."
    )
    label_smoothing: float = Field(0.2, ge=0, lt=1, description="For the other tasks' batches.")
    batch_size: int = Field(64, ge=1, description="Batch size of each other task's batches.")


class WiSEFTConfig(FinetuneConfig):
    alpha: float = Field(
        0.8, ge=0, le=1, description="Weight of the fine-tuned model (1: plain finetune)."
    )
    reference: Literal["previous", "zeroshot"] = Field(
        "previous",
        description="Interpolate with the weights the task started from, or with the"
        " pretrained (zero-shot) weights (seed 002's --wise-ft-model n / zeroshot).",
    )

    legacy_values: ClassVar[dict[str, Any]] = {"reference": "previous"}


class ZSCLConfig(FinetuneConfig):
    image_loss: bool = Field(True, description="KD on the image→caption logits.")
    text_loss: bool = Field(True, description="KD on the transposed (caption→image) logits.")
    temperature: float = Field(2.0, gt=0, description="KD temperature τ.")
    l2: float = Field(1.0, ge=0, description="Weight of Σ‖θ − θ_{t−1}‖² (0: off).")
    we: bool = Field(True, description="Weight ensembling during each task.")
    avg_freq: int = Field(100, ge=1, description="Steps between weight-ensemble updates.")
    teacher: Literal["original", "previous"] = Field(
        "original", description="The frozen pretrained CLIP, or the previous task's model."
    )
    reference: Literal["world", "folder", "current"] = Field(
        "world",
        description="Reference data: the embedded world's held-out set, a local image folder "
        "+ caption file, or the current task's images and class prompts (LwF).",
    )
    reference_images: str | None = Field(
        None, description="reference: folder — image folder (relative: under the data root)."
    )
    reference_captions: str | None = Field(
        None, description="reference: folder — caption file, one per line (relative: data root)."
    )
    reference_size: int = Field(
        2048, ge=1, description="reference: world — held-out images (and their captions)."
    )
    reference_batch_size: int = Field(64, ge=1, description="Reference images per step.")
    cache_text: bool = Field(True, description="Compute G_ref once instead of every step.")
    we_wise: bool = Field(
        False,
        description="WiSE weight ensembling (seed 002's --we-wise): each ensemble update is"
        " θ̄ ← α·(n θ̄ + θ)/(n + 1) + (1 − α)·θ_{t−1}; needs we.",
    )
    we_wise_alpha: float = Field(
        0.98, ge=0, le=1, description="α of we_wise (seed 002's --we-wise-alpha)."
    )
    moving_avg: bool = Field(
        False,
        description="Every avg_freq steps pull the trained weights themselves towards a"
        " reference, θ ← d·θ + (1 − d)·θ_ref (seed 002's --moving-avg); excludes we.",
    )
    moving_avg_decay: float = Field(
        0.999, ge=0, le=1, description="d of moving_avg (seed 002's --mv-avg-decay)."
    )
    moving_avg_model: Literal["task-start", "previous", "zeroshot"] = Field(
        "task-start",
        description="θ_ref of moving_avg: the weights the task started from (seed 002's 'n'),"
        " the weights at the previous update before it was applied ('t'), or the pretrained"
        " weights ('zeroshot').",
    )

    legacy_values: ClassVar[dict[str, Any]] = {
        "we_wise": False,
        "we_wise_alpha": 0.98,
        "moving_avg": False,
        "moving_avg_decay": 0.999,
        "moving_avg_model": "task-start",
    }

    @model_validator(mode="after")
    def _folder(self) -> ZSCLConfig:
        if self.reference == "folder" and not (self.reference_images and self.reference_captions):
            raise ValueError("reference: folder needs reference_images and reference_captions")
        if self.we_wise and not self.we:
            raise ValueError("we_wise is a kind of weight ensembling: it needs we: true")
        if self.moving_avg and self.we:
            raise ValueError(
                "moving_avg and we exclude each other (moving_avg changes the trained weights,"
                " we averages them): set we: false"
            )
        return self


class LwFConfig(ZSCLConfig):
    teacher: Literal["original", "previous"] = "previous"
    reference: Literal["world", "folder", "current"] = "current"
    l2: float = Field(0.0, ge=0)
    we: bool = False


class L2Config(ZSCLConfig):
    image_loss: bool = False
    text_loss: bool = False
    we: bool = False
    l2: float = Field(1.0, ge=0)


class WEConfig(ZSCLConfig):
    image_loss: bool = False
    text_loss: bool = False
    we: bool = True
    l2: float = Field(0.0, ge=0)


#: ``attn.in_proj``: the packed q/k/v projection of ``nn.MultiheadAttention`` (one adapter per
#: projection, on its ``in_proj_weight``).
LoRATarget = Literal["attn.out_proj", "mlp.c_fc", "mlp.c_proj", "attn.in_proj"]
DEFAULT_TARGETS: tuple[LoRATarget, ...] = ("attn.out_proj", "mlp.c_fc", "mlp.c_proj")


class LoRAConfig(MethodConfig):
    rank: int = Field(8, ge=1, description="Rank r of each adapter.")
    alpha: float = Field(16.0, gt=0, description="Scale numerator: ΔW = (alpha / r) · B A.")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout on the LoRA input path (MLP layers; attn.out_proj has none).",
    )
    targets: tuple[LoRATarget, ...] = Field(
        DEFAULT_TARGETS, min_length=1, description="Block layers that get an adapter."
    )
    towers: Literal["image", "text", "both"] = Field(
        "both", description="Which towers' blocks are adapted."
    )
    merge_after_task: bool = Field(
        False, description="Fold the adapters into W after each task and start fresh ones."
    )
    shared: bool = Field(
        False,
        description="One master A/B per (layer type, dimensions), reused by every adapted layer "
        "of that key: attention (q, k, v, o of a width and head count) and MLP layers never "
        "share.",
    )
    split_qkvo: bool = Field(
        False,
        description="With shared: one master per attention projection type (q, k, v, o) "
        "instead of one per attention shape.",
    )

    #: Knobs added after lora chains ran: left out of the chain id at these values.
    legacy_values: ClassVar[dict[str, Any]] = {"shared": False, "split_qkvo": False}

    @field_validator("targets")
    @classmethod
    def _unique(cls, targets: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(targets)) != len(targets):
            raise ValueError(f"targets listed twice: {sorted(targets)}")
        return targets

    @model_validator(mode="after")
    def _split_needs_shared(self) -> LoRAConfig:
        if self.split_qkvo and not self.shared:
            raise ValueError("split_qkvo: true needs shared: true (it splits the shared masters)")
        return self


LayerKind = Literal["attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"]
ALL_LAYERS: tuple[LayerKind, ...] = ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")


class GPMConfig(MethodConfig):
    """GPM's knobs; defaults are the paper's 10-split CIFAR-100 settings."""

    project: bool = Field(
        True, description="Project gradients (false: train the same layers plainly, GPM-Seq)."
    )
    threshold: float = Field(
        0.97, gt=0, le=1, description="Energy threshold ε of the basis update after task 0."
    )
    threshold_step: float = Field(
        0.003, ge=0, description="Added to ε per task: ε_t = min(1, threshold + t · step)."
    )
    first_task_rule: Literal["code", "paper"] = Field(
        "code",
        description="Directions kept after task 0: 'code' = Σ[cumsum(σ²)/total < ε] as in the"
        " authors' code (the direction that crosses ε is left out); 'paper' = the smallest k"
        " whose energy reaches ε (Eq. 5), i.e. that direction too, as later tasks count.",
    )
    samples: int = Field(
        125,
        ge=1,
        description="Training images per task forwarded for the representation (all their"
        " tokens are used; GPM: 125 samples for its fully connected layers).",
    )
    layers: tuple[LayerKind, ...] = Field(
        ALL_LAYERS, min_length=1, description="Linear layers of each block that are protected."
    )
    blocks: tuple[int, ...] | None = Field(
        None, description="Image-tower blocks whose layers are protected and trained (None: all)."
    )
    freeze_biases: bool | None = Field(
        None,
        description="Freeze the protected layers' biases after task 0 (GPM). None: when"
        " project is true.",
    )
    project_update: bool = Field(
        False,
        description="Project the optimizer's update after the step instead of the gradient"
        " (corrected variant for Adam(W) or weight decay).",
    )

    @field_validator("layers")
    @classmethod
    def _unique_layers(cls, layers: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers listed twice: {sorted(layers)}")
        return layers

    @field_validator("blocks")
    @classmethod
    def _valid_blocks(cls, blocks: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if blocks is None:
            return None
        if not blocks or len(set(blocks)) != len(blocks) or min(blocks) < 0:
            raise ValueError(f"blocks must be distinct indices ≥ 0, got {list(blocks)}")
        return tuple(sorted(blocks))


class OGDConfig(FinetuneConfig):
    """OGD's knobs (the seed-002 framework's ``--orthogonal-gradients N``); training is
    ``finetune``'s (same train modes)."""

    project: bool = Field(
        True, description="Project later updates (false: plain finetune, the OGD-Seq twin)."
    )
    samples: int = Field(
        10,
        ge=1,
        description="Gradients sampled per task at evenly spaced steps (the framework's"
        " examples: 10).",
    )
    energy: float = Field(
        0.97,
        gt=0,
        le=1,
        description="A task adds the leading right singular vectors of its sampled gradients"
        " whose cumulative σ² first reaches this fraction (the framework's svd_basis: 0.97).",
    )
    tracked: Literal["trainable", "block-weights"] = Field(
        "trainable",
        description="Parameters whose gradients are sampled and whose updates are projected:"
        " every trainable one, or (the framework's should_track_layer) only weights, not"
        " biases, with attn / mlp / ln in their name; the others train unprojected.",
    )
    max_basis: int | None = Field(
        None,
        ge=1,
        description="Most directions kept per parameter over all tasks (None: samples × tasks);"
        " directions past the cap are dropped. Bounds the bases' memory.",
    )
    project_update: bool = Field(
        True,
        description="Project the optimizer's update after the step (exact with AdamW); false:"
        " the gradient before the step, as the framework does.",
    )


class NSP2Config(MethodConfig):
    """NSP²'s knobs; defaults are the authors' CLIP settings (``train_cifar100_s10_clip.sh``)."""

    project: bool = Field(
        True, description="Null-space update and L_LN; false = the CLIP-Seq baseline."
    )
    prompt_length: int = Field(4, ge=0, description="Prompt tokens M per prompted block.")
    prompt_start_block: int = Field(0, ge=0, description="First prompted image block.")
    prompt_end_block: int = Field(
        3, ge=0, description="Last prompted image block (inclusive; clamped to the tower's last)."
    )
    prompt_init_range: float = Field(1.0, gt=0, description="Prompts start as U(-a, a).")
    train_logit_scale: bool = Field(True, description="Train CLIP's logit_scale with the prompts.")
    eta1: float = Field(0.98, ge=0, le=1, description="η of the right (C1, D × D) projector.")
    eta2: float = Field(0.98, ge=0, le=1, description="η of the left (C2, M × M) projector.")
    ln_loss_weight: float = Field(1.0, ge=0, description="Weight of L_LN (with project only).")
    knee_smooth_std: float = Field(
        10.0, ge=0, description="Gaussian smoothing of curves with >= 128 singular values."
    )
    knee_trim: float = Field(
        0.015, ge=0, lt=0.5, description="Fraction of each end of such curves not searched."
    )
    stats_batch_size: int = Field(
        100, ge=1, description="Images per statistics batch (each adds JᵀJ / its rows)."
    )
    stats_dtype: Literal["float32", "float64"] = Field(
        "float32",
        description="Precision of C1/C2, their sums and their eigendecomposition: float32 as"
        " the authors' code, float64 as clipcl before issue 14.",
    )
    text_templates: Literal["dataset", "task"] = Field(
        "dataset",
        description="Classifier ensemble: the benchmark dataset's template list (NSP²), or the"
        " task's templates (used anyway for benchmarks without one real dataset).",
    )
    refine_head: bool = Field(True, description="Refine visual.proj on class Gaussians per task.")
    refine_epochs: int = Field(50, ge=1, description="Head refinement epochs.")
    refine_samples_per_class: int = Field(256, ge=1, description="Pseudo-features per class.")
    refine_batch_size: int = Field(256, ge=1, description="Head refinement batch size.")
    refine_lr: float = Field(1e-3, gt=0, description="Head refinement SGD learning rate.")
    refine_momentum: float = Field(0.9, ge=0, lt=1, description="Head refinement SGD momentum.")
    refine_weight_decay: float = Field(1e-4, ge=0, description="Head refinement weight decay.")
    refine_cov_eps: float = Field(1e-4, gt=0, description="Added to each class covariance's I.")

    #: Every nsp2 chain before issue 14 computed its statistics in float64: left out of the
    #: hash at that value, so those chains keep their ids (the float32 default is a new run).
    legacy_values: ClassVar[dict[str, Any]] = {"stats_dtype": "float64"}

    @model_validator(mode="after")
    def _blocks(self) -> NSP2Config:
        if self.prompt_start_block > self.prompt_end_block:
            raise ValueError(
                f"prompt_start_block {self.prompt_start_block} > "
                f"prompt_end_block {self.prompt_end_block}"
            )
        return self


class PGPConfig(MethodConfig):
    project: bool = Field(
        True, description="Project the prompt gradient (false: the prompt-Seq baseline)."
    )
    prompt_length: int = Field(
        10, ge=1, description="Image prompt tokens L_p (public config 10; the paper says 5)."
    )
    n_ctx: int = Field(16, ge=1, description="CoOp context vectors per task (random init).")
    ctx_init: str = Field(
        "random",
        min_length=1,
        description="'random': CoOp's N(0, 0.02²); 'template': the words before '{}' in the "
        "task's training template; any other text: that phrase (n_ctx = its token count).",
    )
    n_components: int = Field(
        5, ge=1, description="PCA components of the tokens and of the prompt (new columns ≤ it)."
    )
    threshold: float = Field(0.90, gt=0, le=1, description="GPM energy threshold ε.")
    project_update: bool = Field(
        False,
        description="Corrected variant: also remove the span-F part of the whole optimizer "
        "update (the original's SGD weight decay, added after projection, leaks into span F).",
    )

    @field_validator("ctx_init")
    @classmethod
    def _phrase(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("ctx_init must be 'random', 'template' or a non-empty phrase")
        return value


class DMNSPConfig(MethodConfig):
    bottleneck: int = Field(64, ge=1, description="Adapter bottleneck width.")
    scale: float = Field(0.1, description="Adapter output scale.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout inside the adapter.")
    top_select: int = Field(
        1, ge=1, description="TOP_SELECT: leading singular vectors left out of each task's basis."
    )
    top_k_ratio: float = Field(
        0.1, gt=0, le=1, description="TOP_K_RATIO: share of a basis's cosines averaged into d."
    )
    lambda_scale: float = Field(30.0, gt=0, description="LAMBDA_SCALE: λ = scale · exp(−d).")
    stats_batch_size: int = Field(
        128, ge=1, description="Images in the one batch whose adapter outputs build the bases."
    )
    project: bool = Field(True, description="False: Adapter-Seq (no statistics, no projection).")
    orthonormal: bool = Field(
        False,
        description="Corrected: orthonormal bases (V Vᵀ a projector) and the exact projector"
        " onto the intersection of the layers' retained spaces instead of their product.",
    )
    project_update: bool = Field(
        False,
        description="Corrected: project AdamW's update after the step (times exp(−Σd)) instead"
        " of the gradient (where AdamW absorbs λ).",
    )


GPM_TRAIN_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",
    "momentum": 0.0,
    "weight_decay": 0.0,
    "lr": 0.01,
    "label_smoothing": 0.0,
}


NSP2_TRAIN_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 5e-5,
    "schedule": "multistep",
    "lr_milestones": (0.5, 0.8),
    "lr_gamma": 0.1,
    "warmup_steps": 0,
    "label_smoothing": 0.0,
}


PGP_TRAIN_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",
    "momentum": 0.9,
    "lr": 1e-2,
    "lr_first_task": 1e-3,
    "weight_decay": 2e-4,
    "weight_decay_first_task": 5e-4,  # the authors' init_weight_decay
    "label_smoothing": 0.0,
    "schedule": "warmup_cosine",
    "warmup_steps": 0,
}


DMNSP_TRAIN_DEFAULTS: dict[str, Any] = {
    "optimizer": "adamw",
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
}
