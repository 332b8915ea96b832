"""``clipcl predict``: a chain checkpoint or the packaged tiny CLIP classifies one image file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipcl.data.smoke import COLOURS
from clipcl.results.records import RunDir
from clipcl.workers import ChainSpec, run_chain
from tests.helpers import clipcl_inprocess as _clipcl


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A finetuned tiny chain on ``smoke`` (5 gentle steps per task), a red image, class files."""
    root = tmp_path_factory.mktemp("predict")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CPUs: the tiny model gains nothing from more threads
    try:
        spec = ChainSpec.build(
            {
                "model": {"arch": "tiny"},
                "benchmark": "smoke",
                "method": "finetune",
                "train": {"iterations": 5, "batch_size": 16, "warmup_steps": 1, "lr": 1e-4},
                "keep_checkpoints": 0,
            }
        )
        run_chain(spec, root / "run")
    finally:
        torch.set_num_threads(before)
    image = root / "red.png"  # a smoke 'colors' image: one flat colour (noise aside)
    Image.new("RGB", (32, 32), COLOURS["red"]).save(image)
    classes = root / "colours.txt"
    classes.write_text("\n".join(COLOURS) + "\n\n")  # a trailing blank line is ignored
    empty = root / "empty.txt"
    empty.write_text("\n  \n")
    broken = root / "broken.png"
    broken.write_bytes(b"not an image at all")
    return {
        "ckpt": RunDir(root / "run").checkpoint_path(0),
        "image": image,
        "classes": classes,
        "empty": empty,
        "broken": broken,
        "root": root,
    }


def _check_lines(stdout: str, k: int) -> list[tuple[str, float]]:
    lines = stdout.strip().splitlines()
    assert len(lines) == k
    rows = [(line.rsplit(maxsplit=1)[0].strip(), float(line.split()[-1])) for line in lines]
    probs = [p for _, p in rows]
    assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
    assert probs == sorted(probs, reverse=True)
    return rows


def test_chain_checkpoint_prints_top_k_lines(files) -> None:
    res = _clipcl(
        "predict",
        files["image"],
        "--checkpoint",
        files["ckpt"],
        "--class-names",
        files["classes"],
        "--top-k",
        "3",
        "--template",
        "a {} image.",
    )
    assert res.returncode == 0, res.stderr
    rows = _check_lines(res.stdout, 3)
    assert {name for name, _ in rows} <= set(COLOURS)


def test_trained_colours_checkpoint_recognises_red_as_json(files) -> None:
    ckpt = RunDir(files["root"] / "run").checkpoint_path(2)  # after all three tasks
    res = _clipcl(
        "predict",
        files["image"],
        "--checkpoint",
        ckpt,
        "--class-names",
        files["classes"],
        "--template",
        "a {} image.",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    preds = payload["predictions"]
    assert len(preds) == 4  # default 5, capped at the 4 classes
    assert sum(p["probability"] for p in preds) == pytest.approx(1.0, abs=1e-4)
    assert preds[0]["class"] == "red" and preds[0]["probability"] > 0.5


def test_top_k_above_the_number_of_classes_prints_them_all(files) -> None:
    """The help says "all classes when there are fewer": --top-k 7 with 4 classes is no error."""
    res = _clipcl(
        "predict",
        files["image"],
        "--checkpoint",
        files["ckpt"],
        "--class-names",
        files["classes"],
        "--top-k",
        "7",
    )
    assert res.returncode == 0, res.stderr
    _check_lines(res.stdout, 4)


def test_packaged_tiny_weights_zero_shot(files) -> None:
    res = _clipcl(
        "predict",
        files["image"],
        "--checkpoint",
        "tiny",
        "--class-names",
        files["classes"],
        "--top-k",
        "2",
        "--template",
        "a {} image.",
    )
    assert res.returncode == 0, res.stderr
    rows = _check_lines(res.stdout, 2)
    assert rows[0][0] == "red"


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing-image", "no such file"),
        ("broken-image", "not a readable image"),
        ("missing-checkpoint", "--checkpoint"),
        ("empty-classes", "is empty"),
        ("missing-classes", "--class-names"),
        ("template", "--template"),
        ("template-fields", "no other braces"),
        ("bomb", "too large to open safely"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(files, case: str, needle: str) -> None:
    args: dict[str, Path | str] = {
        "image": files["image"],
        "ckpt": files["ckpt"],
        "classes": files["classes"],
    }
    extra: list[str] = []
    if case == "missing-image":
        args["image"] = files["root"] / "nope.png"
    elif case == "broken-image":
        args["image"] = files["broken"]
    elif case == "missing-checkpoint":
        args["ckpt"] = files["root"] / "run" / "ckpt" / "task_999.pt"
    elif case == "empty-classes":
        args["classes"] = files["empty"]
    elif case == "missing-classes":
        args["classes"] = files["root"] / "nope.txt"
    elif case == "template-fields":
        extra = ["--template", "{0} {1} {}"]
    elif case == "bomb":  # a tiny file declaring a huge image (PIL's decompression-bomb guard)
        args["image"] = files["root"] / "bomb.png"
        Image.new("1", (20000, 20000)).save(args["image"])
    elif case == "template":
        extra = ["--template", "no placeholder"]
    res = _clipcl(
        "predict",
        args["image"],
        "--checkpoint",
        args["ckpt"],
        "--class-names",
        args["classes"],
        *extra,
    )
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.stderr and res.stdout == ""
