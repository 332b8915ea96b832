"""End-to-end tests of the ``clipcl`` console script: the bad-input contract and two happy paths.

Contract for bad input: exactly one non-empty line on stderr starting with ``error:`` that names
the offending thing (file, flag or key) and says what is allowed (with a did-you-mean where a
close name exists), exit code 2, no Python traceback, nothing on stdout and nothing written (the
``--root`` directory of ``chain run`` is never created).

The parametrised cases call ``clipcl.cli.main`` in-process (same code path as the console script,
without paying torch's import time per case); ``test_console_script_*`` run the installed script
in a subprocess to cover the entry point itself.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import clipcl_inprocess

_SCRIPT = Path(sys.executable).parent / "clipcl"
_BASE_CMD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "clipcl.cli"]
# A narrow, colourless terminal: a long message must still come out as a single line.
_ENV = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}
_ERROR_TIMEOUT_S = 180
_CHAIN_TIMEOUT_S = 900


def _clipcl(*args: str | Path, timeout: int = _ERROR_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``clipcl ARGS`` in-process; capture exit code and output."""
    return clipcl_inprocess(*args)


def _clipcl_subprocess(*args: str | Path, timeout: int = _ERROR_TIMEOUT_S):
    """Run the installed console script in a subprocess."""
    return subprocess.run(
        [*_BASE_CMD, *map(str, args)],
        capture_output=True,
        text=True,
        env=_ENV,
        timeout=timeout,
        check=False,
    )


def _assert_user_error(proc: subprocess.CompletedProcess, expected: list[str]) -> None:
    """Check the one-line ``error:`` contract and that every expected substring is present."""
    report = (
        f"exit code {proc.returncode}\n--- stderr ---\n{proc.stderr}\n--- stdout ---\n{proc.stdout}"
    )
    assert "Traceback" not in proc.stderr, report
    assert proc.returncode == 2, report
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one non-empty stderr line\n{report}"
    line = lines[0]
    assert line.startswith("error:"), report
    for text in expected:
        assert text in line, f"{text!r} missing from the error line\n{report}"
    assert proc.stdout.strip() == "", f"nothing may be printed on stdout\n{report}"


# --------------------------------------------------------------------------------------------
# chain run: every case must fail during validation, before any run directory is written.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainCase:
    options: dict[str, str] = field(default_factory=dict)  # replaces a default option's value
    extra: tuple[str, ...] = ()  # appended after the default options
    expected: tuple[str, ...] = ()


_CHAIN_DEFAULTS = {
    "--model": "tiny",
    "--benchmark": "smoke",
    "--method": "finetune",
    "--seed": "0",
}

_TRAIN_MODES = ("whole", "image", "text", "image-fc", "image-fc-fixed", "fc")

CHAIN_CASES = {
    # --- the cases from the brief ---
    "unknown-model": ChainCase(
        options={"--model": "tinyy"}, expected=("tinyy", "did you mean 'tiny'")
    ),
    "unknown-benchmark": ChainCase(
        options={"--benchmark": "smok"}, expected=("smok", "did you mean 'smoke'")
    ),
    "unknown-method": ChainCase(
        options={"--method": "fintune"}, expected=("fintune", "did you mean 'finetune'")
    ),
    "set-unknown-key": ChainCase(
        extra=("--set", "train.lrr=1e-3"), expected=("train.lrr", "did you mean 'lr'")
    ),
    "set-wrong-type": ChainCase(
        extra=("--set", "train.iterations=abc"), expected=("train.iterations", "abc")
    ),
    "set-bad-enum": ChainCase(
        extra=("--set", "method.train_mode=everything"),
        expected=("method.train_mode", "everything", *(f"'{m}'" for m in _TRAIN_MODES)),
    ),
    "set-without-equals": ChainCase(
        extra=("--set", "train.lr"), expected=("KEY=VALUE", "train.lr")
    ),
    "set-unknown-method-key": ChainCase(
        extra=("--set", "method.lr=1"), expected=("method.lr", "train_mode")
    ),
    "pretrained-missing-file": ChainCase(
        options={"--pretrained": "/nonexistent/w.pt"}, expected=("/nonexistent/w.pt",)
    ),
    "pretrained-unknown-tag": ChainCase(options={"--pretrained": "notatag"}, expected=("notatag",)),
    # --- more spec validation ---
    "set-bad-precision": ChainCase(
        extra=("--set", "train.precision=fp8"),
        expected=("train.precision", "fp8", "'fp32'", "'bf16'", "'fp16'"),
    ),
    "set-out-of-range": ChainCase(extra=("--set", "train.lr=-1"), expected=("train.lr",)),
    "set-eval-batch-size-zero": ChainCase(
        extra=("--set", "eval.batch_size=0"), expected=("eval.batch_size",)
    ),
    "set-unknown-top-level-key": ChainCase(
        extra=("--set", "foo=1"), expected=("'foo'", "allowed:", "train")
    ),
    "set-empty-key-component": ChainCase(extra=("--set", ".lr=1"), expected=(".lr",)),
    "set-section-replaced-by-value": ChainCase(extra=("--set", "train=5"), expected=("train",)),
    "set-seed-wrong-type": ChainCase(extra=("--set", "seed=abc"), expected=("seed", "abc")),
    "set-model-arch": ChainCase(
        extra=("--set", "model.arch=tinyy"), expected=("tinyy", "did you mean 'tiny'")
    ),
    "set-model-pretrained-missing-file": ChainCase(
        extra=("--set", "model.pretrained=/nonexistent/x.pt"), expected=("/nonexistent/x.pt",)
    ),
    "set-benchmark": ChainCase(
        extra=("--set", "benchmark=smok"), expected=("smok", "did you mean 'smoke'")
    ),
    "set-method-name": ChainCase(
        extra=("--set", "method.name=fintune"), expected=("fintune", "did you mean 'finetune'")
    ),
    # A misspelt task name in lr_per_task silently does nothing; it is an unknown key like any
    # other. (iterations=1 keeps the run short if the CLI wrongly starts training.)
    "set-lr-per-task-unknown-task": ChainCase(
        extra=("--set", "train.lr_per_task.colrs=1e-3", "--set", "train.iterations=1"),
        expected=("colrs", "did you mean 'colors'"),
    ),
    # bools are not numbers and numbers are finite (iterations=1 keeps a wrongly started run short)
    "set-iterations-bool": ChainCase(
        extra=("--set", "train.iterations=true"), expected=("train.iterations", "True")
    ),
    "set-seed-bool": ChainCase(extra=("--set", "seed=false"), expected=("seed", "False")),
    "set-lr-infinite": ChainCase(
        extra=("--set", "train.lr=inf", "--set", "train.iterations=1"),
        expected=("train.lr", "inf"),
    ),
    "set-epochs-keeps-iterations": ChainCase(
        extra=("--set", "train.epochs=1"), expected=("--set train.iterations=null",)
    ),
    "ogd-samples-zero": ChainCase(
        options={"--method": "ogd"},
        extra=("--set", "method.samples=0"),
        expected=("method.samples", "greater than or equal to 1"),
    ),
    # --- flags that typer/torch parse ---
    "seed-not-an-int": ChainCase(options={"--seed": "abc"}, expected=("--seed", "integer")),
    "device-unknown": ChainCase(extra=("--device", "banana"), expected=("banana",)),
}


def _chain_args(case: ChainCase, root: Path) -> list[str]:
    options = {**_CHAIN_DEFAULTS, **case.options}
    args = ["chain", "run"]
    for flag, value in options.items():
        args += [flag, value]
    return [*args, "--root", str(root), *case.extra]


@pytest.mark.parametrize("case", list(CHAIN_CASES.values()), ids=list(CHAIN_CASES))
def test_chain_run_bad_input(tmp_path: Path, case: ChainCase) -> None:
    root = tmp_path / "root"
    proc = _clipcl(*_chain_args(case, root))
    _assert_user_error(proc, list(case.expected))
    assert not root.exists(), f"bad input must write nothing, but {root} was created"


def test_chain_run_root_is_under_a_file(tmp_path: Path) -> None:
    """``--root`` that cannot be a directory is the user's input too: one line, not a crash."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory\n", encoding="utf-8")
    root = blocker / "root"
    args = _chain_args(ChainCase(extra=("--set", "train.iterations=1")), root)
    proc = _clipcl(*args)
    _assert_user_error(proc, [str(blocker)])
    assert blocker.read_text(encoding="utf-8") == "not a directory\n"


def test_two_sweep_files_with_one_name_do_not_merge(tmp_path: Path) -> None:
    """A second file recording the same sweep name under one root is refused, naming both."""
    root = tmp_path / "runs"
    text = "name: same\nbenchmarks: [smoke]\nmethods: {zeroshot: {}}\nseeds: [%s]\n"
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(text % "0")
    second.write_text(text % "1")
    ok = _clipcl("sbatch", first, "-o", tmp_path / "a.sbatch", "--root", root)
    assert ok.returncode == 0, ok.stderr
    again = _clipcl("sbatch", first, "-o", tmp_path / "a2.sbatch", "--root", root)
    assert again.returncode == 0, again.stderr  # the same file again is the same sweep
    proc = _clipcl("sbatch", second, "-o", tmp_path / "b.sbatch", "--root", root)
    _assert_user_error(proc, [str(first), str(second), "rename the sweep"])
    assert not (tmp_path / "b.sbatch").exists()


# --------------------------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreCase:
    filename: str
    content: str | None  # None: the file is not created
    protocol: str | None  # None: --protocol is left out
    expected: tuple[str, ...]


SCORE_CASES = {
    "missing-file": ScoreCase("missing.csv", None, "mtil", ("missing.csv", "not found")),
    "missing-json-file-cil": ScoreCase("missing.json", None, "cil", ("missing.json", "not found")),
    "txt-suffix": ScoreCase(
        "matrix.txt", "1,2\n3,4\n", "mtil", ("matrix.txt", "'.txt'", ".csv", ".npy", ".json")
    ),
    "non-square-csv": ScoreCase(
        "wide.csv", "1,2,3\n4,5,6\n", "mtil", ("wide.csv", "square", "2 x 3")
    ),
    "malformed-json": ScoreCase(
        "broken.json", '{"matrix": [[1, 2], [3, 4]', "cil", ("broken.json", "invalid JSON")
    ),
    "protocol-foo": ScoreCase("ok.csv", "1,2\n3,4\n", "foo", ("--protocol", "foo", "mtil", "cil")),
    # --- more file problems ---
    "empty-csv": ScoreCase("empty.csv", "", "mtil", ("empty.csv", "empty")),
    "ragged-csv": ScoreCase("ragged.csv", "1,2\n3,4,5\n", "cil", ("ragged.csv", "ragged")),
    "non-numeric-cell": ScoreCase(
        "cell.csv", "1,2\n3,oops\n", "mtil", ("cell.csv", "'oops'", "line 2", "column 2")
    ),
    "mtil-with-empty-cell": ScoreCase("hole.csv", "1,\n3,4\n", "mtil", ("MTIL", "NaN")),
    "cil-nan-below-diagonal": ScoreCase("low.csv", "1,\n,4\n", "cil", ("CIL", "NaN")),
    "json-misspelt-key": ScoreCase(
        "key.json", '{"matrx": [[1]]}', "cil", ("key.json", "matrx", "did you mean 'matrix'")
    ),
    "json-string-entry": ScoreCase(
        "str.json", '[[1, "x"], [1, 2]]', "cil", ("str.json", "'x'", "row 1")
    ),
    "npy-garbage": ScoreCase("garbage.npy", "not numpy\n", "cil", ("garbage.npy",)),
    "protocol-typo": ScoreCase(
        "ok.csv", "1,2\n3,4\n", "mtl", ("--protocol", "mtl", "did you mean 'mtil'")
    ),
    "protocol-missing": ScoreCase("ok.csv", "1,2\n3,4\n", None, ("--protocol",)),
    # --- issue 14 ---
    "json-unknown-key": ScoreCase(
        "w.json",
        '{"matrix": [[90, null], [80, 70]], "weights": [1, 3]}',
        "cil",
        ("w.json", "'weights'", "matrix, tasks, counts"),
    ),
    "above-100": ScoreCase(
        "big.csv", "90,\n80,150\n", "cil", ("big.csv", "150", "row 2, column 2", "[0, 100]")
    ),
    "negative": ScoreCase("neg.csv", "90,-1\n80,70\n", "mtil", ("neg.csv", "-1", "[0, 100]")),
    "fractions": ScoreCase("frac.csv", "0.9,\n0.8,0.7\n", "cil", ("frac.csv", "--fraction")),
    "inf-first-row": ScoreCase(
        "inf.csv", "inf,2\n3,4\n", "mtil", ("inf.csv", "line 1, column 1", "infinite")
    ),
    "semicolons": ScoreCase(
        "semi.csv", "90;20\n80;70\n", "mtil", ("semi.csv", "semicolon-delimited", "','")
    ),
    "counts-with-mtil": ScoreCase(
        "c.json",
        '{"matrix": [[90, 20], [80, 70]], "counts": [10, 10]}',
        "mtil",
        ("c.json", "'counts'", "--protocol cil"),
    ),
}


@pytest.mark.parametrize("case", list(SCORE_CASES.values()), ids=list(SCORE_CASES))
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_score_bad_input(tmp_path: Path, case: ScoreCase, as_json: bool) -> None:
    path = tmp_path / case.filename
    if case.content is not None:
        path.write_text(case.content, encoding="utf-8")
    args: list[str | Path] = ["score", path]
    if case.protocol is not None:
        args += ["--protocol", case.protocol]
    if as_json:
        args.append("--json")
    _assert_user_error(_clipcl(*args), list(case.expected))
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        [case.filename] if case.content is not None else []
    )


# --------------------------------------------------------------------------------------------
# positive paths
# --------------------------------------------------------------------------------------------

# MTIL matrix, rows = after task t, columns = eval task i:
#     80 20 30
#     70 90 40
#     60 85 95
# Transfer: column 2 above the diagonal = {20} -> 20; column 3 = {30, 40} -> 35;
#           mean(20, 35) = 27.5
# Avg:      (80+20+30 + 70+90+40 + 60+85+95) / 9 = 570 / 9 = 63.333...
# Last:     (60 + 85 + 95) / 3 = 240 / 3 = 80
MTIL_CSV = "80,20,30\n70,90,40\n60,85,95\n"
MTIL_EXPECTED = {"transfer": 27.5, "avg": 570 / 9, "last": 80.0}

# CIL matrix, upper triangle empty:
#     90  .  .
#     80 70  .
#     60 75 85
# row means over i <= t: 90, (80+70)/2 = 75, (60+75+85)/3 = 220/3 = 73.333...
# avg        = (90 + 75 + 220/3) / 3 = (270 + 225 + 220) / 9 = 715 / 9 = 79.444...
# last       = 220 / 3 = 73.333...
# forgetting_chaudhry = mean(max(90, 80) - 60, max(70) - 75) = mean(30, -5) = 12.5
# forgetting (seeds)  = mean(max(90, 80, 60) - 60, max(70, 75) - 75) = mean(30, 0) = 15
# bwt        = mean(60 - 90, 75 - 70) = mean(-30, 5) = -12.5
CIL_CSV = "90,,\n80,70,\n60,75,85\n"
CIL_EXPECTED = {
    "avg": 715 / 9,
    "last": 220 / 3,
    "forgetting": 15.0,
    "forgetting_chaudhry": 12.5,
    "bwt": -12.5,
    "acc_per_step": [90.0, 75.0, 220 / 3],
}


@pytest.mark.parametrize(
    ("protocol", "text", "expected"),
    [("mtil", MTIL_CSV, MTIL_EXPECTED), ("cil", CIL_CSV, CIL_EXPECTED)],
    ids=["mtil", "cil"],
)
def test_score_json_hand_computed(
    tmp_path: Path, protocol: str, text: str, expected: dict[str, object]
) -> None:
    path = tmp_path / "acc.csv"
    path.write_text(text, encoding="utf-8")
    proc = _clipcl("score", "--protocol", protocol, path, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    got = json.loads(proc.stdout)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_score_fraction_flag_multiplies_by_100(tmp_path: Path) -> None:
    path = tmp_path / "frac.csv"
    path.write_text("0.9,,\n0.8,0.7,\n0.6,0.75,0.85\n", encoding="utf-8")
    proc = _clipcl("score", "--protocol", "cil", path, "--fraction", "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for key, value in CIL_EXPECTED.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    again = _clipcl("score", "--protocol", "mtil", tmp_path / "frac.csv", "--fraction")
    assert again.returncode == 2 and "NaN" in again.stderr  # MTIL still needs every entry
    path.write_text("0.9,20\n0.8,0.7\n", encoding="utf-8")  # percent: --fraction is wrong
    _assert_user_error(
        _clipcl("score", "--protocol", "mtil", path, "--fraction"),
        ["frac.csv", "2000", "[0, 100]"],
    )


def test_score_cil_table_shows_both_forgetting_conventions(tmp_path: Path) -> None:
    path = tmp_path / "acc.csv"
    path.write_text(CIL_CSV, encoding="utf-8")
    proc = _clipcl("score", "--protocol", "cil", path)
    assert proc.returncode == 0, proc.stderr
    assert "Forgetting (Chaudhry)" in proc.stdout and "12.5" in proc.stdout
    assert "15.0" in proc.stdout and "the last included" in proc.stdout


def _mtil_by_hand(matrix: list[list[float]]) -> dict[str, float]:
    n = len(matrix)
    above = [sum(matrix[t][i] for t in range(i)) / i for i in range(1, n)]
    return {
        "transfer": sum(above) / len(above),
        "avg": sum(map(sum, matrix)) / (n * n),
        "last": sum(matrix[-1]) / n,
    }


@pytest.mark.slow
def test_chain_run_json_and_finished_resume(tmp_path: Path) -> None:
    root = tmp_path / "root"
    args = [
        *_chain_args(ChainCase(), root),
        "--json",
        "--set",
        "train.iterations=5",
    ]
    first = _clipcl_subprocess(*args, timeout=_CHAIN_TIMEOUT_S)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    payload = json.loads(first.stdout)

    assert set(payload) == {"chain_id", "protocol", "tasks", "matrix", "metrics"}
    assert payload["protocol"] == "til"
    assert payload["tasks"] == ["colors", "shapes", "stripes"]
    matrix = payload["matrix"]
    assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
    for row in matrix:
        for value in row:
            assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 100.0
    metrics = payload["metrics"]
    assert {"transfer", "avg", "last"} <= set(metrics)
    for key, value in _mtil_by_hand(matrix).items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    assert (root / "chains" / payload["chain_id"]).is_dir()

    second = _clipcl_subprocess(*args, timeout=_CHAIN_TIMEOUT_S)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert "already finished" in second.stderr
    assert "done; accuracies" not in second.stderr, "a finished chain must not train again"


@pytest.mark.parametrize("case", ["unknown-method", "set-unknown-key"])
def test_console_script_reports_bad_input_in_one_line(tmp_path: Path, case: str) -> None:
    root = tmp_path / "root"
    proc = _clipcl_subprocess(*_chain_args(CHAIN_CASES[case], root))
    _assert_user_error(proc, list(CHAIN_CASES[case].expected))
    assert not root.exists()


def test_console_script_usage_error_and_version() -> None:
    proc = _clipcl_subprocess("score", "m.csv")
    _assert_user_error(proc, ["--protocol"])
    version = _clipcl_subprocess("--version")
    assert version.returncode == 0 and version.stdout.startswith("clipcl ")


def _huge_sweep(tmp_path: Path, benchmark: str) -> tuple[Path, Path, int]:
    from clipcl.orchestrator.plan import CONFIRM_ABOVE_CHAINS

    chains = CONFIRM_ABOVE_CHAINS + 1
    root = tmp_path / "runs"
    sweep = tmp_path / "huge.yaml"
    sweep.write_text(
        f"name: huge\nroot: {root}\nbenchmarks: [{benchmark}]\nmethods: {{zeroshot: {{}}}}\n"
        f"seeds: [{', '.join(map(str, range(chains)))}]\n"
    )
    return sweep, root, chains


def test_submit_of_a_huge_sweep_asks_for_yes_before_writing(tmp_path: Path) -> None:
    sweep, root, chains = _huge_sweep(tmp_path, "smoke")
    import inspect

    from clipcl.cli.sweep import submit

    help_text = inspect.signature(submit).parameters["yes"].default.help
    assert f"{chains - 1:,}".replace(",", " ") in help_text  # --yes names the real threshold
    proc = _clipcl("submit", sweep)
    _assert_user_error(proc, [str(sweep), f"{chains} chains", "--yes"])
    assert not root.exists()


def test_submit_yes_of_a_huge_sweep_goes_past_the_count(tmp_path: Path, monkeypatch) -> None:
    # mtil without a data root: refused at the dataset check, the step after the count
    monkeypatch.delenv("CLIPCL_DATA_ROOT", raising=False)
    sweep, root, _ = _huge_sweep(tmp_path, "mtil")
    proc = _clipcl("submit", sweep, "--yes")
    _assert_user_error(proc, ["benchmark 'mtil' reads datasets from disk", "--data-root"])
    assert not root.exists()
