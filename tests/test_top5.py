"""Top-5 accuracy beside top-1 (issue 20): counted on a hand-built case (also with a CIL
offset and fewer than 5 classes), kept in the chain's rows and the store (schema 4, an older
file upgraded), read back in the frame, and shown by ``results --top5`` (an error for rows that
never recorded it). PostgreSQL's upgrade of a schema-3 root is in test_postgres.py."""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from clipcl.data import Task
from clipcl.results.records import EvalRow, RunDir
from clipcl.results.rows import ChainRecord
from clipcl.results.schema import SCHEMA_SQL, SCHEMA_VERSION
from clipcl.results.store import ResultsStore
from clipcl.results.tables import summarize
from clipcl.workers import run_chain
from clipcl.workers.evaluate import _count_correct
from tests.helpers import clipcl_inprocess, tiny_spec


def _identity_model() -> SimpleNamespace:
    """``encode_image`` = the input itself: a test image *is* its score vector."""
    return SimpleNamespace(
        device=torch.device("cpu"), preprocess=lambda x: x.float(), encode_image=lambda x: x
    )


def _task(scores: list[list[float]], labels: list[int]) -> Task:
    test = TensorDataset(torch.tensor(scores), torch.tensor(labels))
    return Task("t", tuple(f"c{i}" for i in range(len(scores[0]))), ("{}",), test, test)


def test_top5_counts_labels_among_the_five_best_scores() -> None:
    # 7 classes; each row's label is ranked 1st, 3rd, 5th, 6th and 7th.
    scores = [
        [0.0, 0.1, 0.2, 0.9, 0.3, 0.4, 0.5],  # label 3: 1st
        [0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.0],  # label 2: 3rd
        [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 4: 5th
        [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 5: 6th
        [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 6: 7th
    ]
    labels = [3, 2, 4, 5, 6]
    clf = torch.eye(7)
    model = _identity_model()
    got = _count_correct(model, _task(scores, labels), clf, 0, 2, "fp32", 0)  # type: ignore
    assert got == (1, 5, 3)
    # CIL: labels are task-local, the classifier also holds 2 earlier classes first
    shifted = [[0.0, 0.0, *row] for row in scores]
    wide = torch.eye(9)
    assert _count_correct(model, _task(shifted, labels), wide, 2, 5, "fp32", 0) == (1, 5, 3)  # type: ignore
    # 3 classes: every label is among the top min(5, C)
    few = [[0.3, 0.2, 0.1], [0.1, 0.2, 0.3]]
    assert _count_correct(model, _task(few, [2, 2]), torch.eye(3), 0, 2, "fp32", 0) == (1, 2, 2)  # type: ignore


def test_rows_keep_top5_in_the_records_and_the_store(tmp_path: Path) -> None:
    spec = tiny_spec(iterations=2)
    run = RunDir.of(tmp_path, spec.chain_id)
    result = run_chain(spec, run.path)
    rows = run.read_rows()
    assert rows and all(r.correct5 is not None and r.correct <= r.correct5 <= r.total for r in rows)
    line = json.loads(run.rows_path.read_text().splitlines()[0])
    assert line["top5"] == pytest.approx(100.0 * line["correct5"] / line["total"])
    assert any(r.correct5 > r.correct for r in rows)  # smoke's tasks have > 5 classes
    with ResultsStore(tmp_path) as store:
        store.record_sweep(
            "s", None, {}, [ChainRecord.from_spec(spec.chain_id, run.read_spec())], {}
        )
        store.ingest_root(tmp_path)
        frame = store.eval_rows_frame("s")
    by_key = {(r.trained_task, r.eval_task): r for r in rows}
    for _, f in frame.iterrows():
        r = by_key[(f["trained_task"], f["eval_task"])]
        assert (f["correct5"], f["top5"]) == (r.correct5, pytest.approx(r.top5))
    assert len(frame) == len(rows) == result.matrix.size + result.zeroshot.size


def _old_row(row: EvalRow) -> str:
    """``row`` as a clipcl before top-5 wrote it."""
    data = json.loads(replace(row, correct5=None).to_json())
    assert "correct5" not in data and "top5" not in data
    return json.dumps(data)


def test_an_old_schema_3_store_gains_correct5_and_old_rows_have_none(tmp_path: Path) -> None:
    db = tmp_path / "clipcl.sqlite"
    # schema 3: no correct5, no intask_rows and no heldout_rows table
    old = re.sub(
        r"CREATE TABLE IF NOT EXISTS (intask|heldout)_rows \(.*?\) WITHOUT ROWID;",
        "",
        SCHEMA_SQL,
        flags=re.S,
    )
    old = old.replace(" correct5 INTEGER,", "")
    old = old.replace(f"user_version = {SCHEMA_VERSION}", "user_version = 3")
    assert "correct5" not in old and "intask_rows" not in old and "heldout_rows" not in old
    conn = sqlite3.connect(db)
    conn.executescript(old)
    conn.close()
    spec = tiny_spec(iterations=2)
    run = RunDir.of(tmp_path, spec.chain_id)
    run_chain(spec, run.path)
    rows = run.read_rows()
    run.rows_path.write_text("\n".join(_old_row(r) for r in rows) + "\n")  # pre-top-5 records
    with ResultsStore(tmp_path) as store:
        store.record_sweep(
            "s", None, {}, [ChainRecord.from_spec(spec.chain_id, run.read_spec())], {}
        )
        store.ingest_root(tmp_path)
        frame = store.eval_rows_frame("s")
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert "correct5" in {r[1] for r in conn.execute("PRAGMA table_info(eval_rows)")}
    for table in ("intask_rows", "heldout_rows"):  # created by the upgrade
        assert "correct5" in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    conn.close()
    assert len(frame) == len(rows) and frame["correct5"].isna().all()
    assert frame["top5"].isna().all() and frame["top1"].notna().all()
    res = clipcl_inprocess("results", "s", "--root", tmp_path, "--top5")
    assert res.returncode == 2 and res.stdout == ""
    assert "no top-5 accuracy" in res.stderr and "top-1 only" in res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1


def test_results_top5_reports_the_metrics_of_top5(tmp_path: Path) -> None:
    specs = [tiny_spec(iterations=2, seed=s) for s in (0, 1)]
    for spec in specs:
        run_chain(spec, RunDir.of(tmp_path, spec.chain_id).path)
    with ResultsStore(tmp_path) as store:
        recs = [
            ChainRecord.from_spec(s.chain_id, RunDir.of(tmp_path, s.chain_id).read_spec())
            for s in specs
        ]
        store.record_sweep("s", None, {}, recs, {})
        store.ingest_root(tmp_path)
        frame = store.eval_rows_frame("s")
    as_json = {}
    for flag in ([], ["--top5"]):
        res = clipcl_inprocess("results", "s", "--root", tmp_path, "--format", "json", *flag)
        assert res.returncode == 0, res.stderr
        (as_json[bool(flag)],) = json.loads(res.stdout)
    want1 = summarize(frame).iloc[0]
    want5 = summarize(frame.assign(top1=frame["top5"])).iloc[0]
    for metric in ("transfer", "avg", "last"):
        assert as_json[False][f"{metric}_mean"] == pytest.approx(want1[f"{metric}_mean"])
        assert as_json[True][f"{metric}_mean"] == pytest.approx(want5[f"{metric}_mean"])
    assert as_json[True]["last_mean"] > as_json[False]["last_mean"]
    assert np.isfinite(as_json[True]["avg_mean"])
