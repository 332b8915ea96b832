"""Slurm backend pieces that need no cluster: settings, submitit parameters and sbatch text
(against golden files), parsing of Slurm's outputs, per-task grouping, chain states, back-off.

Regenerate the golden files with ``CLIPCL_UPDATE_GOLDEN=1 pytest tests/test_slurm_unit.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from clipcl.errors import ClipclError
from clipcl.results.rows import JobRow
from clipcl.slurm import commands
from clipcl.slurm.commands import job_states, parse_time_min, sacct_states
from clipcl.slurm.preflight import flag_args, preflight
from clipcl.slurm.script import ScriptChain, render_sbatch
from clipcl.slurm.settings import SlurmSettings, sbatch_flags, submitit_parameters
from clipcl.slurm.track import Backoff, chain_state
from clipcl.sweeps import load_sweep
from clipcl.validation import validate

DATA = Path(__file__).parent / "data" / "slurm"
UPDATE = os.environ.get("CLIPCL_UPDATE_GOLDEN") == "1"


def _golden(name: str, text: str) -> None:
    path = DATA / name
    if UPDATE:
        path.write_text(text)
    assert path.read_text() == text, f"{name} differs from the golden file"


def test_submitit_parameters_match_golden():
    sweep = load_sweep(DATA / "meta.yaml")
    params = submitit_parameters(sweep.slurm, sweep.resources, "clipcl-slurm-meta")
    _golden("meta.submitit.json", json.dumps(params, indent=2, sort_keys=True) + "\n")
    assert params["timeout_min"] == 30 and params["gpus_per_node"] == 1
    assert params["slurm_partition"] == "debug" and params["slurm_array_parallelism"] == 4


def test_submitit_accepts_the_parameters(tmp_path):
    """Every key is one submitit knows (it validates names and renders its own script)."""
    submitit = pytest.importorskip("submitit")
    sweep = load_sweep(DATA / "meta.yaml")
    params = submitit_parameters(sweep.slurm, sweep.resources, "clipcl-slurm-meta")
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="debug")
    executor.update_parameters(**{k: v for k, v in params.items() if not k.startswith("slurm_")})
    from submitit.slurm.slurm import SlurmExecutor

    valid = SlurmExecutor._valid_parameters()
    for key in params:
        name = key.removeprefix("slurm_")
        assert name in valid or key in {
            "name",
            "timeout_min",
            "mem_gb",
            "nodes",
            "cpus_per_task",
            "gpus_per_node",
            "tasks_per_node",
        }


def _script(sweep, **kw) -> str:
    return render_sbatch(
        sweep_name=sweep.name,
        source="tests/data/slurm/meta.yaml",
        root="/shared/runs/slurm meta",
        chains=[
            ScriptChain("aaaaaaaaaaaa", "finetune on smoke, seed 0, -"),
            ScriptChain("bbbbbbbbbbbb", "finetune on smoke, seed 1\n$(touch x)"),
        ],
        settings=sweep.slurm,
        resources=sweep.resources,
        python="/opt/venv with space/bin/python",
        data_root="/data/$(whoami)",
        version="0.1.0",
        **kw,
    )


def test_sbatch_script_matches_golden_and_quotes_metacharacters(tmp_path):
    sweep = load_sweep(DATA / "meta.yaml")
    text = _script(sweep)
    _golden("meta.sbatch", text)
    # bash parses it, and running its value lines creates none of the 'pwned' files
    script = tmp_path / "s.sbatch"
    script.write_text(text)
    subprocess.run(["bash", "-n", str(script)], check=True)
    flags = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    for line in flags:  # every value is one shell word that evaluates to itself
        key, _, value = line.removeprefix("#SBATCH --").partition("=")
        if value:
            words = shlex.split(value)
            assert len(words) == 1, line
            got = subprocess.run(
                ["bash", "-c", f"printf %s {value}"], cwd=tmp_path, capture_output=True, text=True
            ).stdout
            assert got == words[0]
    assert not list(tmp_path.glob("pwned*"))
    assert "#SBATCH --account='lab$(touch pwned-account)'" in text
    assert "#SBATCH --array=0-1%2" in text
    assert "#SBATCH --signal=B:USR2@120" in text
    assert "module load cuda/12.1" in text
    # the chain label with a newline stays a comment
    assert "seed 1 $(touch x)" in text and "\n$(touch x)" not in text


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("partition", "debug\n#SBATCH --wrap=evil", "control character"),
        ("setup", ["module load x\nrm -rf /"], "control character"),
        ("additional_parameters", {"array": "0-9"}, "set by clipcl"),
        ("additional_parameters", {"time": 5}, "resources.timeout_min"),
        ("additional_parameters", {"bad key!": 1}, "not an sbatch long option"),
        ("additional_parameters", {"exclusive": False}, "false is not"),
        ("chain_mode", "per_task", "whole"),
        ("array_parallelism", 0, "greater than or equal to 1"),
        ("surprise", 1, "surprise"),
    ],
)
def test_bad_slurm_settings_are_clear_errors(field, value, needle):
    with pytest.raises(ClipclError) as info:
        validate(SlurmSettings, {field: value}, "sweep.yaml", "slurm.")
    assert needle in str(info.value) and "sweep.yaml" in str(info.value)


def test_sbatch_flags_and_args():
    settings = SlurmSettings(partition="short", additional_parameters={"exclusive": True})
    res = type("R", (), {"gpus": 0, "cpus": 2, "mem_gb": 0.5, "timeout_min": 5})()
    flags = sbatch_flags(settings, res, "clipcl-x")
    assert flags["mem"] == "512M" and flags["partition"] == "short" and flags["exclusive"] is True
    assert "--exclusive" in flag_args(flags) and "--time=5" in flag_args(flags)


class Recorder:
    """A stand-in for Slurm's commands in unit tests: canned outputs, calls recorded."""

    def __init__(self, outputs: dict[str, tuple[int, str]]):
        self.outputs = outputs
        self.calls: list[list[str]] = []

    def __call__(self, args):
        self.calls.append(list(args))
        out = self.outputs.get(args[0], (0, ""))
        rc, text = out(args) if callable(out) else out
        return subprocess.CompletedProcess(args, rc, stdout=text, stderr=text if rc else "")


def test_sacct_is_batched_and_array_ranges_expand():
    ids = [f"{100 + i}" for i in range(950)] + ["7_0", "7_3", "7_9"]

    def sacct(args):
        asked = args[args.index("-j") + 1].split(",")
        lines = [f"{j}|COMPLETED" for j in asked if not j.startswith("7_")]
        if "7_0" in asked:
            lines += ["7_0|RUNNING", "7_[1-4,9%2]|PENDING", "7_5|CANCELLED by 0"]
        return 0, "\n".join(lines)

    run = Recorder({"sacct": sacct})
    states = sacct_states(ids, run, batch=400)
    assert len(run.calls) == 3  # 953 ids → 3 calls, never one per job
    assert states["7_0"] == "RUNNING" and states["7_3"] == "PENDING" and states["7_9"] == "PENDING"
    assert states["100"] == "COMPLETED" and "7_5" not in states


def test_job_states_fall_back_to_squeue_without_accounting():
    run = Recorder(
        {
            "sacct": (1, "sacct: error: Slurm accounting storage is disabled"),
            "squeue": (0, "5_0|RUNNING\n5_[1-2]|PENDING\n9|REQUEUED"),
        }
    )
    got = job_states(["5_0", "5_1", "5_2", "9", "11"], run)
    assert got == {"5_0": "running", "5_1": "queued", "5_2": "queued", "9": "queued", "11": "gone"}


def test_preempted_is_not_a_failure_while_queued():
    run = Recorder(
        {"sacct": (0, "3|PREEMPTED\n4|PREEMPTED\n5|TIMEOUT"), "squeue": (0, "3|PENDING")}
    )
    assert job_states(["3", "4", "5"], run) == {"3": "queued", "4": "failed", "5": "failed"}


def test_parse_time():
    assert parse_time_min("UNLIMITED") is None
    assert parse_time_min("00:10:00") == 10
    assert parse_time_min("1-02:00:00") == 26 * 60
    assert parse_time_min("30") == 30


PARTITIONS = (
    "PartitionName=debug Default=YES MaxTime=UNLIMITED State=UP\n"
    "PartitionName=short MaxTime=00:10:00 State=UP\n"
)


def _cluster(test_only_rc=0):
    def sinfo(args):
        if "-N" in args:
            return 0, "vm|2|20000|(null)"
        return 0, "debug*\nshort"

    return Recorder(
        {
            "scontrol": (0, PARTITIONS),
            "sinfo": sinfo,
            "sbatch": (test_only_rc, "sbatch: error: Invalid account or account/partition"),
        }
    )


def _res(**kw):
    base = {"gpus": 0, "cpus": 1, "mem_gb": 1, "timeout_min": 5}
    return type("R", (), {**base, **kw})()


@pytest.mark.parametrize(
    "settings,res,needle",
    [
        ({"partition": "gpu"}, {}, "slurm.partition 'gpu' does not exist"),
        ({"partition": "shrot"}, {}, "did you mean 'short'"),
        ({"partition": "short"}, {"timeout_min": 60}, "at most 10 min"),
        ({}, {"cpus": 64}, "has 2 CPUs"),
        ({}, {"mem_gb": 100}, "GiB of memory"),
        ({}, {"gpus": 1}, "has 0 GPUs"),
        ({"signal_delay_s": 300}, {}, "signal_delay_s=300 must be below"),
    ],
)
def test_preflight_refuses_impossible_requests(settings, res, needle):
    with pytest.raises(ClipclError) as info:
        preflight(SlurmSettings(**settings), _res(**res), "j", "s.yaml", runner=_cluster())
    assert needle in str(info.value) and "s.yaml" in str(info.value)


def test_preflight_reports_sbatch_verdict():
    run = _cluster(test_only_rc=1)
    with pytest.raises(ClipclError, match="refuses the job request: Invalid account"):
        preflight(SlurmSettings(account="x"), _res(), "j", "s.yaml", runner=run)
    assert [a for a in run.calls[-1] if a == "--test-only"] == ["--test-only"]
    assert preflight(SlurmSettings(), _res(), "j", "s.yaml", runner=_cluster()) == "debug"


def test_plan_groups_keep_array_indices_aligned():
    pytest.importorskip("submitit")
    from clipcl.slurm.submit import SlurmChain, plan_groups

    chains = [
        SlurmChain("a", Path("a"), 3, 0),
        SlurmChain("b", Path("b"), 3, 1),
        SlurmChain("c", Path("c"), 3, 0),
        SlurmChain("d", Path("d"), 5, 0),
        SlurmChain("e", Path("e"), 3, 0),
    ]
    groups = plan_groups(chains, max_array=2)
    assert [[c.chain_id for c in g] for g in groups] == [["a", "c"], ["e"], ["d"], ["b"]]


def _job(jid, state, first=0):
    return JobRow(jid, "c", "slurm", first, None, None, state, 0.0, None)


@pytest.mark.parametrize(
    "jobs,done,want",
    [
        ([_job("1", "running")], 1, "running"),
        ([_job("1", "done", 0), _job("2", "queued", 1)], 1, "queued"),
        ([_job("1", "done", 0), _job("2", "failed", 1), _job("3", "cancelled", 2)], 1, "failed"),
        ([_job("1", "cancelled")], 1, "cancelled"),
        ([_job("1", "done")], 3, "done"),
        ([_job("1", "done")], 2, "failed"),  # ended without finishing the chain
        ([_job("1", "gone")], 0, "failed"),
    ],
)
def test_chain_state_from_jobs(jobs, done, want):
    assert chain_state(jobs, done, 3)[0] == want


def test_backoff_grows_and_resets():
    b = Backoff(base=2, factor=2, cap=10)
    assert [b.next(False), b.next(False), b.next(False), b.next(True)] == [4, 8, 10, 2]


def test_max_array_size_parsed():
    run = Recorder({"scontrol": (0, "AccountingStorageType = x\nMaxArraySize            = 77\n")})
    assert commands.max_array_size(run) == 77


def test_store_of_schema_1_gains_the_jobs_table(tmp_path):
    import sqlite3

    from clipcl.results.store import ResultsStore

    with ResultsStore(tmp_path) as store:
        store.record_sweep("s", None, {}, [], provenance={})
    conn = sqlite3.connect(tmp_path / "clipcl.sqlite")
    conn.execute("DROP TABLE jobs")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with ResultsStore(tmp_path) as store:
        assert [r.name for r in store.sweeps()] == ["s"]
        assert store.jobs() == []


def test_one_watcher_asks_sacct_once_for_every_handle_and_backs_off(tmp_path):
    """Two chains' SlurmJob handles share one SacctWatcher: one sacct call per interval for
    both; the state is reconcile() of the job states and the chain's records on disk."""
    from clipcl.results.records import RunDir, TaskRecord
    from clipcl.slurm.backend import SacctWatcher, SlurmJob

    answers = {"10_0": "RUNNING", "10_1": "PENDING", "11": "PENDING", "12": "PENDING"}

    def sacct(args):
        asked = args[args.index("-j") + 1].split(",")
        return 0, "\n".join(f"{j}|{answers[j]}" for j in asked)

    run = Recorder({"sacct": sacct})
    watcher = SacctWatcher(run, base_s=0.0, cap_s=0.0)
    rows = [
        {"job_id": "10_0", "chain_id": "a", "backend": "slurm", "first_task": 0},
        {"job_id": "11", "chain_id": "b", "backend": "slurm", "first_task": 0},
        {"job_id": "12", "chain_id": "b", "backend": "slurm", "first_task": 1},
    ]
    a = SlurmJob("a", rows[:1], tmp_path / "a", 2, watcher)
    b = SlurmJob("b", rows[1:], tmp_path / "b", 2, watcher)
    assert (a.state(), b.state()) == ("running", "queued")
    assert b.job_ids == ["11", "12"] and b.records()[1]["job_id"] == "12"
    calls = [c for c in run.calls if c[0] == "sacct"]
    assert len(calls) == 2  # base interval 0: one query per state() call, never one per job
    assert sorted(calls[0][calls[0].index("-j") + 1].split(",")) == ["10_0", "11", "12"]
    # every task finished on disk: done, whatever the job says; a failed job after 1/2 tasks
    from clipcl.results.records import EvalRow

    def rows(run, pairs):  # a finished task counts with its rows
        run.append_rows([EvalRow(run.path.name, k, "t", i, "t", 1, 2) for k, i in pairs])

    done = RunDir(tmp_path / "a")
    done.path.mkdir()
    rows(done, [(0, 0), (1, 0), (1, 1)])
    done.save_state({"completed": {"0": {}, "1": {}}})
    answers.update({"11": "COMPLETED", "12": "FAILED"})
    rb = RunDir(tmp_path / "b")
    rb.path.mkdir()
    rows(rb, [(0, 0)])
    state = rb.load_state()
    state.completed[0] = TaskRecord()
    rb.save_state(state)
    assert a.state() == "done" and a.done()
    assert b.state() == "failed"
    assert "Slurm job 12 failed after 1/2 tasks" in b._judge()[1]
    # ended jobs are never asked about again; with a long interval nothing is asked at all
    before = len(run.calls)
    slow = SacctWatcher(run, base_s=3600.0, cap_s=3600.0)
    c = SlurmJob("c", [{"job_id": "10_1", "chain_id": "c"}], tmp_path / "c", 2, slow)
    assert c.state() == "queued" and c.state() == "queued"
    assert len(run.calls) == before + 1 and slow.queries == 1


def test_usr2_in_a_job_requests_a_stop_and_the_requeue_runs_submitits_handler(monkeypatch):
    """A preemption USR2 (the job's end time unknown: ``squeue`` knows no such job) requests
    the worker's stop at once; once the worker has stopped, the requeue calls the handler that
    was installed before (submitit's) exactly once, and the fallback timer is disarmed."""
    import signal

    from clipcl.slurm.submit import defer_requeue_to_deadline
    from clipcl.workers.stop import StopRequest

    calls: list[int] = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    alarm = signal.getsignal(signal.SIGALRM)
    monkeypatch.setenv("SLURM_JOB_ID", "999999999")
    stop = StopRequest()
    try:
        requeue = defer_requeue_to_deadline(10, stop)
        assert requeue is not None
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.reason == "SIGUSR2" and calls == []
        requeue(False)
        assert calls == [signal.SIGUSR2]
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGUSR2, before)
        signal.signal(signal.SIGALRM, alarm)


# ----- the run-root probe (clipcl.slurm.probe), Slurm's answers scripted -----
def _probe_cluster(nodes: str, run_wrap: set[str], finish: bool = True):
    """sinfo lists ``nodes``; sbatch runs the probe's shell command here for the nodes in
    ``run_wrap`` (their probe files appear) and not for the others (a node whose files land
    elsewhere); the jobs end at once when ``finish``, else stay pending."""
    submitted: dict[str, str] = {}

    def sbatch(args):
        node = args[args.index("-w") + 1]
        job = str(100 + len(submitted))
        submitted[job] = node
        if node in run_wrap:
            subprocess.run(["sh", "-c", args[args.index("--wrap") + 1]], check=True)
        return 0, job

    def squeue(args):
        state = "COMPLETED" if finish else "PENDING"
        return 0, "\n".join(f"{j}|{state}" for j in submitted) if not finish else ""

    run = Recorder(
        {
            "sinfo": (0, nodes),
            "sbatch": sbatch,
            "sacct": (1, "accounting storage is disabled"),
            "squeue": squeue,
            "scancel": (0, ""),
        }
    )
    return run, submitted


def test_the_probe_checks_every_usable_node_but_this_machine(tmp_path, monkeypatch):
    from clipcl.slurm import probe

    monkeypatch.setattr(probe.socket, "gethostname", lambda: "login.cluster")
    nodes = "n1|idle\nn2|mixed\nn3|down*\nn4|idle~\nlogin|idle\nn1|idle"
    run, submitted = _probe_cluster(nodes, {"n1", "n2"})
    got = probe.check_shared_root(tmp_path / "runs", "debug", timeout_s=30, runner=run)
    assert got.shared == ["n1", "n2"] and got.unchecked == {}
    assert sorted(submitted.values()) == ["n1", "n2"]  # not down, powered off, or this host
    sbatch = next(c for c in run.calls if c[0] == "sbatch")
    assert {"--no-requeue", "-p", "debug", "--time=1"} <= set(sbatch)
    assert not (tmp_path / "runs").exists()  # the probe cleans up the root it made


def test_a_node_whose_probe_file_is_not_visible_is_refused(tmp_path, monkeypatch):
    from clipcl.slurm import probe

    monkeypatch.setattr(probe, "VISIBLE_WAIT_S", 0.5)
    run, _ = _probe_cluster("n1|idle\nn2|idle", {"n1"})
    (tmp_path / "runs").mkdir()
    with pytest.raises(ClipclError) as info:
        probe.check_shared_root(tmp_path / "runs", "debug", timeout_s=30, runner=run)
    msg = str(info.value)
    assert "node n2 does not share the run root" in msg and "probe job 101 ended" in msg
    assert "check_root_s: 0" in msg and "nothing was submitted" in msg
    assert list((tmp_path / "runs").iterdir()) == []


def test_probes_still_queued_at_the_timeout_are_cancelled_not_fatal(tmp_path):
    from clipcl.slurm import probe

    run, submitted = _probe_cluster("n1|idle\nn2|allocated", set(), finish=False)
    got = probe.check_shared_root(
        tmp_path / "runs", "debug", timeout_s=0, runner=run, sleep=lambda s: None
    )
    assert got.shared == [] and set(got.unchecked) == {"n1", "n2"}
    assert "did not run within 0 s" in got.unchecked["n1"]
    assert ["scancel", *sorted(submitted)] in run.calls


def test_check_root_s_is_validated():
    assert SlurmSettings().check_root_s == 120
    with pytest.raises(ValueError):
        SlurmSettings(check_root_s=-1)


def test_a_refused_probe_cancels_the_probes_already_submitted(tmp_path):
    from clipcl.slurm import probe

    run, submitted = _probe_cluster("n1|idle\nn2|idle", set(), finish=False)
    sbatch = run.outputs["sbatch"]

    def refuse_second(args):
        if submitted:
            return 1, "sbatch: error: Invalid qos specification"
        return sbatch(args)

    run.outputs["sbatch"] = refuse_second
    with pytest.raises(ClipclError, match="sbatch refused the run-root probe for node n2"):
        probe.check_shared_root(tmp_path / "runs", "debug", timeout_s=30, runner=run)
    assert ["scancel", *submitted] in run.calls  # n1's probe does not stay queued
