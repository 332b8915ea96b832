"""Bad input to the sweep verbs: chain ids are validated, nothing is written outside the root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clipcl.results.records import RunDir
from clipcl.results.store import ChainRecord, ResultsStore
from clipcl.workers import run_chain
from tests.helpers import clipcl_inprocess, tiny_spec

CLI = [sys.executable, "-m", "clipcl.cli"]


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "args",
    [
        ("logs", "../../etc"),
        ("logs", "../../etc/passwd"),
        ("cancel", "../../etc"),
        ("cancel", "foo"),
    ],
)
def test_chain_ids_are_checked_and_nothing_is_created(tmp_path: Path, args) -> None:
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "passwd").write_text("secret\n")
    cwd = tmp_path / "work"
    cwd.mkdir()
    res = _run(cwd, *args)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "secret" not in res.stdout
    assert list(cwd.iterdir()) == []  # no runs/clipcl.sqlite, nothing at all


def test_logs_takes_the_sweep_file_and_status_shows_settings(tmp_path: Path) -> None:
    spec = tiny_spec(iterations=2)
    root = tmp_path / "runs"
    run = RunDir.of(root, spec.chain_id)
    run_chain(spec, run.path, until_task=1)
    run.log_path.write_text("task 0 (colors) finished\n")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nroot: {root}\nbenchmarks: [smoke]\nmethods: {{finetune: {{}}}}\n")
    with ResultsStore(root) as store:
        rec = ChainRecord.from_spec(spec.chain_id, run.read_spec(), {"train.lr": 0.001})
        store.record_sweep("s", str(sweep), {}, [rec], provenance={})
    by_file = clipcl_inprocess("logs", sweep, spec.chain_id)
    assert by_file.returncode == 0 and "task 0 (colors) finished" in by_file.stdout, by_file
    by_root = clipcl_inprocess("logs", spec.chain_id, "--root", root, "--lines", "1")
    assert by_root.stdout.strip() == "task 0 (colors) finished"
    status = clipcl_inprocess("status", "--root", root)
    assert "settings" in status.stdout and "train.lr=0.001" in status.stdout, status.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("logs", "0123456789ab", "--lines", "-3"),
        ("status", "--limit", "-1"),
        ("plan", "nothing.yaml", "--limit", "-1"),
    ],
)
def test_negative_counts_are_usage_errors(tmp_path: Path, args) -> None:
    res = clipcl_inprocess(*args)
    assert res.returncode == 2 and "error:" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_retry_takes_the_submit_options() -> None:
    res = clipcl_inprocess("retry", "--help")
    assert res.returncode == 0
    for flag in ("--data-root", "--ray-address", "--jobs", "--backend", "--follow"):
        assert flag in res.stdout
    assert "unfinished chain" in " ".join(res.stdout.split())
