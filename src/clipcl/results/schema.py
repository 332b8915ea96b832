"""The results database: its schema, version and migration, connections and shared statements.

Owns the DDL of ``<root>/clipcl.sqlite`` (sweeps, chains, sweep_chains, tasks, eval_rows,
provenance, jobs), :data:`SCHEMA_VERSION` and the upgrade of older files, how a connection is
opened (WAL, busy timeout, foreign keys), the ``BEGIN IMMEDIATE`` write transaction, and the
statements that several writers share (the chain upsert, the sweep filter).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from clipcl.errors import ClipclError, unknown_name
from clipcl.results.provenance import config_hash
from clipcl.results.rows import ChainRecord

if TYPE_CHECKING:
    from clipcl.results.pg import PgConnection

#: A store connection: SQLite's, or a PostgreSQL one taking the same statements.
Conn: TypeAlias = "sqlite3.Connection | PgConnection"

__all__ = [
    "BUSY_TIMEOUT_S",
    "DB_NAME",
    "SCHEMA_VERSION",
    "SCHEMA_SQL",
    "STATES",
    "connect",
    "write",
]

DB_NAME = "clipcl.sqlite"
STATES = ("new", "queued", "running", "done", "failed", "cancelled")
BUSY_TIMEOUT_S = 30.0
SCHEMA_VERSION = 4  # 2: the jobs table (scheduler jobs of each chain); 3: tasks' throughput;
# 4: eval rows' top-5 (correct5), the in-task rows (intask_rows), the held-out sets' rows
# (heldout_rows)
#: Per-task throughput and where the task ran (schema 3), in the order of the tasks table.
TASK_RECORD_COLUMNS = (
    ("device", "TEXT"),
    ("steps", "INTEGER"),
    ("samples", "INTEGER"),
    ("train_seconds", "REAL"),
    ("eval_seconds", "REAL"),
    ("eval_samples", "INTEGER"),
    ("startup_seconds", "REAL"),
    ("attempt", "INTEGER"),
    ("host", "TEXT"),
    ("ip", "TEXT"),
    ("gpu_uuid", "TEXT"),
    ("job_id", "TEXT"),
    ("started_at", "REAL"),
)
#: Columns later versions added to a table of an older file, (table, column, SQLite type).
ADDED_COLUMNS = tuple(("tasks", column, kind) for column, kind in TASK_RECORD_COLUMNS) + (
    ("eval_rows", "correct5", "INTEGER"),
)
SCHEMA_SQL = f"""
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
    device TEXT, steps INTEGER, samples INTEGER, train_seconds REAL, eval_seconds REAL,
    eval_samples INTEGER, startup_seconds REAL, attempt INTEGER, host TEXT, ip TEXT,
    gpu_uuid TEXT, job_id TEXT, started_at REAL,
    PRIMARY KEY (chain_id, task_index)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS eval_rows (
    chain_id TEXT NOT NULL REFERENCES chains (chain_id) ON DELETE CASCADE,
    trained_task INTEGER NOT NULL, eval_task INTEGER NOT NULL, trained_name TEXT, eval_name TEXT,
    correct INTEGER NOT NULL, total INTEGER NOT NULL, top1 REAL, correct5 INTEGER,
    PRIMARY KEY (chain_id, trained_task, eval_task)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS intask_rows (
    chain_id TEXT NOT NULL REFERENCES chains (chain_id) ON DELETE CASCADE,
    trained_task INTEGER NOT NULL, step INTEGER NOT NULL, eval_task INTEGER NOT NULL,
    eval_name TEXT, correct INTEGER NOT NULL, total INTEGER NOT NULL, correct5 INTEGER,
    PRIMARY KEY (chain_id, trained_task, step, eval_task)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS heldout_rows (
    chain_id TEXT NOT NULL REFERENCES chains (chain_id) ON DELETE CASCADE,
    trained_task INTEGER NOT NULL, eval_task INTEGER NOT NULL, trained_name TEXT,
    dataset TEXT NOT NULL, correct INTEGER NOT NULL, total INTEGER NOT NULL, correct5 INTEGER,
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


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` (autocommit; WAL; 30 s busy timeout; foreign keys) with the schema current.

    Raises:
        ClipclError: If the file was written by a newer clipcl (a higher schema version).
    """
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise store_error(path, exc) from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")  # persistent; a no-op once set
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL stays consistent; rows re-ingest
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise store_error(path, exc) from None
    except BaseException:
        conn.close()
        raise
    return conn


class StoreDamaged(ClipclError):
    """The store's file is not a readable SQLite database (garbage, truncated, ...)."""


def store_error(path: Path, exc: sqlite3.Error) -> ClipclError:
    """One line for a failed store operation: damaged (rebuild it) or not writable."""
    text = str(exc)
    if "readonly" in text or "unable to open" in text or "disk I/O" in text:
        return ClipclError(
            f"cannot write the results store {path} ({text}): the run root must be writable"
        )
    root = path.parent
    named = root / "root"  # a store kept on local disk names its run root (results/location.py)
    if named.is_file():
        root = Path(named.read_text().strip())
    return StoreDamaged(
        f"{path} is damaged ({text}); it holds nothing the chain records do not: "
        f"`clipcl store rebuild --root {root}` rebuilds it from them (add `--sweep "
        "FILE` for each sweep to name its chains again; the damaged file is kept beside it)"
    )


def _migrate(conn: Conn, path: Path) -> None:
    """Create the schema, or bring an older one up to :data:`SCHEMA_VERSION`.

    Every statement is ``IF NOT EXISTS``: version 1 files gain the jobs table; the tasks
    table of version 1 and 2 files gains the throughput columns and the eval rows of version
    1–3 files ``correct5`` (``ADDED_COLUMNS``; ``NULL`` until the chain's records are ingested
    again; records older than those fields stay ``NULL``).
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ClipclError(
            f"{path} has schema version {version}; this clipcl reads up to "
            f"{SCHEMA_VERSION}: upgrade clipcl"
        )
    if version < SCHEMA_VERSION:
        with write(conn) as c:
            for table, column, kind in ADDED_COLUMNS:
                have = {row[1] for row in c.execute(f"PRAGMA table_info({table})")}
                if have and column not in have:  # an older file's table
                    c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            for statement in SCHEMA_SQL.split(";"):
                c.execute(statement)


@contextmanager
def write(conn: Conn) -> Iterator[Conn]:
    """A write transaction that takes the write lock up front (no upgrade deadlocks); on a
    PostgreSQL store, the root's advisory lock (:meth:`clipcl.results.pg.PgConnection.write`)."""
    if getattr(conn, "dialect", "sqlite") == "postgresql":
        with conn.write() as c:  # type: ignore[union-attr]
            yield c
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def concat(conn: object, expr: str, sep: str = ",", distinct: bool = False) -> str:
    """SQL concatenating ``expr`` over a group with ``sep`` (SQLite's ``group_concat``,
    PostgreSQL's ``string_agg``); SQLite takes no separator with DISTINCT (it uses ',')."""
    if getattr(conn, "dialect", "sqlite") == "postgresql":
        return f"string_agg({'DISTINCT ' if distinct else ''}({expr})::text, '{sep}')"
    if distinct:
        return f"group_concat(DISTINCT {expr})"
    return f"group_concat({expr}, '{sep}')"


def upsert_chain(c: Conn, rec: ChainRecord, *, replace: bool) -> None:
    """Insert a chain's description; a known chain is refreshed (``replace``) or left alone.

    State, attempts, job and timestamps of a known chain are never touched.
    """
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


def sweep_filter(
    conn: Conn, path: Path | str, sweep: str | None, alias: str = "c", check: bool = True
) -> tuple[str, tuple[str, ...]]:
    """A ``WHERE`` clause (and its parameters) keeping the chains of ``sweep`` (all if None).

    Args:
        conn: The store's connection.
        path: The database file or store URL (named in errors).
        sweep: The sweep's name, or None for every chain.
        alias: The alias of the queried table that has a ``chain_id`` column.
        check: Whether an unknown sweep raises (else it simply has no chains).

    Raises:
        ClipclError: If ``check`` and the sweep is unknown.
    """
    if sweep is None:
        return "", ()
    if check and conn.execute("SELECT 1 FROM sweeps WHERE name = ?", (sweep,)).fetchone() is None:
        names = [r[0] for r in conn.execute("SELECT name FROM sweeps ORDER BY name")]
        raise unknown_name(f"sweep (in {path})", sweep, names)
    return (
        f"WHERE {alias}.chain_id IN (SELECT chain_id FROM sweep_chains WHERE sweep = ?)",
        (sweep,),
    )
