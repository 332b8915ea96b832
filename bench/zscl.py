"""Cost of one ZSCL training step with the reference text features cached (computed once) versus
recomputed every step, as ZSCL's original code does.

A step = forward/backward of a training batch through the CLIP being trained + the reference
batch through the frozen teacher and the student + the KD terms against G_ref (the teacher's text
embeddings of every reference caption). Defaults are ViT-B-16 shapes with a 15 000-caption
reference set (ZSCL's Conceptual Captions validation set has ~15 000); on a CPU use smaller
settings (e.g. ``--batch 4 --captions 1000``). Random-init weights: the cost does not depend on
them. Prints both step times and their ratio, measured in this run. No asserts.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from clipcl.methods import create_method
from clipcl.models import ModelConfig, build_model, pick_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=64, help="training and reference batch")
    parser.add_argument("--captions", type=int, default=15_000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    model = build_model(ModelConfig(arch=args.arch, pretrained="none"), device)
    size = model.image_size
    results = {}
    for cache in (True, False):
        method = create_method(
            "zscl", {"cache_text": cache, "reference_batch_size": args.batch, "we": False}
        )
        method.setup(model)
        method._ref_captions = [f"a photo of object number {i}" for i in range(args.captions)]
        method._ref_images = torch.randint(0, 256, (256, 3, size, size), dtype=torch.uint8)
        model.requires_grad_(True)
        method._trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        method._previous = [p.detach().clone() for _, p in method._trainable]
        method._gen = torch.Generator().manual_seed(0)
        opt = torch.optim.AdamW([p for _, p in method._trainable], lr=1e-5)
        images = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8)
        labels = torch.randint(0, 10, (args.batch,), device=device)
        with torch.no_grad():
            classes = model.encode_text(model.tokenize([f"class {i}" for i in range(10)]))

        def step(method=method, opt=opt, images=images, labels=labels, classes=classes) -> None:
            feats = model.encode_image(model.preprocess(images))
            loss = F.cross_entropy(model.logit_scale() * feats @ classes.t(), labels)
            loss = loss + method.extra_loss((images, labels), None)  # type: ignore[arg-type]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up (and, cached, the one-off text encoding)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        results[cache] = (time.perf_counter() - t0) / args.steps
    print(
        f"{args.arch} on {device}, batch {args.batch}, {args.captions} reference captions, "
        f"{args.steps} steps each"
    )
    print(f"  step, G_ref recomputed every step: {results[False]:8.3f} s")
    print(f"  step, G_ref cached:                {results[True]:8.3f} s")
    print(f"  ratio recomputed / cached: {results[False] / results[True]:.1f}x")


if __name__ == "__main__":
    main()
