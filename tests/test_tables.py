"""Paper tables from eval rows: hand-computed matrices, metric equivalence, renderers."""

from __future__ import annotations

import io
import json
import math
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from clipcl.errors import ClipclError
from clipcl.results.metrics import cil_metrics, mtil_metrics
from clipcl.results.tables import FORMATS, chain_matrices, matrix_table, render, summarize

TIL_SEED0 = [[80, 30, 20], [70, 90, 25], [60, 80, 70]]
TIL_SEED1 = [[82, 34, 22], [72, 88, 28], [62, 78, 74]]
CIL = [[90, None, None], [60, 85, None], [50, 55, 80]]
CIL_COUNTS = [100, 100, 200]


def chain_rows(
    chain_id: str,
    matrix: list[list[float | None]],
    *,
    method: str = "finetune",
    benchmark: str = "toy",
    protocol: str = "til",
    seed: int = 0,
    counts: list[int] | None = None,
    names: list[str] | None = None,
    zeroshot: float | None = 10.0,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Eval rows of one chain (accuracies in percent; None: not evaluated)."""
    size = len(matrix[0])
    names = names or [f"d{i}" for i in range(size)]
    counts = counts or [100] * size
    zs = [[zeroshot] * size] if zeroshot is not None else []
    out = []
    for t, row in [(-1, r) for r in zs] + list(enumerate(matrix)):
        for i, acc in enumerate(row):
            if acc is None:
                continue
            out.append(
                {
                    "chain_id": chain_id,
                    "method": method,
                    "benchmark": benchmark,
                    "protocol": protocol,
                    "seed": seed,
                    **settings,
                    "trained_task": t,
                    "trained_name": "zeroshot" if t < 0 else names[t],
                    "eval_task": i,
                    "eval_name": names[i],
                    "correct": round(acc * counts[i] / 100),
                    "total": counts[i],
                    "top1": float(acc),
                }
            )
    return out


def frame(*chains: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([row for rows in chains for row in rows])


def two_seeds(**settings: Any) -> pd.DataFrame:
    return frame(
        chain_rows("a0", TIL_SEED0, seed=0, **settings),
        chain_rows("a1", TIL_SEED1, seed=1, **settings),
    )


def test_til_two_seeds_hand_computed() -> None:
    summary = summarize(two_seeds())
    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["seeds"] == 2
    # seed 0: transfer (30 + (20+25)/2)/2 = 26.25, avg 525/9, last 70
    # seed 1: transfer (34 + (22+28)/2)/2 = 29.5, avg 540/9 = 60, last 214/3
    assert row["transfer_mean"] == pytest.approx(27.875)
    assert row["transfer_std"] == pytest.approx(3.25 / math.sqrt(2))
    assert row["avg_mean"] == pytest.approx((525 / 9 + 60) / 2)
    assert row["avg_std"] == pytest.approx((60 - 525 / 9) / math.sqrt(2))
    assert row["last_mean"] == pytest.approx((70 + 214 / 3) / 2)
    assert row["last_std"] == pytest.approx((214 / 3 - 70) / math.sqrt(2))
    assert mtil_metrics(TIL_SEED0).transfer == pytest.approx(26.25)
    assert "forgetting_mean" not in summary.columns


def test_cil_hand_computed() -> None:
    df = frame(chain_rows("c0", CIL, protocol="cil", benchmark="split", counts=CIL_COUNTS))
    row = summarize(df).iloc[0]
    # per step: 90, (60+85)/2 = 72.5, (50*100 + 55*100 + 80*200)/400 = 66.25
    assert row["avg_mean"] == pytest.approx((90 + 72.5 + 66.25) / 3)
    assert row["last_mean"] == pytest.approx(66.25)
    assert row["forgetting_mean"] == pytest.approx(((90 - 50) + (85 - 55)) / 2)
    assert row["bwt_mean"] == pytest.approx(((50 - 90) + (55 - 85)) / 2)
    assert row["seeds"] == 1 and math.isnan(row["avg_std"])
    assert "transfer_mean" not in summarize(df).columns


# Task d0 ends above its earlier best (90, 92, 96); task d1 drops 85 -> 50.
CIL_RISE = [[90, None, None], [92, 85, None], [96, 50, 80]]


def test_cil_forgetting_both_conventions() -> None:
    df = frame(chain_rows("r0", CIL_RISE, protocol="cil", benchmark="split"))
    row = summarize(df).iloc[0]
    # seeds: max(90, 92, 96) - 96 = 0 and 85 - 50 = 35; Chaudhry: max(90, 92) - 96 = -4, 35
    assert row["forgetting_mean"] == pytest.approx((0 + 35) / 2)
    assert row["forgetting_chaudhry_mean"] == pytest.approx((-4 + 35) / 2)
    assert row["bwt_mean"] == pytest.approx((6 - 35) / 2)
    text = matrix_table(df, "r0")
    assert "Forgetting 17.5" in text and "Forgetting (Chaudhry) 15.5" in text


def test_render_states_the_forgetting_convention() -> None:
    summary = summarize(frame(chain_rows("r0", CIL_RISE, protocol="cil", benchmark="split")))
    for fmt in ("table", "md", "latex"):
        text = render(summary, fmt)
        header = next(line for line in text.splitlines() if "method" in line)
        assert "Forgetting" in header and "Chaudhry" not in header, fmt  # the default column
        assert "the last included" in text and "Chaudhry et al. 2018" in text, fmt
        assert "17.5" in text and "15.5" not in text, fmt
        both = render(summary, fmt, chaudhry=True)
        header = next(line for line in both.splitlines() if "method" in line)
        assert "Forgetting (Chaudhry)" in header and "15.5" in both, fmt
    assert render(summary, "latex").endswith("\\end{tabular}\n")
    back = pd.read_csv(io.StringIO(render(summary, "csv")))
    assert back["forgetting_chaudhry_mean"].iloc[0] == pytest.approx(15.5)
    records = json.loads(render(summary, "json"))
    assert records[0]["forgetting_mean"] == pytest.approx(17.5)
    # a table without CIL columns carries no note
    assert "Chaudhry" not in render(summarize(two_seeds()), "table")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_vectorised_metrics_equal_the_definitions(size: int) -> None:
    rng = np.random.default_rng(size)
    chains = []
    for k in range(6):
        acc = rng.uniform(0, 100, size=(size, size)).round(2)
        counts = [int(c) for c in rng.integers(10, 500, size=size)]
        if k % 2:
            matrix = [[acc[t, i] if i <= t else None for i in range(size)] for t in range(size)]
            chains.append(chain_rows(f"c{k}", matrix, protocol="cil", counts=counts, k=k))
        else:
            chains.append(chain_rows(f"c{k}", acc.tolist(), counts=counts, k=k))
    summary = summarize(frame(*chains)).set_index("k")
    assert len(summary) == 6
    mats = chain_matrices(frame(*chains))
    for k in range(6):
        acc, counts, _ = mats[f"c{k}"]
        cil = bool(k % 2)
        want = (cil_metrics(acc, counts=list(counts)) if cil else mtil_metrics(acc)).to_dict()
        cil_keys = ("forgetting", "forgetting_chaudhry", "bwt")
        for metric in ("avg", "last") + (cil_keys if cil else ("transfer",)):
            expected = math.nan if want[metric] is None else want[metric]
            got = summary.loc[k, f"{metric}_mean"]
            assert got == pytest.approx(expected, nan_ok=True, rel=1e-12), (k, metric)


def test_incomplete_chains_do_not_count() -> None:
    partial = chain_rows("a2", TIL_SEED0[:2], seed=2)  # task 3 not finished
    holed = chain_rows("a3", TIL_SEED1, seed=3)
    holed = [r for r in holed if (r["trained_task"], r["eval_task"]) != (1, 2)]
    summary = summarize(pd.concat([two_seeds(), frame(partial, holed)]).assign(num_tasks=3))
    assert summary["seeds"].tolist() == [2]
    assert summary.iloc[0]["transfer_mean"] == pytest.approx(27.875)


def test_cil_unfinished_chain_needs_num_tasks() -> None:
    rows = frame(chain_rows("c0", CIL[:2], protocol="cil", counts=CIL_COUNTS))
    assert summarize(rows.assign(num_tasks=3)).empty
    hole = frame(chain_rows("c1", [[90, None], [None, 85]], protocol="cil"))
    assert summarize(hole).empty


def test_per_dataset_columns() -> None:
    summary = summarize(two_seeds(), per_dataset=True)
    row = summary.iloc[0]
    assert math.isnan(row["transfer/d0_mean"])
    assert row["transfer/d1_mean"] == pytest.approx((30 + 34) / 2)
    assert row["transfer/d2_mean"] == pytest.approx((22.5 + 25) / 2)
    assert row["avg/d2_mean"] == pytest.approx(((20 + 25 + 70) / 3 + (22 + 28 + 74) / 3) / 2)
    assert row["last/d0_mean"] == pytest.approx(61)
    assert row["last/d0_std"] == pytest.approx(math.sqrt(2))
    metrics = [c for c in summary.columns if c.endswith("_mean")]
    assert metrics[:5] == ["transfer_mean", "avg_mean", "last_mean"] + [
        "transfer/d0_mean",
        "transfer/d1_mean",
    ]


def test_settings_group_rows_and_config_disambiguates() -> None:
    low = two_seeds(**{"train.lr": 1e-5})
    high = two_seeds(**{"train.lr": 1e-4}).assign(chain_id=lambda d: d["chain_id"] + "h")
    summary = summarize(pd.concat([low, high]))
    assert summary["train.lr"].tolist() == [1e-5, 1e-4]  # sorted by settings
    assert summary["seeds"].tolist() == [2, 2] and "config" not in summary.columns
    # same display keys, different specs (e.g. two standalone chains): config tells them apart
    plain = two_seeds().assign(config="x")
    other = two_seeds().assign(config="y", chain_id=lambda d: d["chain_id"] + "y")
    both = summarize(pd.concat([plain, other]))
    assert both["config"].tolist() == ["x", "y"]
    assert "config" not in summarize(plain).columns


def test_missing_setting_values_group_together() -> None:
    without = two_seeds().assign(chain_id=lambda d: d["chain_id"] + "z")
    summary = summarize(pd.concat([two_seeds(**{"method.alpha": 0.5}), without]))
    assert summary["seeds"].tolist() == [2, 2]
    assert summary["method.alpha"].tolist()[0] == 0.5 and math.isnan(summary["method.alpha"][1])
    assert render(summary, "md").splitlines()[3].startswith("| finetune | toy | - | 2 |")


def test_render_md_golden() -> None:
    df = frame(
        chain_rows("t0", [[80, 40], [60, 90]], seed=0, **{"train.lr": 1e-5}),
        chain_rows("t1", [[82, 44], [64, 88]], seed=1, **{"train.lr": 1e-5}),
    )
    assert render(summarize(df), "md") == (
        "| method | benchmark | train.lr | seeds | Transfer | Avg | Last |\n"
        "|---|---|---|---:|---:|---:|---:|\n"
        "| finetune | toy | 1e-05 | 2 | 42.0 ± 2.8 | 68.5 ± 1.4 | 75.5 ± 0.7 |\n"
    )


def test_render_every_format() -> None:
    summary = summarize(
        pd.concat([two_seeds(), frame(chain_rows("c0", CIL, protocol="cil", benchmark="split_x"))])
    )
    table = render(summary, "table").splitlines()
    header = ["method", "benchmark", "seeds", "Transfer", "Avg", "Last", "Forgetting", "BWT"]
    assert table[0].split() == header
    assert len({len(line) for line in table[:2]}) == 1  # header and rule aligned
    assert table[2].startswith("finetune  split_x") and "27.9 ± 2.3" in table[3]  # sorted
    latex = render(summary, "latex")
    assert latex.startswith("\\begin{tabular}{llrrrrrr}\n") and "$27.9_{\\pm 2.3}$" in latex
    assert "split\\_x" in latex and "$-35.0$" in latex and latex.endswith("\\end{tabular}\n")
    back = pd.read_csv(io.StringIO(render(summary, "csv")))
    assert back["transfer_mean"].iloc[1] == pytest.approx(27.875, abs=0)
    assert back["transfer_std"].iloc[1] == pytest.approx(3.25 / math.sqrt(2), rel=1e-15)
    records = json.loads(render(summary, "json"))
    assert records[1]["avg_mean"] == pytest.approx((525 / 9 + 60) / 2, rel=1e-15)
    assert records[0]["avg_std"] is None and records[0]["transfer_mean"] is None
    assert records[0]["protocol"] == "cil"
    with pytest.raises(ClipclError, match="unknown format 'html'.*csv, json, latex, md, table"):
        render(summary, "html")
    assert set(FORMATS) == {"table", "md", "latex", "csv", "json"}


def test_chain_matrices_and_matrix_table() -> None:
    df = pd.concat([two_seeds(), frame(chain_rows("c0", CIL, protocol="cil", counts=CIL_COUNTS))])
    mats = chain_matrices(df)
    acc, counts, zs = mats["c0"]
    assert np.isnan(acc[0, 1]) and acc[2, 2] == 80 and counts.tolist() == CIL_COUNTS
    assert zs.tolist() == [10.0] * 3
    np.testing.assert_array_equal(mats["a0"][0], TIL_SEED0)
    text = matrix_table(df, "a0")
    assert "zero-shot" in text and "d2" in text and "Transfer 26.2" in text
    assert text.splitlines()[3].split() == ["zero-shot", "10.0", "10.0", "10.0"]
    assert text.splitlines()[4].split() == ["d0", "80.0", "30.0", "20.0"]
    assert "Forgetting 35.0" in matrix_table(df, "c0")
    with pytest.raises(ClipclError, match="no evaluation rows for chain 'nope'"):
        matrix_table(df, "nope")


def test_empty_frame() -> None:
    empty = two_seeds().iloc[:0]
    assert summarize(empty).empty and chain_matrices(empty) == {}
    assert render(summarize(empty), "md").startswith("| method | benchmark | seeds |")


def test_one_million_rows_fast() -> None:
    chains, size = 10_000, 10
    rng = np.random.default_rng(0)
    n = chains * size * size
    cid = np.repeat(np.array([f"c{k:05d}" for k in range(chains)], dtype=object), size * size)
    df = pd.DataFrame(
        {
            "chain_id": cid,
            "method": np.where(np.arange(n) // 100 % 2, "finetune", "zscl"),
            "benchmark": "b",
            "protocol": "til",
            "seed": np.arange(n) // 200,
            "trained_task": np.tile(np.repeat(np.arange(size), size), chains),
            "eval_task": np.tile(np.arange(size), chains * size),
            "eval_name": "x",
            "total": 100,
            "top1": rng.uniform(0, 100, n),
        }
    )
    t0 = time.perf_counter()
    summary = summarize(df)
    mats = chain_matrices(df)
    assert time.perf_counter() - t0 < 3.0
    assert summary["seeds"].tolist() == [5000, 5000] and len(mats) == chains
