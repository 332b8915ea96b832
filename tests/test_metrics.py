"""Tests for clipcl.results.metrics: ZSCL golden values, hand-computed matrices, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipcl.errors import ClipclError
from clipcl.results.metrics import cil_metrics, mtil_metrics, zeroshot_matrix

GOLDEN = json.loads(
    (Path(__file__).parent / "data" / "zscl_mtil_matrices.json").read_text(encoding="utf-8")
)
# Trained datasets: rows of each run's matrix are in this order (eval_columns minus CIFAR10).
TRAINED = [c for c in GOLDEN["eval_columns"] if c != "CIFAR10"]


def _ordered(run: dict[str, Any]) -> np.ndarray:
    """Drop the CIFAR10 column, then permute rows and columns into the run's training order."""
    full = np.asarray(run["matrix"], dtype=np.float64)
    keep = [j for j, c in enumerate(GOLDEN["eval_columns"]) if c != "CIFAR10"]
    square = full[:, keep]
    assert square.shape == (len(TRAINED), len(TRAINED))
    perm = [TRAINED.index(name) for name in GOLDEN["orders"][run["order"]]]
    return square[np.ix_(perm, perm)]


@pytest.mark.parametrize(
    "run", GOLDEN["runs"], ids=[f"order{r['order']}-{r['method']}" for r in GOLDEN["runs"]]
)
def test_zscl_published_mtil_values(run: dict[str, Any]) -> None:
    got = mtil_metrics(_ordered(run))
    for key in ("transfer", "avg", "last"):
        assert abs(getattr(got, key) - run["published"][key]) <= 0.1, key


@pytest.mark.parametrize("order", ["I", "II"])
def test_zscl_published_zero_shot_values(order: str) -> None:
    acc = [GOLDEN["zero_shot_accuracy"][name] for name in GOLDEN["orders"][order]]
    got = mtil_metrics(zeroshot_matrix(acc))
    for key in ("transfer", "avg", "last"):
        assert abs(getattr(got, key) - GOLDEN["zero_shot_published"][order][key]) <= 0.1, key


# A[t, i]: row = checkpoint after training task t, column = eval task i.
MTIL_3 = [
    [80.0, 40.0, 20.0],
    [70.0, 90.0, 50.0],
    [60.0, 85.0, 95.0],
]


def test_mtil_hand_computed() -> None:
    # Transfer: task 2 -> A[0,1] = 40; task 3 -> (20 + 50) / 2 = 35; mean (40 + 35) / 2 = 37.5
    # Avg: column means 70, 71.67, 55 -> (80+40+20+70+90+50+60+85+95) / 9 = 590 / 9
    # Last: (60 + 85 + 95) / 3 = 80
    got = mtil_metrics(MTIL_3)
    assert got.transfer == pytest.approx(37.5)
    assert got.avg == pytest.approx(590 / 9)
    assert got.last == pytest.approx(80.0)
    assert math.isnan(got.transfer_per_task[0])
    assert got.transfer_per_task[1:] == pytest.approx((40.0, 35.0))
    assert got.avg_per_task == pytest.approx((70.0, 215 / 3, 55.0))
    assert got.last_per_task == pytest.approx((60.0, 85.0, 95.0))
    assert all(type(v) is float for v in (got.transfer, got.avg, got.last))


def test_mtil_to_dict() -> None:
    d = mtil_metrics(MTIL_3).to_dict()
    assert d["transfer"] == pytest.approx(37.5)
    assert d["avg"] == pytest.approx(590 / 9)
    assert d["last"] == pytest.approx(80.0)
    assert d["per_task"]["transfer"][0] is None
    assert d["per_task"]["transfer"][1:] == pytest.approx([40.0, 35.0])
    assert d["per_task"]["last"] == pytest.approx([60.0, 85.0, 95.0])
    json.dumps(d)  # JSON-serialisable (no NaN)


def test_mtil_single_task_transfer_is_nan() -> None:
    got = mtil_metrics([[70.0]])
    assert math.isnan(got.transfer)
    assert got.avg == 70.0 and got.last == 70.0
    assert got.to_dict()["transfer"] is None


def test_zeroshot_matrix_rows_equal() -> None:
    m = zeroshot_matrix([10.0, 20.0, 30.0])
    assert m.shape == (3, 3)
    assert (m == np.array([10.0, 20.0, 30.0])).all()
    got = mtil_metrics(m)
    assert got.transfer == pytest.approx(25.0)  # mean of tasks 2..T
    assert got.avg == pytest.approx(20.0)
    assert got.last == pytest.approx(20.0)


@pytest.mark.parametrize("bad", [[], [[]], [[1.0, 2.0]], [[1.0], [2.0]], [1.0, 2.0]])
def test_zeroshot_and_mtil_reject_bad_shapes(bad: Any) -> None:
    with pytest.raises(ClipclError, match="square|empty"):
        mtil_metrics(bad)


def test_zeroshot_matrix_rejects_2d() -> None:
    with pytest.raises(ClipclError, match="1-D"):
        zeroshot_matrix([[1.0, 2.0]])


def test_mtil_rejects_nan() -> None:
    m = np.array(MTIL_3)
    m[0, 2] = np.nan
    with pytest.raises(ClipclError, match=r"NaN.*row 0, column 2"):
        mtil_metrics(m)


def test_mtil_rejects_non_numeric() -> None:
    with pytest.raises(ClipclError, match="not numeric"):
        mtil_metrics([["a", "b"], ["c", "d"]])


NAN = float("nan")
# a[t, i] defined for i <= t; upper triangle NaN.
CIL_3 = [
    [90.0, NAN, NAN],
    [95.0, 80.0, NAN],
    [60.0, 75.0, 85.0],
]


def test_cil_hand_computed_equal_weights() -> None:
    # acc_1 = 90; acc_2 = (95 + 80) / 2 = 87.5; acc_3 = (60 + 75 + 85) / 3 = 220 / 3
    # Avg = (90 + 87.5 + 220/3) / 3; Last = 220 / 3
    # Forgetting: task 1: max(90, 95) - 60 = 35; task 2: 80 - 75 = 5 -> (35 + 5) / 2 = 20
    # BWT: ((60 - 90) + (75 - 80)) / 2 = -17.5
    got = cil_metrics(CIL_3)
    assert got.acc_per_step == pytest.approx((90.0, 87.5, 220 / 3))
    assert got.avg == pytest.approx((90.0 + 87.5 + 220 / 3) / 3)
    assert got.last == pytest.approx(220 / 3)
    assert got.forgetting == pytest.approx(20.0)
    assert got.forgetting_chaudhry == pytest.approx(20.0)  # no task ends above its best
    assert got.bwt == pytest.approx(-17.5)
    assert all(type(v) is float for v in (got.avg, got.last, got.forgetting, got.bwt))


def test_cil_hand_computed_with_counts() -> None:
    # counts 100, 300, 100: acc_1 = 90; acc_2 = (100*95 + 300*80) / 400 = 83.75;
    # acc_3 = (100*60 + 300*75 + 100*85) / 500 = 74; Avg = (90 + 83.75 + 74) / 3
    got = cil_metrics(CIL_3, counts=[100, 300, 100])
    assert got.acc_per_step == pytest.approx((90.0, 83.75, 74.0))
    assert got.avg == pytest.approx(247.75 / 3)
    assert got.last == pytest.approx(74.0)
    assert got.forgetting == pytest.approx(20.0)
    assert got.bwt == pytest.approx(-17.5)


def test_cil_ignores_upper_triangle_values() -> None:
    filled = np.array(CIL_3)
    filled[np.triu_indices(3, k=1)] = 12.0
    assert cil_metrics(filled) == cil_metrics(CIL_3)


def test_cil_forgetting_max_excludes_final_row() -> None:
    # Accuracy on task 1 rises at the end: best earlier (rows 1..T-1) is 50, final 70 -> -20.
    # (Issue 14: this is Chaudhry et al.'s convention, now reported as forgetting_chaudhry.)
    got = cil_metrics([[50.0, NAN], [70.0, 60.0]])
    assert got.forgetting_chaudhry == pytest.approx(-20.0)
    assert got.bwt == pytest.approx(20.0)


def test_cil_forgetting_seeds_convention_takes_the_max_over_every_row() -> None:
    # The seeds' convention (NSP², PGP, Mammoth, PyCIL): best over rows i..T, the last included.
    # Task 1: max(50, 70) - 70 = 0 (Chaudhry: 50 - 70 = -20).
    got = cil_metrics([[50.0, NAN], [70.0, 60.0]])
    assert got.forgetting == 0.0
    # 4 tasks: task 1 ends above its earlier best, task 2 drops, task 3 ends at its best.
    #   task 1: rows 90, 80, 70, 95 -> seeds max(90..95) - 95 = 0;  Chaudhry 90 - 95 = -5
    #   task 2: rows 85, 60, 50     -> seeds 85 - 50 = 35;           Chaudhry 35
    #   task 3: rows 70, 72         -> seeds 72 - 72 = 0;            Chaudhry 70 - 72 = -2
    matrix = [
        [90.0, NAN, NAN, NAN],
        [80.0, 85.0, NAN, NAN],
        [70.0, 60.0, 70.0, NAN],
        [95.0, 50.0, 72.0, 88.0],
    ]
    got = cil_metrics(matrix)
    assert got.forgetting == pytest.approx(35 / 3)
    assert got.forgetting_chaudhry == pytest.approx(28 / 3)
    assert type(got.forgetting_chaudhry) is float
    d = got.to_dict()
    assert d["forgetting"] == pytest.approx(35 / 3)
    assert d["forgetting_chaudhry"] == pytest.approx(28 / 3)


def test_cil_single_task() -> None:
    got = cil_metrics([[88.0]])
    assert got.avg == 88.0 and got.last == 88.0
    assert math.isnan(got.forgetting) and math.isnan(got.bwt)
    assert math.isnan(got.forgetting_chaudhry)
    d = got.to_dict()
    assert d == {
        "avg": 88.0,
        "last": 88.0,
        "forgetting": None,
        "forgetting_chaudhry": None,
        "bwt": None,
        "acc_per_step": [88.0],
    }


def test_cil_to_dict() -> None:
    d = cil_metrics(CIL_3).to_dict()
    assert set(d) == {"avg", "last", "forgetting", "forgetting_chaudhry", "bwt", "acc_per_step"}
    assert d["acc_per_step"] == pytest.approx([90.0, 87.5, 220 / 3])
    json.dumps(d)


def test_cil_rejects_non_square() -> None:
    with pytest.raises(ClipclError, match=r"square.*\(2, 3\)"):
        cil_metrics([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


def test_cil_rejects_nan_on_or_below_diagonal() -> None:
    m = np.array(CIL_3)
    m[2, 1] = np.nan
    with pytest.raises(ClipclError, match=r"row 2, column 1"):
        cil_metrics(m)
    m = np.array(CIL_3)
    m[1, 1] = np.nan
    with pytest.raises(ClipclError, match="on or below the diagonal"):
        cil_metrics(m)


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        ([1, 2], "one entry per task"),
        ([1, 2, 3, 4], "one entry per task"),
        ([1, 0, 3], "positive"),
        ([1, -5, 3], "positive"),
        (["x", 1, 2], "not numeric"),
    ],
)
def test_cil_rejects_bad_counts(counts: list[Any], match: str) -> None:
    with pytest.raises(ClipclError, match=match):
        cil_metrics(CIL_3, counts=counts)
