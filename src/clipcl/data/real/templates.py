"""Prompt template ensembles of the CLIP zero-shot evaluation protocol (Radford et al., 2021,
the per-dataset prompt lists that ZSCL's MTIL code also uses). ``[0]`` is the training template.
Each dataset module defines its own list; the shared ones live here."""

from __future__ import annotations

# CIFAR-10 / CIFAR-100 (18 templates).
CIFAR_TEMPLATES: tuple[str, ...] = tuple(
    f"a {quality}photo of {article} {size}{{}}."
    for article in ("a", "the")
    for quality, size in (
        ("", ""),
        ("blurry ", ""),
        ("black and white ", ""),
        ("low contrast ", ""),
        ("high contrast ", ""),
        ("bad ", ""),
        ("good ", ""),
        ("", "small "),
        ("", "big "),
    )
)
