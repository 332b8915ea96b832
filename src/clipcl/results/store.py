"""The results store: one SQLite database (WAL mode) per run root, ``<root>/clipcl.sqlite``.

This module owns the schema and every read and write of that database: sweeps and their
chains, chain states for the orchestrator, the evaluation rows and finished tasks ingested from
the chains' durable records (:mod:`clipcl.results.records` stays the source of truth: ingesting
again always converges to it), and provenance. Several processes may open one store at once:
writes are short ``BEGIN IMMEDIATE`` transactions and a busy connection waits up to 30 s.
SQLite's WAL mode needs a local file system (not NFS) for the root.
"""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipcl.errors import ClipclError, unknown_name
from clipcl.results.records import ZEROSHOT, ChainRecords, EvalRow

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["DB_NAME", "STATES", "ChainRecord", "ResultsStore", "collect_provenance", "config_hash"]

DB_NAME = "clipcl.sqlite"
STATES = ("new", "queued", "running", "done", "failed", "cancelled")
BUSY_TIMEOUT_S = 30.0
SCHEMA_VERSION = 2  # 2: the jobs table (scheduler jobs of each chain)
_PACKAGE_DIR = Path(__file__).resolve().parent
_VERSIONED = ("clipcl", "torch", "open_clip_torch", "ray")
# Core columns of eval_rows_frame(); a setting with one of these names is not repeated.
ROW_COLUMNS = ("trained_task", "trained_name", "eval_task", "eval_name", "correct", "total", "top1")
CHAIN_COLUMNS = ("chain_id", "sweep", "method", "benchmark", "protocol", "seed")
# Timestamps each state sets ("now") or clears (None).
_STAMPS: dict[str, dict[str, str | None]] = {
    "new": {"submitted": None, "started": None, "finished": None},
    "queued": {"submitted": "now", "started": None, "finished": None},
    "running": {"started": "now", "finished": None},
    **{s: {"finished": "now"} for s in ("done", "failed", "cancelled")},
}
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY, source TEXT, config_json TEXT NOT NULL DEFAULT '{{}}',
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chains (
    chain_id TEXT PRIMARY KEY, method TEXT NOT NULL, benchmark TEXT NOT NULL, protocol TEXT,
    seed INTEGER, settings_json TEXT NOT NULL DEFAULT '{{}}',
    spec_json TEXT NOT NULL DEFAULT '{{}}', config_hash TEXT, num_tasks INTEGER,
    task_names_json TEXT NOT NULL DEFAULT '{{}}',
    state TEXT NOT NULL DEFAULT 'new' CHECK (state IN {STATES}),
    backend TEXT, job_id TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    submitted REAL, started REAL, finished REAL, error TEXT, ingest_sig TEXT);
CREATE INDEX IF NOT EXISTS chains_state ON chains (state);
CREATE TABLE IF NOT EXISTS sweep_chains (
    sweep TEXT NOT NULL REFERENCES sweeps (name) ON DELETE CASCADE,
    chain_id TEXT NOT NULL REFERENCES chains (chain_id) ON DELETE CASCADE,
    PRIMARY KEY (sweep, chain_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sweep_chains_chain ON sweep_chains (chain_id);
CREATE TABLE IF NOT EXISTS tasks (
    chain_id TEXT NOT NULL REFERENCES chains (chain_id) ON DELETE CASCADE,
    task_index INTEGER NOT NULL, name TEXT, finished_at REAL, seconds REAL,
    PRIMARY KEY (chain_id, task_index)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS eval_rows (
    chain_id TEXT NOT NULL REFERENCES chains (chain_id) ON DELETE CASCADE,
    trained_task INTEGER NOT NULL, eval_task INTEGER NOT NULL, trained_name TEXT, eval_name TEXT,
    correct INTEGER NOT NULL, total INTEGER NOT NULL, top1 REAL,
    PRIMARY KEY (chain_id, trained_task, eval_task)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS provenance (
    scope TEXT NOT NULL CHECK (scope IN ('sweep', 'chain')), owner TEXT NOT NULL,
    key TEXT NOT NULL, value_json TEXT, PRIMARY KEY (scope, owner, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    chain_id TEXT NOT NULL REFERENCES chains (chain_id) ON DELETE CASCADE,
    backend TEXT NOT NULL, first_task INTEGER, last_task INTEGER, log_dir TEXT,
    state TEXT NOT NULL DEFAULT 'queued', submitted REAL NOT NULL, updated REAL);
CREATE INDEX IF NOT EXISTS jobs_chain ON jobs (chain_id);
PRAGMA user_version = {SCHEMA_VERSION}
"""


def config_hash(spec: Mapping[str, Any]) -> str:
    """Hash of a resolved spec without ``seed`` and ``keep_checkpoints``: seeds of one setting
    share it."""
    rest = {k: v for k, v in spec.items() if k not in ("seed", "keep_checkpoints")}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ChainRecord:
    """What the store knows about a chain before it runs.

    Attributes:
        chain_id: The chain's id (its run directory is ``<root>/chains/<chain_id>``).
        method: Method name.
        benchmark: Benchmark name.
        protocol: ``"til"`` or ``"cil"`` (None when the benchmark is unknown here).
        seed: The chain's seed.
        settings: The varied non-seed settings, dotted key → value.
        spec: The resolved ChainSpec as JSON data.
        num_tasks: Number of tasks of the benchmark (None when unknown).
    """

    chain_id: str
    method: str
    benchmark: str
    protocol: str | None
    seed: int | None
    settings: Mapping[str, Any] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)
    num_tasks: int | None = None

    @classmethod
    def from_spec(
        cls, chain_id: str, spec: Mapping[str, Any], settings: Mapping[str, Any] | None = None
    ) -> ChainRecord:
        """Build a record from a ``spec.json`` mapping (protocol and tasks from the registry)."""
        from clipcl.data import benchmark_info  # imports torch: only when really needed

        method = spec.get("method", {})
        benchmark = str(spec.get("benchmark", "?"))
        try:
            info = benchmark_info(benchmark)
            protocol, num_tasks = info.protocol, len(info.task_names)
        except ClipclError:
            protocol, num_tasks = None, None
        seed = spec.get("seed")
        return cls(
            chain_id=chain_id,
            method=str(method.get("name", "?") if isinstance(method, Mapping) else method),
            benchmark=benchmark,
            protocol=protocol,
            seed=None if seed is None else int(seed),
            settings=dict(settings or {}),
            spec=dict(spec),
            num_tasks=num_tasks,
        )


def _run(args: list[str]) -> str | None:
    try:
        done = subprocess.run(
            args, cwd=_PACKAGE_DIR, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _device() -> str | None:
    torch = sys.modules.get("torch")  # never import torch just to describe the machine
    if torch is None:
        return None
    try:
        return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 - provenance must never fail
        return None


def collect_provenance(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Describe the code and machine producing results; never raises.

    Args:
        config: The sweep or chain configuration to hash (``config_hash``), if any.

    Returns:
        git commit and dirty flag of the package's repository (None outside a git checkout),
        package versions, host, python, platform, device (when torch is already imported),
        config hash and time.
    """
    commit = _run(["git", "rev-parse", "HEAD"])
    status = _run(["git", "--no-optional-locks", "status", "--porcelain"]) if commit else None
    digest = None
    if config is not None:
        text = json.dumps(config, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
        "versions": {name: _version(name) for name in _VERSIONED},
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": _device(),
        "config_hash": digest,
        "time": time.time(),
    }


def _signature(records: ChainRecords) -> str:
    """Changes whenever the chain's state or rows change (atomic replace, append)."""
    parts = []
    for path in (records.state_path, records.rows_path):
        try:
            st = path.stat()
            parts.append(f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
        except FileNotFoundError:
            parts.append("-")
    return "|".join(parts)


class ResultsStore:
    """The SQLite results store of one run root; one connection per instance.

    Use as a context manager or call :meth:`close`, from one thread. Safe to open from several
    processes at once.
    """

    def __init__(self, root: Path) -> None:
        """Open (creating the root and the schema if needed) ``<root>/clipcl.sqlite``."""
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClipclError(f"cannot create the run root {self.root}: {exc}") from None
        self.path = self.root / DB_NAME
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")  # persistent; a no-op once set
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL stays consistent; rows re-ingest
        conn.execute("PRAGMA foreign_keys = ON")
        self._conn = conn
        self._create_schema()

    def _create_schema(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ClipclError(
                f"{self.path} has schema version {version}; this clipcl reads up to "
                f"{SCHEMA_VERSION}: upgrade clipcl"
            )
        if version < SCHEMA_VERSION:
            with self._write() as c:
                for statement in _SCHEMA.split(";"):
                    c.execute(statement)

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front (no upgrade deadlocks)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # ----- sweeps, chains, states -----
    def record_sweep(
        self,
        name: str,
        source: str | None,
        config: Mapping[str, Any],
        chains: Iterable[ChainRecord],
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        """Record (or re-record) a sweep and its chains; idempotent.

        New chains start in state ``new``; known chains keep their state, attempts and job
        while their description (method, settings, spec, ...) is refreshed; a chain is linked
        to the sweep once. ``provenance`` defaults to :func:`collect_provenance` of ``config``.
        """
        now = time.time()
        prov = collect_provenance(config) if provenance is None else provenance
        with self._write() as c:
            c.execute(
                "INSERT INTO sweeps (name, source, config_json, created, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "source = excluded.source, config_json = excluded.config_json, "
                "updated = excluded.updated",
                (name, source, json.dumps(config, sort_keys=True, default=str), now, now),
            )
            for rec in chains:
                self._upsert_chain(c, rec, replace=True)
                c.execute("INSERT OR IGNORE INTO sweep_chains VALUES (?, ?)", (name, rec.chain_id))
            self._put_provenance(c, "sweep", name, prov)

    @staticmethod
    def _upsert_chain(c: sqlite3.Connection, rec: ChainRecord, *, replace: bool) -> None:
        conflict = (
            "DO UPDATE SET method = excluded.method, benchmark = excluded.benchmark, "
            "protocol = excluded.protocol, seed = excluded.seed, "
            "settings_json = excluded.settings_json, spec_json = excluded.spec_json, "
            "config_hash = excluded.config_hash, num_tasks = excluded.num_tasks"
            if replace
            else "DO NOTHING"
        )
        c.execute(
            "INSERT INTO chains (chain_id, method, benchmark, protocol, seed, settings_json, "
            f"spec_json, config_hash, num_tasks) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT (chain_id) {conflict}",
            (
                rec.chain_id,
                rec.method,
                rec.benchmark,
                rec.protocol,
                rec.seed,
                json.dumps(dict(rec.settings), sort_keys=True, default=str),
                json.dumps(dict(rec.spec), sort_keys=True, default=str),
                config_hash(rec.spec),
                rec.num_tasks,
            ),
        )

    def set_state(
        self,
        chain_id: str,
        state: str,
        *,
        backend: str | None = None,
        job_id: str | None = None,
        error: str | None = None,
        count_attempt: bool = False,
    ) -> None:
        """Move one chain to ``state``; see :meth:`set_states`."""
        kw = {"backend": backend, "job_id": job_id, "error": error}
        self.set_states([chain_id], state, count_attempt=count_attempt, **kw)

    def set_states(
        self,
        chain_ids: Iterable[str],
        state: str,
        *,
        backend: str | None = None,
        job_id: str | None = None,
        error: str | None = None,
        count_attempt: bool = False,
    ) -> None:
        """Move chains to ``state`` in one transaction.

        ``queued`` stamps ``submitted`` (and clears ``started``/``finished``), ``running``
        stamps ``started``, ``done``/``failed``/``cancelled`` stamp ``finished`` and ``new``
        clears all three. ``backend``/``job_id`` are kept unless given; ``error`` is kept
        only for ``failed``/``cancelled``; ``count_attempt`` adds one to ``attempts``.

        Raises:
            ClipclError: If the state or a chain id is unknown (then nothing changes).
        """
        if state not in STATES:
            raise unknown_name("chain state", state, STATES)
        now = time.time()
        stamps = {col: now if value == "now" else None for col, value in _STAMPS[state].items()}
        sets = "".join(f"{col} = ?, " for col in stamps)
        sql = (
            f"UPDATE chains SET state = ?, {sets}backend = COALESCE(?, backend), "
            "job_id = COALESCE(?, job_id), error = ?, attempts = attempts + ? WHERE chain_id = ?"
        )
        keep_error = error if state in ("failed", "cancelled") else None
        head = (state, *stamps.values(), backend, job_id, keep_error, int(count_attempt))
        with self._write() as c:
            for chain_id in chain_ids:
                if c.execute(sql, (*head, chain_id)).rowcount == 0:
                    raise ClipclError(f"unknown chain '{chain_id}' in {self.path}")

    # ----- ingestion of the durable records -----
    def ingest_chain(self, chain_id: str, run_dir: Path) -> int:
        """Upsert a chain's finished eval rows and tasks from its run directory.

        Rows of tasks no longer finished (a recomputed task) are removed, so the store always
        mirrors :meth:`ChainRecords.finished_rows`. A chain unknown to the store is recorded
        from its ``spec.json``. When every task is finished (and the store knows the number of
        tasks) the chain becomes ``done``.

        Returns:
            The number of eval rows stored for the chain.

        Raises:
            ClipclError: If the run directory's records cannot be read.
        """
        records = ChainRecords(Path(run_dir))
        sig = _signature(records)  # before reading: a later write changes it again
        try:
            state = records.load_state()  # one snapshot of the finished tasks
            rows = records.read_rows()
            known = self._conn.execute("SELECT 1 FROM chains WHERE chain_id = ?", (chain_id,))
            spec = None if known.fetchone() else json.loads(records.spec_path.read_text())
        except (OSError, ValueError) as exc:
            msg = f"cannot read the records of chain {chain_id} in {run_dir}: {exc}"
            raise ClipclError(msg) from None
        completed = {int(k): v for k, v in state.get("completed", {}).items()}
        done = set(completed) | ({ZEROSHOT} if state.get("zeroshot_done") else set())
        rows = [r for r in rows if r.trained_task in done]
        with self._write() as c:
            if spec is not None:
                self._upsert_chain(c, ChainRecord.from_spec(chain_id, spec), replace=False)
            self._put_rows(c, chain_id, completed, rows, done)
            last = max((v.get("finished_at") or 0 for v in completed.values()), default=0)
            c.execute(
                "UPDATE chains SET state = 'done', finished = ?, error = NULL WHERE chain_id = ? "
                "AND state != 'done' AND num_tasks IS NOT NULL AND num_tasks <= ?",
                (last or time.time(), chain_id, len(completed)),
            )
            c.execute("UPDATE chains SET ingest_sig = ? WHERE chain_id = ?", (sig, chain_id))
            query = "SELECT COUNT(*) FROM eval_rows WHERE chain_id = ?"
            return int(c.execute(query, (chain_id,)).fetchone()[0])

    @staticmethod
    def _put_rows(
        c: sqlite3.Connection,
        chain_id: str,
        completed: Mapping[int, Mapping[str, Any]],
        rows: list[EvalRow],
        done: set[int],
    ) -> None:
        """Upsert tasks, eval rows and task names; drop those of tasks no longer finished."""
        names = {r.eval_task: r.eval_name for r in rows}
        names.update({r.trained_task: r.trained_name for r in rows})
        c.executemany(
            "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?)",
            [
                (chain_id, k, names.get(k), v.get("finished_at"), v.get("seconds"))
                for k, v in completed.items()
            ],
        )
        c.executemany(
            "INSERT OR REPLACE INTO eval_rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (chain_id, r.trained_task, r.eval_task, r.trained_name, r.eval_name)
                + (r.correct, r.total, r.top1 if r.total else None)
                for r in rows
            ],
        )
        stale = "chain_id = ? AND {} NOT IN (SELECT value FROM json_each(?))"
        keep = (chain_id, json.dumps(sorted(completed)))
        c.execute("DELETE FROM tasks WHERE " + stale.format("task_index"), keep)
        keep = (chain_id, json.dumps(sorted(done)))
        c.execute("DELETE FROM eval_rows WHERE " + stale.format("trained_task"), keep)
        c.execute(
            "UPDATE chains SET task_names_json = json_patch(task_names_json, ?) WHERE chain_id = ?",
            (json.dumps({str(k): v for k, v in sorted(names.items())}), chain_id),
        )

    def ingest_root(self, root: Path | None = None) -> int:
        """Ingest every chain directory with a ``spec.json`` under ``<root>/chains/``.

        Chains whose records did not change since their last ingestion are skipped.

        Args:
            root: The run root; defaults to the store's own root.

        Returns:
            The number of chains (re)ingested.
        """
        chains_dir = Path(root if root is not None else self.root) / "chains"
        if not chains_dir.is_dir():
            return 0
        sigs = dict(self._conn.execute("SELECT chain_id, ingest_sig FROM chains").fetchall())
        count = 0
        for run_dir in sorted(chains_dir.iterdir()):
            records = ChainRecords(run_dir)
            if not records.spec_path.is_file():
                continue
            if run_dir.name in sigs and sigs[run_dir.name] == _signature(records):
                continue
            self.ingest_chain(run_dir.name, run_dir)
            count += 1
        return count

    # ----- queries -----
    def _dicts(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = self._conn.execute(sql, params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def chain(self, chain_id: str) -> dict[str, Any] | None:
        """The chain's row (settings and spec decoded), or None if unknown."""
        row = self._dicts("SELECT * FROM chains WHERE chain_id = ?", (chain_id,))
        if not row:
            return None
        out = row[0]
        out["settings"] = json.loads(out.pop("settings_json"))
        out["spec"] = json.loads(out.pop("spec_json"))
        return out

    def sweeps(self) -> list[dict[str, Any]]:
        """Every sweep: name, source, created, updated and its number of chains."""
        return self._dicts(
            "SELECT name, source, created, updated, "
            "(SELECT COUNT(*) FROM sweep_chains s WHERE s.sweep = name) AS chains "
            "FROM sweeps ORDER BY name"
        )

    def _check_sweep(self, sweep: str) -> None:
        query = "SELECT 1 FROM sweeps WHERE name = ?"
        if self._conn.execute(query, (sweep,)).fetchone() is None:
            names = [r["name"] for r in self.sweeps()]
            raise unknown_name(f"sweep (in {self.path})", sweep, names)

    def _chain_filter(
        self, sweep: str | None, alias: str = "c", check: bool = True
    ) -> tuple[str, tuple[str, ...]]:
        if sweep is None:
            return "", ()
        if check:
            self._check_sweep(sweep)
        return (
            f"WHERE {alias}.chain_id IN (SELECT chain_id FROM sweep_chains WHERE sweep = ?)",
            (sweep,),
        )

    def chain_progress(self, sweep: str | None = None) -> list[dict[str, Any]]:
        """Per chain (sorted by id): chain_id, method, benchmark, seed, settings, state,
        tasks_done, num_tasks, attempts, backend, job_id, error; one query. An unknown
        ``sweep`` has no chains.
        """
        where, params = self._chain_filter(sweep, check=False)
        out = self._dicts(
            "SELECT c.chain_id, c.method, c.benchmark, c.seed, c.settings_json AS settings, "
            "c.state, COALESCE(t.n, 0) AS tasks_done, c.num_tasks, c.attempts, c.backend, "
            "c.job_id, c.error FROM chains c LEFT JOIN (SELECT chain_id, COUNT(*) AS n "
            f"FROM tasks GROUP BY chain_id) t ON t.chain_id = c.chain_id {where} "
            "ORDER BY c.chain_id",
            params,
        )
        for row in out:
            row["settings"] = json.loads(row["settings"])
        return out

    # ----- scheduler jobs (one chain may have several: requeues keep the id, per-task mode
    # submits one job per task) -----
    def record_jobs(self, jobs: Iterable[Mapping[str, Any]]) -> None:
        """Record submitted jobs: dicts with job_id, chain_id, backend and optionally
        first_task, last_task (the tasks the job runs) and log_dir."""
        now = time.time()
        with self._write() as c:
            for j in jobs:
                c.execute(
                    "INSERT OR REPLACE INTO jobs (job_id, chain_id, backend, first_task, "
                    "last_task, log_dir, state, submitted, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (
                        str(j["job_id"]),
                        j["chain_id"],
                        j["backend"],
                        j.get("first_task"),
                        j.get("last_task"),
                        j.get("log_dir"),
                        now,
                        now,
                    ),
                )

    def jobs(
        self, chain_ids: Iterable[str] | None = None, backend: str | None = None
    ) -> list[dict[str, Any]]:
        """Recorded jobs (oldest first), optionally of some chains and one backend."""
        sql, params = "SELECT * FROM jobs WHERE 1 = 1", []
        if backend is not None:
            sql += " AND backend = ?"
            params.append(backend)
        rows = self._dicts(sql + " ORDER BY submitted, job_id", tuple(params))
        if chain_ids is not None:
            wanted = set(chain_ids)
            rows = [r for r in rows if r["chain_id"] in wanted]
        return rows

    def set_job_states(self, states: Mapping[str, str]) -> None:
        """Update the last known state of jobs (job id → state)."""
        now = time.time()
        with self._write() as c:
            c.executemany(
                "UPDATE jobs SET state = ?, updated = ? WHERE job_id = ?",
                [(state, now, job_id) for job_id, state in states.items()],
            )

    # ----- provenance -----
    @staticmethod
    def _put_provenance(
        c: sqlite3.Connection, scope: str, owner: str, info: Mapping[str, Any]
    ) -> None:
        c.executemany(
            "INSERT OR REPLACE INTO provenance VALUES (?, ?, ?, ?)",
            [(scope, owner, k, json.dumps(v, default=str)) for k, v in info.items()],
        )

    def record_provenance(self, scope: str, owner: str, info: Mapping[str, Any]) -> None:
        """Store ``info`` (key → JSON value) for a sweep or chain; keys are replaced.

        Args:
            scope: ``"sweep"`` or ``"chain"``.
            owner: The sweep name or chain id.
            info: For example :func:`collect_provenance` of the running worker.
        """
        with self._write() as c:
            self._put_provenance(c, scope, owner, info)

    def provenance(self, scope: str, owner: str) -> dict[str, Any]:
        """The provenance stored for a sweep or chain (empty if none)."""
        cur = self._conn.execute(
            "SELECT key, value_json FROM provenance WHERE scope = ? AND owner = ? ORDER BY key",
            (scope, owner),
        )
        return {k: json.loads(v) for k, v in cur.fetchall()}

    # ----- data frames -----
    def _chains_frame(self, sweep: str | None) -> tuple[pd.DataFrame, list[dict[str, str]]]:
        """The chain columns of :meth:`eval_rows_frame` (a row per chain, by id), task names."""
        import pandas as pd

        where, params = self._chain_filter(sweep)
        label = "?" if sweep is not None else _FIRST_SWEEP
        fetched = self._conn.execute(
            f"SELECT c.chain_id, {label}, c.method, c.benchmark, c.protocol, c.seed, "
            "c.num_tasks, c.config_hash, c.settings_json, c.task_names_json "
            f"FROM chains c {where} ORDER BY c.chain_id",
            params * 2,
        ).fetchall()
        cols = list(zip(*fetched, strict=True)) or [()] * 10
        frame = pd.DataFrame(
            {k: pd.Series(cols[i], dtype=object) for i, k in enumerate(CHAIN_COLUMNS)}
        )
        frame["seed"] = pd.array(cols[5], dtype="Int64")
        settings = pd.DataFrame([_flat_settings(text) for text in cols[8]], index=frame.index)
        frame = pd.concat(
            [frame, settings[[k for k in sorted(settings) if k not in _CORE]]], axis=1
        )
        frame["num_tasks"] = pd.array(cols[6], dtype="Int64")
        frame["config"] = pd.Series(cols[7], dtype=object)
        return frame, [json.loads(text) for text in cols[9]]

    def _row_arrays(self, sweep: str | None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Chain ids (sorted), rows per chain and the rows as int64 (n, 4): trained_task,
        eval_task, correct, total, chain after chain.

        Each row is packed into one integer inside SQLite (a string per chain instead of a
        Python tuple per row: ~5x faster); values too large to pack use plain rows.
        """
        import numpy as np

        where, params = self._chain_filter(sweep, alias="e", check=False)
        got = self._conn.execute(
            f"SELECT chain_id, COUNT(*), group_concat(CASE WHEN {_FITS} THEN {_PACK} END, ' ') "
            f"FROM eval_rows e {where} GROUP BY chain_id ORDER BY chain_id",
            params,
        ).fetchall()
        ids, counts = [r[0] for r in got], np.array([r[1] for r in got], dtype=np.int64)
        packed = np.fromstring(" ".join(r[2] for r in got if r[2]), dtype=np.int64, sep=" ")
        if len(packed) == counts.sum():
            mask = (1 << 20) - 1
            rest = packed >> 40
            cols = ((rest >> 11) - 1, rest & 2047, (packed >> 20) & mask, packed & mask)
            return ids, counts, np.stack(cols, axis=1)
        rows = self._conn.execute(
            "SELECT chain_id, trained_task, eval_task, correct, total FROM eval_rows e "
            f"{where} ORDER BY chain_id",
            params,
        ).fetchall()
        return ids, counts, np.array([r[1:] for r in rows], dtype=np.int64).reshape(-1, 4)

    def eval_rows_frame(self, sweep: str | None = None) -> pd.DataFrame:
        """Every stored eval row joined with its chain's description.

        Columns: chain_id, sweep (None for chains of no sweep; the first sweep by name when
        ``sweep`` is None and a chain is in several), method, benchmark, protocol, seed, one
        column per dotted setting, num_tasks, config (hash of the spec without seed),
        trained_task (-1: zero-shot), trained_name, eval_task, eval_name, correct, total, top1.
        Rows are sorted by chain, trained task and eval task.

        Raises:
            ClipclError: If ``sweep`` is given and unknown.
        """
        import numpy as np
        import pandas as pd

        chains, names = self._chains_frame(sweep)
        ids, counts, arr = self._row_arrays(sweep)
        key = np.repeat(np.arange(len(ids)) << 22, counts) + ((arr[:, 0] + 1) << 11) + arr[:, 1]
        if len(key) and not (np.diff(key) > 0).all():  # SQLite gives them sorted in practice
            arr = arr[np.argsort(key, kind="stable")]
        at = np.repeat(pd.Index(chains["chain_id"]).get_indexer(ids), counts)
        width = 2 + max((int(k) for n in names for k in n), default=0)
        table = np.full((len(names), width), None, dtype=object)  # column k + 1: task k
        for i, mapping in enumerate(names):
            for k, name in mapping.items():
                table[i, int(k) + 1] = name
        frame = chains.take(at).reset_index(drop=True)
        tt, et, correct, total = arr.T
        frame["trained_task"], frame["trained_name"] = tt, table[at, tt + 1]
        frame["eval_task"], frame["eval_name"] = et, table[at, et + 1]
        frame["correct"], frame["total"] = correct, total
        with np.errstate(invalid="ignore", divide="ignore"):
            frame["top1"] = np.where(total > 0, 100.0 * correct / total, np.nan)
        return frame


_CORE = frozenset((*CHAIN_COLUMNS, *ROW_COLUMNS, "num_tasks", "config"))
_FIRST_SWEEP = "(SELECT MIN(s.sweep) FROM sweep_chains s WHERE s.chain_id = c.chain_id)"
# One eval row as one int64: tasks in 11 bits each (trained_task + 1), correct/total in 20.
_PACK = "((trained_task + 1) * 2048 + eval_task) * 1099511627776 + correct * 1048576 + total"
_FITS = (
    "trained_task BETWEEN -1 AND 2046 AND eval_task BETWEEN 0 AND 2047 "
    "AND correct BETWEEN 0 AND 1048575 AND total BETWEEN 0 AND 1048575"
)


def _flat_settings(text: str) -> dict[str, Any]:
    """Settings as column values: lists and mappings become JSON text (hashable)."""
    return {
        k: json.dumps(v, sort_keys=True) if isinstance(v, list | dict) else v
        for k, v in json.loads(text).items()
    }
