"""EuroSAT (RGB, 10 classes, 27,000 images) in the layout torchvision's ``EuroSAT(root,
download=True)`` leaves behind: ``ROOT/eurosat/2750/<ClassName>/<ClassName>_<n>.jpg``.

As torchvision's ``ImageFolder`` (and so ZSCL's MTIL ``EuroSAT``) does, the classes are the
sorted directory names and the samples are listed class by class in sorted file-name order; the
dataset ships no test split, so train/test is a random 80/20 split (seed 42).
"""

from __future__ import annotations

from pathlib import Path

from clipcl.data.real.base import (
    RealDataset,
    Splits,
    class_dirs,
    folder_images,
    register_dataset,
    split_files,
)

#: Class directory → the readable name of CLIP's zero-shot protocol (CLIP's data/prompts.md
#: EuroSAT names, listed there in another order; ZSCL's MTIL list is this one, sorted by
#: directory name).
EUROSAT_NAMES: dict[str, str] = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments",
    "River": "river",
    "SeaLake": "lake or sea",
}

#: CLIP's EuroSAT prompt ensemble (Radford et al., 2021, data/prompts.md), also ZSCL's.
EUROSAT_TEMPLATES: tuple[str, ...] = (
    "a centered satellite photo of {}.",
    "a centered satellite photo of a {}.",
    "a centered satellite photo of the {}.",
)


@register_dataset
class EuroSAT(RealDataset):
    name = "EuroSAT"
    folder = "eurosat"
    how_to_get = (
        "EuroSAT.zip (the RGB version, from https://github.com/phelber/EuroSAT or torchgeo's "
        "Hugging Face mirror) extracted into ROOT/eurosat/ (what "
        "torchvision.datasets.EuroSAT(root, download=True) leaves): "
        "ROOT/eurosat/2750/<ClassName>/<ClassName>_<n>.jpg"
    )
    templates = EUROSAT_TEMPLATES

    def expected(self) -> list[str]:
        return ["2750/"]

    def load(self, data_root: str | Path) -> Splits:
        top = self.root(data_root) / "2750"
        classes = class_dirs(top)
        what = f"a EuroSAT class (expected {', '.join(EUROSAT_NAMES)})"
        paths, labels = folder_images(top, classes, "*.jpg", EUROSAT_NAMES, what)
        train, test = split_files(paths, labels)
        return Splits(tuple(EUROSAT_NAMES[c] for c in classes), train, test)
