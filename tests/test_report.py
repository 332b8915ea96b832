"""``clipcl report`` (issue 18): the figures' data, not their pixels. A synthetic sweep's chain
records are written with the real ``RunDir`` API and recorded and ingested by the real store;
the tests compute what each figure must show from those raw rows and points themselves."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from clipcl.results.curves import TrainPoint, read_points
from clipcl.results.figures import (
    cost_per_group,
    eval_task_lines,
    headline,
    loss_series,
    matrix_figures,
)
from clipcl.results.metrics import cil_metrics, mtil_metrics
from clipcl.results.records import ZEROSHOT, EvalRow, RunDir
from clipcl.results.store import ChainRecord, ResultsStore
from clipcl.results.tables import summarize
from tests.helpers import clipcl_inprocess

T = 3
TOTAL = 50  # test images per eval task
METHODS = ("finetune", "zscl")
SEEDS = (0, 1, 2)


@dataclass
class Fake:
    """One synthetic chain: its record and raw accuracy counts."""

    rec: ChainRecord
    correct: np.ndarray  # (T + 1, T) row 0: zero-shot; NaN-free ints; -1 = not evaluated
    seconds: list[float]
    tasks_done: int
    device: str | None = None  # None: a record older than the device field


def _fakes(unfinished: bool = False) -> list[Fake]:
    rng = np.random.default_rng(18)
    fakes, n = [], 0
    for bench, protocol in (("b-til", "til"), ("b-cil", "cil")):
        for method in METHODS:
            for seed in SEEDS:
                spec = {"benchmark": bench, "method": {"name": method}, "seed": seed}
                rec = ChainRecord(f"{n:012x}", method, bench, protocol, seed, {}, spec, T)
                correct = rng.integers(0, TOTAL + 1, size=(T + 1, T))
                if protocol == "cil":
                    correct[1:][np.triu_indices(T, k=1)] = -1  # evaluated on seen tasks only
                done = T - 1 if unfinished and n == 0 else T
                # finetune ran on a GPU (seed 2's records predate the device), zscl on the CPU
                device = {"finetune": "NVIDIA H200" if seed < 2 else None, "zscl": "cpu"}[method]
                seconds = [float(1 + k + n) for k in range(T)]
                fakes.append(Fake(rec, correct, seconds, done, device))
                n += 1
    return fakes


def _write(root: Path, fakes: list[Fake], sweep: str = "fake") -> None:
    names = [f"t{i}" for i in range(T)]
    for f in fakes:
        records = RunDir.of(root, f.rec.chain_id)
        records.path.mkdir(parents=True)
        records.spec_path.write_text("{}")
        rows = [
            EvalRow(
                f.rec.chain_id, t, "zeroshot" if t < 0 else names[t], i, names[i], int(c), TOTAL
            )
            for t in range(ZEROSHOT, f.tasks_done)
            for i, c in enumerate(f.correct[t + 1])
            if c >= 0
        ]
        records.append_rows(rows)
        done = {
            str(k): {"seconds": f.seconds[k], "finished_at": 1.0}
            | ({"device": f.device} if f.device else {})
            for k in range(f.tasks_done)
        }
        records.save_state({"completed": done, "zeroshot_done": True, "num_tasks": T})
        points = [
            TrainPoint(k, s, 4, 3.0 - k - s / 10, 0.01, s * 0.5, {"ce": 2.0 - s / 10, "extra": 0.5})
            for k in range(f.tasks_done)
            for s in range(1, 5)
        ]
        records.train_path.write_text("".join(p.to_json() + "\n" for p in points))
    with ResultsStore(root) as store:
        prov = {"git_commit": "abc123", "host": "testhost"}
        store.record_sweep(sweep, None, {}, [f.rec for f in fakes], provenance=prov)
        store.ingest_root()


@pytest.fixture
def fake_root(tmp_path: Path) -> tuple[Path, list[Fake]]:
    fakes = _fakes()
    _write(tmp_path / "root", fakes)
    return tmp_path / "root", fakes


def _frame(root: Path):
    with ResultsStore(root) as store:
        return store.eval_rows_frame("fake"), store.task_seconds_frame("fake")


def _accuracy(f: Fake) -> np.ndarray:
    """(T + 1, T) percent from the raw counts, NaN where not evaluated or not finished."""
    acc = np.where(f.correct >= 0, 100.0 * f.correct / TOTAL, np.nan)
    acc[1 + f.tasks_done :] = np.nan
    return acc


def test_heatmap_is_the_seed_mean_of_the_raw_rows_and_cil_upper_triangle_is_blank(fake_root):
    root, fakes = fake_root
    df, _ = _frame(root)
    figures = matrix_figures(df)
    assert [(f.benchmark, f.label) for f in figures] == [
        (b, m) for b in ("b-cil", "b-til") for m in METHODS
    ]
    for fig in figures:
        mine = [f for f in fakes if (f.rec.benchmark, f.rec.method) == (fig.benchmark, fig.method)]
        expected = np.mean([_accuracy(f) for f in mine], axis=0)  # every seed has every cell
        np.testing.assert_allclose(fig.zeroshot, expected[0])
        np.testing.assert_allclose(fig.matrix, expected[1:])
        assert fig.seeds == SEEDS and fig.tasks == ["t0", "t1", "t2"]
        upper = fig.matrix[np.triu_indices(T, k=1)]
        assert np.isnan(upper).all() == (fig.protocol == "cil")
        lines = eval_task_lines(fig)
        for j, name in enumerate(fig.tasks):  # each eval task over training: its column
            xs, ys = lines[name]
            want = [(-1, expected[0, j])] + [
                (i, expected[i + 1, j]) for i in range(T) if np.isfinite(expected[i + 1, j])
            ]
            assert xs == [x for x, _ in want]
            assert ys == pytest.approx([y for _, y in want])


def test_an_unfinished_chain_adds_its_finished_tasks_only(tmp_path: Path) -> None:
    fakes = _fakes(unfinished=True)
    _write(tmp_path, fakes)
    df, _ = _frame(tmp_path)
    fig = matrix_figures(df)[2]  # b-til finetune: chain 0 finished tasks 0 and 1 only
    assert fig.chain_ids[0] == fakes[0].rec.chain_id
    acc = [_accuracy(f) for f in fakes[:3]]
    np.testing.assert_allclose(fig.matrix[:2], np.mean(acc, axis=0)[1:3])
    np.testing.assert_allclose(fig.matrix[2], np.mean([a[3] for a in acc[1:]], axis=0))


def test_headline_metrics_are_the_per_chain_metrics_over_seeds(fake_root) -> None:
    root, fakes = fake_root
    df, _ = _frame(root)
    for data in headline(summarize(df)):
        assert data.labels == list(METHODS) and data.seeds == [3, 3]
        for g, method in enumerate(METHODS):
            mine = [f for f in fakes if (f.rec.benchmark, f.rec.method) == (data.benchmark, method)]
            per_chain = []
            for f in mine:
                acc = _accuracy(f)[1:]
                got = (
                    mtil_metrics(acc).to_dict()
                    if data.protocol == "til"
                    else cil_metrics(acc, counts=[TOTAL] * T).to_dict()
                )
                per_chain.append([got[m] for m in data.metrics])
            values = np.array(per_chain)
            np.testing.assert_allclose(data.means[g], values.mean(axis=0))
            np.testing.assert_allclose(data.stds[g], values.std(axis=0, ddof=1))
        assert data.metrics == (
            ("transfer", "avg", "last") if data.protocol == "til" else ("avg", "last", "forgetting")
        )


def test_loss_curves_are_the_points_and_cost_the_task_seconds(fake_root) -> None:
    root, fakes = fake_root
    points = read_points(RunDir.of(root, fakes[0].rec.chain_id).train_path)
    series, starts = loss_series(points)
    assert starts == [4, 8]
    assert series["loss"] == (
        [k * 4 + p.step for k in range(T) for p in points if p.task == k],
        [p.loss for p in points],
    )
    assert series["ce"][1] == [p.terms["ce"] for p in points]
    assert set(series) == {"loss", "ce", "extra"}
    df, seconds = _frame(root)
    cost = cost_per_group(df, seconds, gpus=2, cpus=4).set_index(["benchmark", "label"])
    for bench in ("b-til", "b-cil"):
        for method in METHODS:
            mine = [f for f in fakes if (f.rec.benchmark, f.rec.method) == (bench, method)]
            row = cost.loc[(bench, method)]
            assert row["chains"] == 3
            assert row["chain_s"] == pytest.approx(np.mean([sum(f.seconds) for f in mine]))
            assert row["task_s"] == pytest.approx(np.mean([s for f in mine for s in f.seconds]))
            assert row["hours"] == pytest.approx(sum(sum(f.seconds) for f in mine) / 3600)

            def hours(device: str | None, mine: list[Fake] = mine) -> float:
                return sum(sum(f.seconds) for f in mine if f.device == device) / 3600

            # device-hours: GPU tasks × 2 GPUs per chain, CPU tasks × 4 CPUs per chain
            assert row["gpu_hours"] == pytest.approx(2 * hours("NVIDIA H200"))
            assert row["cpu_hours"] == pytest.approx(4 * hours("cpu"))
            assert row["unknown_hours"] == pytest.approx(hours(None))
            assert row["devices"] == {"finetune": "NVIDIA H200", "zscl": "cpu"}[method]
            assert (row["gpu_hours"] > 0) == (method == "finetune") != (row["cpu_hours"] > 0)


def test_report_writes_one_self_contained_page_and_the_pngs(tmp_path: Path) -> None:
    fakes = _fakes(unfinished=True)
    _write(tmp_path / "root", fakes)
    out = tmp_path / "out"
    proc = clipcl_inprocess("report", "fake", "--root", tmp_path / "root", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "1 of 12 chains are unfinished" in proc.stdout
    page = (out / "index.html").read_text()
    assert "this report shows what is finished" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    uris = re.findall(r'<img src="([^"]+)"', page)
    pngs = sorted(out.glob("*.png"))
    # 2 headline, 4 x (matrix + task lines), 4 loss curves, 1 cost
    assert len(uris) == len(pngs) == 2 + 8 + 4 + 1
    for uri, png in zip(uris, pngs, strict=True):
        assert uri.startswith("data:image/png;base64,")
        assert base64.b64decode(uri.split(",", 1)[1]) == png.read_bytes()
    assert "abc123" in page and "testhost" in page  # provenance
    assert "<th>GPU-hours</th><th>CPU-hours</th>" in page and "<td>NVIDIA H200</td>" in page
    assert "device unrecorded" in page  # finetune's seed 2 records predate the device field
    assert page.count("<pre>") == 2  # one results table per benchmark


def _one_error(proc, *expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def test_report_bad_input(tmp_path: Path, fake_root) -> None:
    root, _ = fake_root
    out = tmp_path / "out"
    _one_error(clipcl_inprocess("report", "nope", "--root", root, "-o", out), "nope", "fake")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_error(clipcl_inprocess("report", "fake", "--root", empty, "-o", out), "no results store")
    assert list(empty.iterdir()) == []
    _write(tmp_path / "norows", [], sweep="blank")
    _one_error(
        clipcl_inprocess("report", "blank", "--root", tmp_path / "norows", "-o", out),
        "no evaluation rows",
    )
    assert not out.exists()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file\n")
    _one_error(
        clipcl_inprocess("report", "fake", "--root", root, "-o", blocker / "out"),
        str(blocker),
    )
    assert blocker.read_text() == "a file\n"


# ----- a real sweep, end to end -----
SWEEP = Path(__file__).parent / "data" / "sweeps" / "report2.yaml"


@pytest.fixture(scope="module")
def real_report(tmp_path_factory) -> tuple[Path, Path]:
    """report2.yaml submitted on the local backend (4 real chains), then ``clipcl report``."""
    root = tmp_path_factory.mktemp("report2")
    cmd = [sys.executable, "-m", "clipcl.cli", "submit", str(SWEEP), "--backend", "local"]
    cmd += ["--root", str(root), "--jobs", "2", "--follow"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    proc = clipcl_inprocess("report", SWEEP, "--root", root)
    assert proc.returncode == 0, proc.stderr
    return root, root / "report" / "report2"


def test_report_of_real_chains_shows_their_rows_and_curves(real_report) -> None:
    root, out = real_report
    with ResultsStore(root) as store:
        df = store.eval_rows_frame("report2")
    figures = matrix_figures(df)
    assert [f.label for f in figures] == ["finetune", "l2"]
    for fig in figures:
        runs = [RunDir.of(root, c) for c in fig.chain_ids]
        np.testing.assert_allclose(fig.matrix, np.mean([r.matrix(T)[0] for r in runs], axis=0))
        zeroshot = np.mean([r.zeroshot_accuracies(T) for r in runs], axis=0)
        np.testing.assert_allclose(fig.zeroshot, zeroshot)
        points = read_points(runs[0].train_path)  # the lowest seed's: the one drawn
        assert [(p.task, p.step) for p in points] == [(k, s) for k in range(T) for s in range(1, 7)]
        named = {"ce", "extra", "l2"} if fig.method == "l2" else {"ce"}
        assert all(p.terms.keys() == named for p in points)
        series, starts = loss_series(points)
        assert series["loss"][1] == [p.loss for p in points] and starts == [6, 12]
    assert len(list(out.glob("*.png"))) == 1 + 2 * 2 + 2 + 1


# ----- the page in a real browser -----
CHROMIUM = shutil.which("chromium")
#: Nothing the browser asks for may leave the machine: every host name resolves to nothing.
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking"]
PROBE = """<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="report" src="{src}" width="1280" height="4000"></iframe>
<script>
const frame = document.getElementById("report");
frame.addEventListener("load", () => {{
  let out;
  try {{
    const images = [...frame.contentDocument.images];
    out = {{
      images: images.length,
      broken: images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt),
      requests: frame.contentWindow.performance.getEntriesByType("resource").map((e) => e.name),
    }};
  }} catch (e) {{
    out = {{error: String(e)}};
  }}
  document.getElementById("result").textContent = JSON.stringify(out);
}});
</script></body></html>
"""


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    cmd += [*OFFLINE, "--disable-component-update", f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="no chromium (`make browser-up` installs Debian's)",
)
def test_report_in_headless_chromium_loads_every_figure_offline(real_report, tmp_path) -> None:
    """The page itself has no script: a probe page (ours) holds it in an iframe and reports
    its images and the resources it fetched (data URIs are not fetched: there must be none)."""
    assert CHROMIUM is not None, "CI=true but chromium is not installed"
    from PIL import Image

    _, out = real_report
    shot = tmp_path / "page.png"
    done = _chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", (out / "index.html").as_uri()
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2400, 1280)
    assert (pixels < 200).mean() > 0.02, "the screenshot is (nearly) blank"
    assert len(np.unique(pixels)) > 50, "the screenshot has no figures in it"
    probe = tmp_path / "probe.html"
    probe.write_text(PROBE.format(src=(out / "index.html").as_uri()))
    flags = ["--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom"]
    done = _chromium(tmp_path, *flags, probe.as_uri())
    found = re.search(r'<pre id="result">([^<]*)</pre>', done.stdout)
    assert found is not None, done.stdout[-2000:] + done.stderr[-2000:]
    seen = json.loads(html.unescape(found[1]))
    assert seen == {"images": 8, "broken": [], "requests": []}, seen


def test_in_task_series_are_the_in_task_and_after_task_rows_over_the_chain() -> None:
    import pandas as pd

    from clipcl.results.figures import intask_series

    intask = pd.DataFrame(
        [(0, 2, 0, "t0", 40.0), (1, 2, 1, "t1", 30.0)],
        columns=["trained_task", "step", "eval_task", "eval_name", "top1"],
    )
    after = pd.DataFrame(
        [(-1, 0, "t0", 99.0), (0, 0, "t0", 50.0), (0, 1, "t1", 10.0)]
        + [(1, 0, "t0", 45.0), (1, 1, "t1", 60.0), (1, 2, "t2", 70.0)],
        columns=["trained_task", "eval_task", "eval_name", "top1"],
    )
    series, starts = intask_series(intask, after, {0: 4, 1: 4})
    assert series == {"t0": ([2, 4, 8], [40.0, 50.0, 45.0]), "t1": ([4, 6, 8], [10.0, 30.0, 60.0])}
    assert starts == [4]  # t2 was never evaluated in-task: not drawn; the zero-shot row neither


def test_report_draws_in_task_rows_only_where_there_are_some(fake_root, tmp_path) -> None:
    from clipcl.results.report import write_report

    root, fakes = fake_root
    plain = write_report(root, "fake", tmp_path / "plain")
    assert "Accuracy inside tasks" not in plain.index.read_text()
    chain = fakes[0].rec.chain_id
    records = RunDir.of(root, chain)
    rows = [EvalRow(chain, t, f"t{t}", t, f"t{t}", 20 + t, TOTAL, step=2) for t in range(T)]
    records.append_intask_rows(rows)
    with ResultsStore(root) as store:
        store.ingest_root()
    drawn = write_report(root, "fake", tmp_path / "drawn")
    assert "Accuracy inside tasks" in drawn.index.read_text()
    assert [p.name for p in drawn.figures if "-intask-" in p.name] != []
    assert len(drawn.figures) == len(plain.figures) + 1  # one chain has in-task rows
