"""MNIST from the raw idx files (``MNIST/raw/*-idx?-ubyte``, optionally gzipped), the layout
torchvision's ``MNIST(root, download=True)`` leaves behind and ZSCL's MTIL code reads.

The idx format (LeCun): a big-endian header — two zero bytes, a type byte (0x08 = uint8), the
number of dimensions — then one big-endian uint32 per dimension, then the data, row-major."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from clipcl.data.real.base import ArrayImageDataset, Check, RealDataset, Splits, register_dataset
from clipcl.errors import ClipclError

#: CLIP's MNIST prompt (its only one); ZSCL trains with it too.
MNIST_TEMPLATES: tuple[str, ...] = ('a photo of the number: "{}".',)

_UBYTE = 0x08
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(path: Path) -> Path:
    """``path``, else ``path.gz`` when that exists; else ``ClipclError`` naming ``path``."""
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        return gz
    raise ClipclError(f"file not found: {path} (nor {gz.name})")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A uint8 idx file with ``ndim`` dimensions as an array (``ClipclError`` naming the file)."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ClipclError(f"{path}: not a valid gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] != ndim:
        raise ClipclError(
            f"{path}: bad idx magic number {raw[:4].hex() or '(empty file)'}, "
            f"expected 0000{_UBYTE:02x}{ndim:02x} (uint8, {ndim}-d)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ClipclError(f"{path}: truncated idx header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise ClipclError(
            f"{path}: idx header says {'×'.join(map(str, dims))} = {size} bytes of data, "
            f"the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@register_dataset
class MNIST(RealDataset):
    name = "MNIST"
    folder = "MNIST"
    how_to_get = (
        "torchvision.datasets.MNIST(root, download=True), or the four files from "
        "http://yann.lecun.com/exdb/mnist/ put (gzipped or not) as ROOT/MNIST/raw/"
        "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"
    )
    templates = MNIST_TEMPLATES
    class_names = tuple(str(d) for d in range(10))

    def expected(self) -> list[str]:
        return [f"raw/{f}" for pair in _FILES.values() for f in pair]

    def load(self, data_root: str | Path) -> Splits:
        train, test = self._parts(data_root)
        return Splits(self.class_names, train, test)

    def _parts(self, data_root: str | Path) -> list[ArrayImageDataset]:
        raw = self.root(data_root) / "raw"
        parts = []
        for images_name, labels_name in _FILES.values():
            images_path, labels_path = _find(raw / images_name), _find(raw / labels_name)
            images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
            if len(images) != len(labels):
                raise ClipclError(
                    f"{images_path} holds {len(images)} images but {labels_path} "
                    f"holds {len(labels)} labels"
                )
            if len(labels) and int(labels.max()) >= len(self.class_names):
                raise ClipclError(f"{labels_path}: label {int(labels.max())} out of range 0-9")
            parts.append(ArrayImageDataset(images, labels.tolist()))
        return parts

    def check(self, data_root: str | Path) -> Check:
        """As :meth:`RealDataset.check`, but a gzipped ``X.gz`` stands in for a missing ``X``."""
        result = super().check(data_root)
        if result.status != "missing":
            return result
        still = [p for p in result.missing if not Path(p + ".gz").is_file()]
        if still:
            result.missing = still
            return result
        # everything is there, some of it gzipped: check the contents as the base class would
        result = Check(self.name, "present", result.path, how_to_get=self.how_to_get)
        try:
            if not all(len(part) for part in self._parts(data_root)):
                raise ClipclError("a split is empty")
        except (ClipclError, OSError, ValueError) as exc:
            result.status = "malformed"
            result.problems.append(str(exc))
        return result
