"""Oxford 102 Flowers in the layout torchvision's ``Flowers102(root, download=True)`` leaves
behind: ``ROOT/flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat}``.

Official splits, as ZSCL's MTIL ``Flowers``: train on ``trnid`` (1,020 images, 10 per class;
``valid`` is unused), test on ``tstid`` (6,149 images). ``imagelabels.mat`` holds the 1-based
class of every image (``labels``); the class names are not in the files (see
:data:`FLOWERS_NAMES`). The ``.mat`` files are MATLAB level-5 files, read here by
:func:`clipcl.data.real.matfile.load_mat` so that scipy is not needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clipcl.data.real.base import FileImageDataset, RealDataset, Splits, need, register_dataset
from clipcl.data.real.matfile import load_mat
from clipcl.errors import ClipclError

#: The 102 class names, label i ↔ ``FLOWERS_NAMES[i]`` (class i + 1 of ``imagelabels.mat``):
#: ZSCL's MTIL list (torchvision's, from the dataset's commonly used category names). CLIP's
#: data/prompts.md list differs in three entries: 'globe flower' (16), 'pink and yellow dahlia'
#: (60) and 'air plant' (93) for 'globe-flower', 'pink-yellow dahlia' and 'ball moss'.
FLOWERS_NAMES: tuple[str, ...] = (
    "pink primrose",
    "hard-leaved pocket orchid",
    "canterbury bells",
    "sweet pea",
    "english marigold",
    "tiger lily",
    "moon orchid",
    "bird of paradise",
    "monkshood",
    "globe thistle",
    "snapdragon",
    "colt's foot",
    "king protea",
    "spear thistle",
    "yellow iris",
    "globe-flower",
    "purple coneflower",
    "peruvian lily",
    "balloon flower",
    "giant white arum lily",
    "fire lily",
    "pincushion flower",
    "fritillary",
    "red ginger",
    "grape hyacinth",
    "corn poppy",
    "prince of wales feathers",
    "stemless gentian",
    "artichoke",
    "sweet william",
    "carnation",
    "garden phlox",
    "love in the mist",
    "mexican aster",
    "alpine sea holly",
    "ruby-lipped cattleya",
    "cape flower",
    "great masterwort",
    "siam tulip",
    "lenten rose",
    "barbeton daisy",
    "daffodil",
    "sword lily",
    "poinsettia",
    "bolero deep blue",
    "wallflower",
    "marigold",
    "buttercup",
    "oxeye daisy",
    "common dandelion",
    "petunia",
    "wild pansy",
    "primula",
    "sunflower",
    "pelargonium",
    "bishop of llandaff",
    "gaura",
    "geranium",
    "orange dahlia",
    "pink-yellow dahlia",
    "cautleya spicata",
    "japanese anemone",
    "black-eyed susan",
    "silverbush",
    "californian poppy",
    "osteospermum",
    "spring crocus",
    "bearded iris",
    "windflower",
    "tree poppy",
    "gazania",
    "azalea",
    "water lily",
    "rose",
    "thorn apple",
    "morning glory",
    "passion flower",
    "lotus",
    "toad lily",
    "anthurium",
    "frangipani",
    "clematis",
    "hibiscus",
    "columbine",
    "desert-rose",
    "tree mallow",
    "magnolia",
    "cyclamen",
    "watercress",
    "canna lily",
    "hippeastrum",
    "bee balm",
    "ball moss",
    "foxglove",
    "bougainvillea",
    "camellia",
    "mallow",
    "mexican petunia",
    "bromelia",
    "blanket flower",
    "trumpet creeper",
    "blackberry lily",
)

#: CLIP's Flowers102 prompt (Radford et al., 2021, data/prompts.md), also ZSCL's.
FLOWERS_TEMPLATES: tuple[str, ...] = ("a photo of a {}, a type of flower.",)

read_mat5 = load_mat  # numeric variables come out as ndarrays


def _ids(mat: dict[str, np.ndarray], key: str, path: Path) -> list[int]:
    """The integer vector ``mat[key]`` (``ClipclError`` naming the file when absent or not one)."""
    if key not in mat:
        raise ClipclError(f"{path}: no '{key}' array (found: {', '.join(sorted(mat)) or 'none'})")
    values = mat[key].ravel(order="F").astype(np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise ClipclError(f"{path}: '{key}' should be a non-empty vector of integers")
    return [int(v) for v in values]


@register_dataset
class Flowers(RealDataset):
    name = "Flowers"
    folder = "flowers-102"
    how_to_get = (
        "102flowers.tgz, imagelabels.mat and setid.mat from "
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/, the archive extracted into "
        "ROOT/flowers-102/ beside the two .mat files (what "
        "torchvision.datasets.Flowers102(root, download=True) leaves): "
        "ROOT/flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat}"
    )
    templates = FLOWERS_TEMPLATES
    _splits = ("trnid", "tstid")

    def expected(self) -> list[str]:
        return ["jpg/", "imagelabels.mat", "setid.mat"]

    def load(self, data_root: str | Path) -> Splits:
        root = self.root(data_root)
        labels_mat = root / "imagelabels.mat"
        setid_mat = root / "setid.mat"
        classes = _ids(read_mat5(labels_mat), "labels", labels_mat)  # 1-based, image i ↔ [i - 1]
        bad = [c for c in classes if not 1 <= c <= len(FLOWERS_NAMES)]
        if bad:
            raise ClipclError(f"{labels_mat}: label {bad[0]} out of range 1..{len(FLOWERS_NAMES)}")
        setid = read_mat5(setid_mat)
        jpg = need(root / "jpg", "directory")
        present = set(os.listdir(jpg))
        datasets = []
        for key in self._splits:
            paths, labels = [], []
            for image_id in _ids(setid, key, setid_mat):
                if not 1 <= image_id <= len(classes):
                    raise ClipclError(
                        f"{setid_mat}: '{key}' has image id {image_id}, but {labels_mat.name} "
                        f"labels images 1..{len(classes)}"
                    )
                file = f"image_{image_id:05d}.jpg"
                if file not in present:
                    raise ClipclError(f"{setid_mat}: '{key}' lists a missing image: {jpg / file}")
                paths.append(jpg / file)
                labels.append(classes[image_id - 1] - 1)
            datasets.append(FileImageDataset(paths, labels))
        return Splits(FLOWERS_NAMES, datasets[0], datasets[1])
