"""ImageNet-A, ImageNet-Sketch, ImageNetV2 and ObjectNet loaders (issue 20's held-out sets) on
tiny copies written here in their released layouts: labels, class names (CLIP's, a
LOC_synset_mapping.txt's, the wnid), ObjectNet's ImageNet-overlap classes and cropped border,
``data check``, a chain evaluating one of them, and malformed copies named in one error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipcl.data.real import get_dataset
from clipcl.data.real.imagenet_names import CLIP_IMAGENET_NAMES
from clipcl.errors import ClipclError
from clipcl.results.records import RunDir
from clipcl.workers import ChainSpec, run_chain
from tests.helpers import clipcl_inprocess, tiny_spec
from tests.real.fixtures import write_jpeg

#: Three wnids CLIP names (so ImageNet-A's names are CLIP's) and one it does not.
KNOWN = sorted(CLIP_IMAGENET_NAMES)[:3]
UNNAMED = "n00000042"


def _mapping(path: Path, wnids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} thing {w[-3:]}, other name\n" for w in sorted(wnids)))


def write_imagenet_a(root: Path, n: int = 2) -> Path:
    d = root / "imagenet-a"
    for c, wnid in enumerate(KNOWN):
        for k in range(n):
            write_jpeg(d / wnid / f"0.{c}{k}_sample.jpg", seed=10 * c + k)
    return d


def write_sketch(root: Path) -> Path:
    d = root / "sketch"
    for c, wnid in enumerate([*KNOWN[:2], UNNAMED]):
        write_jpeg(d / wnid / f"sketch_{c}.JPEG", seed=c)
    return d


def write_v2(root: Path, indices=(0, 7, 999)) -> Path:
    d = root / "imagenetv2-matched-frequency-format-val"
    for k in indices:
        write_jpeg(d / str(k) / f"{k:040x}.jpeg", seed=k)
    return d


def _bordered_png(path: Path, color: tuple[int, int, int]) -> None:
    """A 20 × 16 image of one colour inside a 1-pixel pure red frame, as ObjectNet's."""
    arr = np.zeros((16, 20, 3), dtype=np.uint8)
    arr[:, :] = (255, 0, 0)
    arr[1:-1, 1:-1] = color
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_objectnet(root: Path) -> Path:
    d = root / "objectnet-1.0"
    folders = {"air_freshener": "Air freshener", "banana": "Banana", "chair": "Chair"}
    for i, folder in enumerate(folders):
        for k in range(2):
            _bordered_png(d / "images" / folder / f"{k:04x}.png", (0, 40 * i + 20 * k, 200))
    (d / "mappings").mkdir(parents=True)
    (d / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(folders))
    to_in = {"Banana": "banana", "Chair": "folding chair; rocking chair"}  # no air freshener
    (d / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(to_in))
    return d


def test_imagenet_a_labels_and_clip_names(tmp_path: Path) -> None:
    write_imagenet_a(tmp_path)
    splits = get_dataset("ImageNet-A").load(tmp_path)
    assert splits.class_names == tuple(CLIP_IMAGENET_NAMES[w] for w in KNOWN)
    assert [splits.test[i][1] for i in range(len(splits.test))] == [0, 0, 1, 1, 2, 2]
    assert splits.test[0][0].shape == (3, 224, 224) and len(splits.train) == len(splits.test)
    (tmp_path / "imagenet-a" / "stuff").mkdir()
    with pytest.raises(ClipclError, match=r"imagenet-a/stuff/: not a WordNet id folder"):
        get_dataset("ImageNet-A").load(tmp_path)


def test_imagenet_sketch_names_from_a_synset_mapping_or_the_wnid(tmp_path: Path) -> None:
    write_sketch(tmp_path)
    ds = get_dataset("ImageNet-Sketch")
    assert (
        ds.load(tmp_path).class_names[0] == UNNAMED
    )  # no mapping anywhere: the wnid (sorts first)
    _mapping(tmp_path / "ImageNet" / "LOC_synset_mapping.txt", [*KNOWN, UNNAMED])
    names = ds.load(tmp_path).class_names
    assert names == ("thing 042", CLIP_IMAGENET_NAMES[KNOWN[0]], CLIP_IMAGENET_NAMES[KNOWN[1]])


def test_imagenetv2_folders_are_class_indices_named_through_the_mapping(tmp_path: Path) -> None:
    d = write_v2(tmp_path)
    ds = get_dataset("ImageNetV2")
    with pytest.raises(ClipclError, match="LOC_synset_mapping.txt"):
        ds.load(tmp_path)
    wnids = [f"n{k:08d}" for k in range(1000)]
    _mapping(d / "LOC_synset_mapping.txt", wnids)
    splits = ds.load(tmp_path)
    assert splits.class_names == ("thing 000", "thing 007", "thing 999")
    assert [splits.test[i][1] for i in range(3)] == [0, 1, 2]
    (d / "1000").mkdir()
    with pytest.raises(ClipclError, match=r"1000/: not a class index folder"):
        ds.load(tmp_path)
    (d / "1000").rmdir()
    _mapping(d / "LOC_synset_mapping.txt", wnids[:10])
    with pytest.raises(ClipclError, match="10 classes"):
        ds.load(tmp_path)


def test_objectnet_keeps_the_imagenet_classes_and_crops_the_border(tmp_path: Path) -> None:
    write_objectnet(tmp_path)
    splits = get_dataset("ObjectNet").load(tmp_path)
    assert splits.class_names == ("Banana", "Chair")  # air freshener maps to no ImageNet class
    assert [splits.test[i][1] for i in range(4)] == [0, 0, 1, 1]
    image = splits.test[0][0].numpy()  # (3, 224, 224)
    red = (image[0] > 200) & (image[1] < 50) & (image[2] < 50)
    assert not red.any()  # the frame is gone (uncropped, the resize would keep red edges)
    (tmp_path / "objectnet-1.0" / "images" / "mystery").mkdir()
    with pytest.raises(ClipclError, match="mystery/: not in mappings"):
        get_dataset("ObjectNet").load(tmp_path)


def test_data_check_knows_the_held_out_sets(tmp_path: Path) -> None:
    write_imagenet_a(tmp_path)
    write_objectnet(tmp_path)
    res = clipcl_inprocess("data", "check", "--root", tmp_path)
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.strip()}
    for name in ("ImageNet-A", "ObjectNet"):
        assert name in res.stdout and "present" in lines.get(name, res.stdout)
    for name in ("ImageNet-Sketch", "ImageNetV2"):
        assert name in res.stdout
    assert get_dataset("ImageNet-Sketch").check(tmp_path).status == "missing"
    assert get_dataset("ObjectNet").check(tmp_path).status == "present"


def test_a_chain_evaluates_objectnet_and_imagenet_a_held_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_imagenet_a(data)
    write_objectnet(data)
    base = tiny_spec(iterations=2).model_dump(mode="json")
    spec = ChainSpec.build({**base, "eval": {**base["eval"], "extra": ["ObjectNet", "ImageNetA"]}})
    run = RunDir.of(tmp_path / "runs", spec.chain_id)
    result = run_chain(spec, run.path, data_root=str(data))
    rows = run.read_heldout_rows()
    assert {r.eval_name for r in rows} == {"ObjectNet", "ImageNet-A"}
    assert len(rows) == 2 * (result.matrix.shape[0] + 1)
    assert {r.total for r in rows if r.eval_name == "ObjectNet"} == {4}
    assert {r.total for r in rows if r.eval_name == "ImageNet-A"} == {6}
