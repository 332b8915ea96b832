"""ImageNet-R (200 ImageNet classes, 30,000 renditions) from Hendrycks et al.'s ``imagenet-r.tar``.

Labels are the sorted WordNet ids (label i ↔ ``IMAGENET_R_WNIDS[i]`` on the full dataset), as in
NSP²'s loader; class names are CLIP's curated ImageNet names (the names ZSCL and NSP² prompt
with). ImageNet-R has no official split. The CIL lineage (CODA-Prompt → NSP²) uses one fixed
random 24,000 / 6,000 (80/20, not stratified) split published as file lists
(CODA-Prompt's ``dataloaders/splits/imagenet-r_{train,test}.yaml``, reissued unchanged as NSP²'s
``tools/imagenet_r_{train,val}.txt``); how it was drawn is not published and it cannot be
regenerated (its labels follow an unsorted ``os.listdir``). So:

- if ``imagenet-r/imagenet_r_train.txt`` and ``imagenet-r/imagenet_r_val.txt`` (NSP²'s lists, lines
  ``<wnid>/<file>.jpg``) are there, they are the split, exactly as the papers used it;
- otherwise the split is :func:`~clipcl.data.real.base.split_80_20` (seed 42) of the sorted file
  list: the same 24,000 / 6,000 sizes and kind of split, not the same images.
"""

from __future__ import annotations

import os
from pathlib import Path

from clipcl.data.real.base import (
    FileImageDataset,
    RealDataset,
    Splits,
    need,
    read_lines,
    register_dataset,
    split_80_20,
)
from clipcl.data.real.imagenet_names import CLIP_IMAGENET_NAMES, IMAGENET_R_WNIDS
from clipcl.data.real.orders import pcg64_shuffle_order
from clipcl.errors import ClipclError

#: [0] the CIL papers' prompt (METHODS.md §2); then the ensemble NSP² evaluates ImageNet-R with
#: (``clip/text_prompts.py``), which is the 7-template ImageNet ensemble of CLIP's notebook.
IMAGENET_R_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
#: NSP²'s split lists, looked for inside ``imagenet-r/``.
SPLIT_LISTS = ("imagenet_r_train.txt", "imagenet_r_val.txt")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_KNOWN = frozenset(IMAGENET_R_WNIDS)


def class_order(seed: int = 2024) -> list[int]:
    """NSP²'s ImageNet-R 10-split order: the sorted labels shuffled by PCG64(``seed``)."""
    return pcg64_shuffle_order(len(IMAGENET_R_WNIDS), seed)


@register_dataset
class ImageNetR(RealDataset):
    name = "ImageNet-R"
    folder = "imagenet-r"
    how_to_get = (
        "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar extracted under the data "
        "root: ROOT/imagenet-r/<wnid>/<rendition>_<k>.jpg (200 WordNet-id folders). Optional: "
        "NSP²'s tools/imagenet_r_train.txt and tools/imagenet_r_val.txt "
        "(github.com/zugexiaodui/VPTinNSforCL) copied into ROOT/imagenet-r/ give the papers' "
        "exact 80/20 split; without them the split is a seeded 80/20 of the same sizes"
    )
    templates = IMAGENET_R_TEMPLATES

    def expected(self) -> list[str]:
        return ["./"]  # the class folders vary with the copy; load() names a bad one

    def load(self, data_root: str | Path) -> Splits:
        root = need(self.root(data_root), "directory")
        wnids = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] != ".")
        if not wnids:
            raise ClipclError(f"{root}/: no class folders (expected <wnid>/ folders)")
        files: dict[str, list[str]] = {}
        for wnid in wnids:
            if wnid not in _KNOWN:
                raise ClipclError(f"{root / wnid}/: not one of ImageNet-R's 200 WordNet ids")
            files[wnid] = sorted(
                f for f in os.listdir(root / wnid) if f.lower().endswith(_IMAGE_SUFFIXES)
            )
            if not files[wnid]:
                raise ClipclError(f"{root / wnid}/: no images")
        label = {w: i for i, w in enumerate(wnids)}
        names = tuple(CLIP_IMAGENET_NAMES[w] for w in wnids)
        if any((root / f).exists() for f in SPLIT_LISTS):
            train, test = self._listed(root, files)
        else:
            every = [f"{w}/{f}" for w in wnids for f in files[w]]
            tr, te = split_80_20(len(every))
            train, test = [every[i] for i in tr], [every[i] for i in te]

        def dataset(rel: list[str]) -> FileImageDataset:
            return FileImageDataset([root / r for r in rel], [label[r.split("/")[0]] for r in rel])

        return Splits(names, dataset(train), dataset(test))

    def _listed(self, root: Path, files: dict[str, list[str]]) -> tuple[list[str], list[str]]:
        """NSP²'s two split lists, each line ``<wnid>/<file>`` naming an existing image."""
        present = {f"{w}/{f}" for w, fs in files.items() for f in fs}
        parts = []
        for list_name in SPLIT_LISTS:
            path = root / list_name
            rel = read_lines(path)
            for n, r in enumerate(rel, 1):
                if r not in present:
                    wnid = r.split("/")[0]
                    what = "unknown class folder" if wnid not in files else "image not found"
                    raise ClipclError(f"{path}:{n}: {what}: {root / r}")
            parts.append(sorted(set(rel)))
        both = set(parts[0]) & set(parts[1])
        if both:
            raise ClipclError(
                f"{root / SPLIT_LISTS[1]}: {sorted(both)[0]} is also in the train list"
            )
        return parts[0], parts[1]
