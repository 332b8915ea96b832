"""One bad file never takes the whole root down: a damaged store, corrupt chain records, a
read-only root — each is one ``error:`` line or one ``corrupt`` chain, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clipcl.results.records import RunDir
from clipcl.workers import run_chain
from tests.helpers import clipcl_inprocess, tiny_spec

CLI = [sys.executable, "-m", "clipcl.cli"]


@pytest.fixture(scope="module")
def three_chains(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A sweep of three finished smoke chains (seeds 0-2), recorded in its store."""
    base = tmp_path_factory.mktemp("damaged")
    root = base / "runs"
    sweep = base / "sweep.yaml"
    spec = tiny_spec(iterations=2)
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "three",
                "root": str(root),
                "model": {"arch": "tiny"},
                "benchmarks": ["smoke"],
                "methods": {"finetune": {}},
                "train": spec.train.model_dump(include={"iterations", "batch_size"})
                | {"warmup_steps": 2},
                "seeds": [0, 1, 2],
            }
        )
    )
    from clipcl.orchestrator.plan import plan

    ids = []
    for c in plan(sweep).chains:
        run_chain(c.entry.spec, RunDir.of(root, c.chain_id).path)
        ids.append(c.chain_id)
    status = clipcl_inprocess("submit", sweep, "--follow")  # records the sweep; nothing to run
    assert status.returncode == 0, status.stderr
    return root, sweep, ids


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def test_garbage_or_truncated_store_says_how_to_rebuild_it(three_chains, tmp_path) -> None:
    root, sweep, ids = three_chains
    db = root / "clipcl.sqlite"
    original = db.read_bytes()
    try:
        for damage in (b"this is no database " * 500, original[: len(original) // 3]):
            db.write_bytes(damage)
            for side in ("-wal", "-shm"):
                Path(str(db) + side).unlink(missing_ok=True)
            res = subprocess.run(
                [*CLI, "status", str(sweep)], capture_output=True, text=True, timeout=120
            )
            line = _one_error_line(res)
            assert "damaged" in line and "clipcl store rebuild" in line, line
        rebuilt = clipcl_inprocess("store", "rebuild", "--root", root, "--sweep", sweep)
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert "from 3 chains' records" in rebuilt.stdout and "kept the old store" in rebuilt.stdout
        assert any(p.name.startswith("clipcl.sqlite.damaged-") for p in root.iterdir())
        status = clipcl_inprocess("status", sweep)
        assert (
            status.returncode == 0 and "three under" in status.stdout and "3 done" in status.stdout
        )
        table = clipcl_inprocess("results", sweep, "--format", "csv")
        assert table.returncode == 0 and "finetune" in table.stdout
    finally:
        for p in root.glob("clipcl.sqlite*"):
            p.unlink()
        assert (
            clipcl_inprocess("store", "rebuild", "--root", root, "--sweep", sweep).returncode == 0
        )


def test_corrupt_chain_records_are_reported_and_the_others_work(three_chains) -> None:
    root, sweep, ids = three_chains
    bad_state, bad_rows, good = (RunDir.of(root, c) for c in ids)
    saved = {p: p.read_bytes() for p in (bad_state.state_path, bad_rows.rows_path)}
    try:
        bad_state.state_path.write_text("[]")
        bad_rows.rows_path.write_text("garbage\n" * 5)
        status = clipcl_inprocess("status", sweep)
        assert status.returncode == 0, status.stderr
        assert "2 corrupt, 1 done" in status.stdout, status.stdout
        assert f"corrupt: {ids[0]}: " in status.stderr and "state.json: not a chain state" in (
            status.stderr
        )
        assert "rows.jsonl: line 1 is not an evaluation row" in status.stderr
        shown = clipcl_inprocess("plan", sweep)
        assert shown.returncode == 0 and "2 corrupt, 1 done" in shown.stdout, shown.stdout
        assert shown.stdout.count("│ corrupt") == 2 and "work left: 0 task" in shown.stdout
        assert "corrupt (not dispatched)" in shown.stderr
        worker = subprocess.run(
            [sys.executable, "-m", "clipcl.workers", "--run-dir", str(bad_state.path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert worker.returncode == 2 and "Traceback" not in worker.stderr, worker.stderr
        assert "not a chain state" in worker.stderr
        assert RunDir(good.path).tasks_done() == 3
    finally:
        for path, data in saved.items():
            path.write_bytes(data)


@pytest.fixture
def read_only(tmp_path: Path):
    """A read-only view of a folder (a bind mount: needs root, as CI has)."""
    src, view = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    view.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    if subprocess.run(["mount", "--bind", str(src), str(view)]).returncode != 0:
        pytest.skip("this machine refuses bind mounts")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield src, view
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_a_read_only_root_is_one_error_line(three_chains, read_only) -> None:
    root, sweep, ids = three_chains
    src, view = read_only
    subprocess.run(["cp", "-a", f"{root}/.", str(src)], check=True)
    for p in src.glob("clipcl.sqlite-*"):
        p.unlink()
    res = subprocess.run(
        [*CLI, "status", "--root", str(view)], capture_output=True, text=True, timeout=120
    )
    line = _one_error_line(res)
    assert "must be writable" in line or "read-only" in line, line
    submit = subprocess.run(
        [*CLI, "submit", str(sweep), "--root", str(view)], capture_output=True, text=True
    )
    _one_error_line(submit)
