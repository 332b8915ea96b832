"""Caltech-101 in the layout torchvision's ``Caltech101(root, download=True)`` leaves behind
(``ROOT/caltech101/101_ObjectCategories/<category>/image_NNNN.jpg``).

As in torchvision (and so ZSCL's MTIL ``Caltech101``): the categories are the sorted directory
names without ``BACKGROUND_Google`` (101 classes), the samples are listed category by category,
and, the dataset shipping no test split, train/test is a random 80/20 split (seed 42).
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

#: Not an object class (clutter images); dropped by torchvision and ZSCL.
BACKGROUND = "BACKGROUND_Google"

#: Category directory → the readable name of CLIP's zero-shot protocol (CLIP's data/prompts.md
#: Caltech101 list without its 'background' entry, which is ZSCL's MTIL list). In sorted
#: directory order. The double space of 'head of a  crocodile' is CLIP's (and ZSCL's) spelling.
CALTECH101_NAMES: dict[str, str] = {
    "Faces": "off-center face",
    "Faces_easy": "centered face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
    "accordion": "accordion",
    "airplanes": "airplane",
    "anchor": "anchor",
    "ant": "ant",
    "barrel": "barrel",
    "bass": "bass",
    "beaver": "beaver",
    "binocular": "binocular",
    "bonsai": "bonsai",
    "brain": "brain",
    "brontosaurus": "brontosaurus",
    "buddha": "buddha",
    "butterfly": "butterfly",
    "camera": "camera",
    "cannon": "cannon",
    "car_side": "side of a car",
    "ceiling_fan": "ceiling fan",
    "cellphone": "cellphone",
    "chair": "chair",
    "chandelier": "chandelier",
    "cougar_body": "body of a cougar cat",
    "cougar_face": "face of a cougar cat",
    "crab": "crab",
    "crayfish": "crayfish",
    "crocodile": "crocodile",
    "crocodile_head": "head of a  crocodile",
    "cup": "cup",
    "dalmatian": "dalmatian",
    "dollar_bill": "dollar bill",
    "dolphin": "dolphin",
    "dragonfly": "dragonfly",
    "electric_guitar": "electric guitar",
    "elephant": "elephant",
    "emu": "emu",
    "euphonium": "euphonium",
    "ewer": "ewer",
    "ferry": "ferry",
    "flamingo": "flamingo",
    "flamingo_head": "head of a flamingo",
    "garfield": "garfield",
    "gerenuk": "gerenuk",
    "gramophone": "gramophone",
    "grand_piano": "grand piano",
    "hawksbill": "hawksbill",
    "headphone": "headphone",
    "hedgehog": "hedgehog",
    "helicopter": "helicopter",
    "ibis": "ibis",
    "inline_skate": "inline skate",
    "joshua_tree": "joshua tree",
    "kangaroo": "kangaroo",
    "ketch": "ketch",
    "lamp": "lamp",
    "laptop": "laptop",
    "llama": "llama",
    "lobster": "lobster",
    "lotus": "lotus",
    "mandolin": "mandolin",
    "mayfly": "mayfly",
    "menorah": "menorah",
    "metronome": "metronome",
    "minaret": "minaret",
    "nautilus": "nautilus",
    "octopus": "octopus",
    "okapi": "okapi",
    "pagoda": "pagoda",
    "panda": "panda",
    "pigeon": "pigeon",
    "pizza": "pizza",
    "platypus": "platypus",
    "pyramid": "pyramid",
    "revolver": "revolver",
    "rhino": "rhino",
    "rooster": "rooster",
    "saxophone": "saxophone",
    "schooner": "schooner",
    "scissors": "scissors",
    "scorpion": "scorpion",
    "sea_horse": "sea horse",
    "snoopy": "snoopy (cartoon beagle)",
    "soccer_ball": "soccer ball",
    "stapler": "stapler",
    "starfish": "starfish",
    "stegosaurus": "stegosaurus",
    "stop_sign": "stop sign",
    "strawberry": "strawberry",
    "sunflower": "sunflower",
    "tick": "tick",
    "trilobite": "trilobite",
    "umbrella": "umbrella",
    "watch": "watch",
    "water_lilly": "water lilly",
    "wheelchair": "wheelchair",
    "wild_cat": "wild cat",
    "windsor_chair": "windsor chair",
    "wrench": "wrench",
    "yin_yang": "yin and yang symbol",
}

#: CLIP's Caltech101 prompt ensemble (Radford et al., 2021, data/prompts.md), also ZSCL's.
CALTECH101_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a painting of a {}.",
    "a plastic {}.",
    "a sculpture of a {}.",
    "a sketch of a {}.",
    "a tattoo of a {}.",
    "a toy {}.",
    "a rendition of a {}.",
    "a embroidered {}.",
    "a cartoon {}.",
    "a {} in a video game.",
    "a plushie {}.",
    "a origami {}.",
    "art of a {}.",
    "graffiti of a {}.",
    "a drawing of a {}.",
    "a doodle of a {}.",
    "a photo of the {}.",
    "a painting of the {}.",
    "the plastic {}.",
    "a sculpture of the {}.",
    "a sketch of the {}.",
    "a tattoo of the {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "the embroidered {}.",
    "the cartoon {}.",
    "the {} in a video game.",
    "the plushie {}.",
    "the origami {}.",
    "art of the {}.",
    "graffiti of the {}.",
    "a drawing of the {}.",
    "a doodle of the {}.",
)


@register_dataset
class Caltech101(RealDataset):
    name = "Caltech101"
    folder = "caltech101"
    how_to_get = (
        "caltech-101.zip from https://data.caltech.edu/records/mzrjq-6wc02, its "
        "101_ObjectCategories.tar.gz extracted into ROOT/caltech101/ (what "
        "torchvision.datasets.Caltech101(root, download=True) leaves): "
        "ROOT/caltech101/101_ObjectCategories/<category>/image_NNNN.jpg"
    )
    templates = CALTECH101_TEMPLATES

    def expected(self) -> list[str]:
        return ["101_ObjectCategories/"]

    def load(self, data_root: str | Path) -> Splits:
        top = self.root(data_root) / "101_ObjectCategories"
        categories = class_dirs(top, skip={BACKGROUND})
        paths, labels = folder_images(
            top, categories, "image_*.jpg", CALTECH101_NAMES, "a Caltech-101 category"
        )
        train, test = split_files(paths, labels)
        return Splits(tuple(CALTECH101_NAMES[c] for c in categories), train, test)
