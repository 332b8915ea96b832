"""The results store: one SQLite database (WAL mode) per run root, ``<root>/clipcl.sqlite``
(on local disk instead when the root is on a network filesystem: :mod:`clipcl.results.location`).

This module owns :class:`ResultsStore`, the one object through which callers read and write
that database: sweeps and their chains, chain states for the orchestrator, the scheduler jobs
of each chain, provenance, and (delegated) ingestion and the pandas frame. It hands out the
frozen rows of :mod:`clipcl.results.rows`. The schema lives in :mod:`clipcl.results.schema`,
ingestion of the chains' durable records in :mod:`clipcl.results.ingest`, the DataFrame in
:mod:`clipcl.results.frames` and provenance in :mod:`clipcl.results.provenance`.

Several processes may open one store at once: writes are short ``BEGIN IMMEDIATE``
transactions and a busy connection waits up to 30 s. SQLite's WAL mode needs a local file
system, which is why a root on NFS, Lustre, sshfs, ... gets its store on local disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipcl.errors import ClipclError, unknown_name
from clipcl.results import ingest, pg
from clipcl.results.frames import (
    eval_rows_frame,
    heldout_rows_frame,
    intask_rows_frame,
    task_seconds_frame,
)
from clipcl.results.location import DIR_ENV, locate, prepare_local, store_path
from clipcl.results.provenance import collect_provenance, config_hash
from clipcl.results.rows import ChainDetail, ChainRecord, ChainRow, JobRow, SweepRow
from clipcl.results.schema import (
    DB_NAME,
    SCHEMA_SQL,
    SCHEMA_VERSION,
    STATES,
    TASK_RECORD_COLUMNS,
    Conn,
    concat,
    connect,
    sweep_filter,
    upsert_chain,
    write,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DB_NAME",
    "store_exists",
    "store_path",
    "STATES",
    "ChainDetail",
    "ChainRecord",
    "ChainRow",
    "JobRow",
    "ResultsStore",
    "SweepRow",
    "collect_provenance",
    "config_hash",
]

# Timestamps each state sets ("now") or clears (None).
_STAMPS: dict[str, dict[str, str | None]] = {
    "new": {"submitted": None, "started": None, "finished": None},
    "queued": {"submitted": "now", "started": None, "finished": None},
    "running": {"started": "now", "finished": None},
    **{s: {"finished": "now"} for s in ("done", "failed", "cancelled")},
}
# A chain's ChainRow columns (then, for ChainDetail, the rest) and the join counting its tasks.
_PROGRESS = (
    "c.chain_id, c.method, c.benchmark, c.seed, c.settings_json, c.state, COALESCE(t.n, 0), "
    "c.num_tasks, c.attempts, c.backend, c.job_id, c.error, t.hosts"
)
_DETAIL = (
    "c.protocol, c.spec_json, c.config_hash, c.task_names_json, c.submitted, c.started, c.finished"
)


def _tasks_done(conn: object) -> str:
    """The join counting each chain's finished tasks (and the hosts they ran on)."""
    return (
        f"LEFT JOIN (SELECT chain_id, COUNT(*) AS n, {concat(conn, 'host', distinct=True)} "
        "AS hosts FROM tasks GROUP BY chain_id) t ON t.chain_id = c.chain_id"
    )


_ROW_FIELDS = tuple(f.name for f in fields(ChainRow))  # the order of _PROGRESS
_JOB_FIELDS = tuple(f.name for f in fields(JobRow))
_JOB_COLUMNS = ", ".join(_JOB_FIELDS)


def _progress_fields(row: tuple[Any, ...]) -> dict[str, Any]:
    """The :class:`ChainRow` fields of a row that starts with ``_PROGRESS`` (settings decoded)."""
    out = dict(zip(_ROW_FIELDS, row[: len(_ROW_FIELDS)], strict=True))
    out["settings"] = json.loads(out["settings"])
    return out


def _other_sweep(old_source: str | None, old_config: str, source: str | None, config: str) -> bool:
    """Whether a sweep recorded from ``old_source`` is another one than ``source`` describes:
    both files are known and differ, and so do their configs (sources compare as paths)."""
    if old_source is None or source is None or old_config == config:
        return False
    return Path(old_source).resolve() != Path(source).resolve()


class ResultsStore:
    """The SQLite results store of one run root; one connection per instance.

    Use as a context manager or call :meth:`close`, from one thread. Safe to open from several
    processes at once.
    """

    def __init__(self, root: Path, store: str | None = None) -> None:
        """Open (creating the root and the schema if needed) the root's store:
        ``<root>/clipcl.sqlite``, a file on local disk when the root is on a network
        filesystem (:mod:`clipcl.results.location`), or the root's schema in a PostgreSQL
        store (:mod:`clipcl.results.pg`).

        Args:
            root: The run root.
            store: A PostgreSQL URL, ``"sqlite"`` for the root's SQLite store whatever the
                root or ``$CLIPCL_STORE`` name, or None: :func:`clipcl.results.pg.store_url`.

        Raises:
            ClipclError: If the root cannot be created, the store cannot be opened, or it
                has a newer schema.
        """
        self.root = Path(root)
        self.corrupt: dict[str, str] = {}  # chain id → why its records cannot be read
        self.url = None if store == "sqlite" else (store or pg.store_url(self.root))
        if self.url is not None:
            pg.check_url(self.url, "store")
            unbound = pg.bound_url(self.root) is None and store_path(self.root).is_file()
            if unbound and not pg.has_root(self.url, self.root):
                raise ClipclError(
                    f"run root {self.root} has its results in {store_path(self.root)}, not "
                    f"in {pg.redact(self.url)}: `clipcl store migrate --from {self.root} "
                    f"--to URL` moves them there"
                )
            self._conn: Any = pg.connect(self.url, self.root, SCHEMA_SQL, SCHEMA_VERSION)
            self.path: Path | str = self._conn.label
            self.location = None
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                pg.bind_root(self.root, self.url)
            except OSError as exc:  # a PostgreSQL store is opened first: a bad URL writes nothing
                self._conn.close()
                raise ClipclError(
                    f"cannot write {self.root / pg.URL_FILE}: {exc} (the run root must be writable)"
                ) from None
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClipclError(f"cannot create the run root {self.root}: {exc}") from None
        self.location = locate(self.root)
        self.path = self.location.path
        if self.location.local:
            try:
                first = prepare_local(self.location)
            except OSError as exc:
                raise ClipclError(
                    f"cannot create the local store of {self.root} at {self.location.path.parent}: "
                    f"{exc} (set {DIR_ENV} to a writable local directory)"
                ) from None
            if first:
                _adopt_store_in_root(self.root / DB_NAME, self.location.path)
        self._conn = connect(self.location.path)

    @property
    def postgres(self) -> bool:
        """Whether this is a PostgreSQL store."""
        return self.url is not None

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Conn]:
        with write(self._conn) as c:
            yield c

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
        The recorded file may be edited and recorded again, and an identical copy may take
        its place, but another file with other settings cannot join the sweep.

        Raises:
            ClipclError: ``name`` is recorded from another source file with another config.
        """
        now = time.time()
        prov = collect_provenance(config) if provenance is None else provenance
        config_json = json.dumps(config, sort_keys=True, default=str)
        with self._write() as c:
            row = c.execute(
                "SELECT source, config_json FROM sweeps WHERE name = ?", (name,)
            ).fetchone()
            if row is not None and _other_sweep(row[0], row[1], source, config_json):
                raise ClipclError(
                    f"sweep '{name}' under {self.root} was recorded from {row[0]}, with other "
                    f"settings than {source}; two files would merge into one sweep: rename "
                    f"the sweep (name:) or use another root"
                )
            c.execute(
                "INSERT INTO sweeps (name, source, config_json, created, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "source = excluded.source, config_json = excluded.config_json, "
                "updated = excluded.updated",
                (name, source, config_json, now, now),
            )
            for rec in chains:
                upsert_chain(c, rec, replace=True)
                c.execute(
                    "INSERT INTO sweep_chains VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (name, rec.chain_id),
                )
            self._put_provenance(c, "sweep", name, prov)

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

    # ----- ingestion of the durable records (clipcl.results.ingest) -----
    def ingest_chain(self, chain_id: str, run_dir: Path) -> int:
        """Mirror one chain's finished tasks and eval rows; see :func:`ingest.ingest_chain`.

        Returns:
            The number of eval rows stored for the chain.

        Raises:
            ClipclError: If the run directory's records cannot be read.
        """
        return ingest.ingest_chain(self._conn, chain_id, run_dir)

    def ingest_root(self, root: Path | None = None) -> int:
        """Ingest the changed chain directories under ``<root>/chains/``.

        Args:
            root: The run root; defaults to the store's own root.

        Returns:
            The number of chains (re)ingested. Chains whose records cannot be read are left
            out and named in :attr:`corrupt` (chain id → why).
        """
        return ingest.ingest_root(
            self._conn, Path(root if root is not None else self.root), self.corrupt
        )

    # ----- queries -----
    def chain(self, chain_id: str) -> ChainDetail | None:
        """Everything the store knows about a chain, or None if unknown."""
        row = self._conn.execute(
            f"SELECT {_PROGRESS}, {_DETAIL} FROM chains c {_tasks_done(self._conn)} "
            "WHERE c.chain_id = ?",
            (chain_id,),
        ).fetchone()
        if row is None:
            return None
        return ChainDetail(
            **_progress_fields(row[:13]),
            protocol=row[13],
            spec=json.loads(row[14]),
            config_hash=row[15],
            task_names={int(k): v for k, v in json.loads(row[16]).items()},
            submitted=row[17],
            started=row[18],
            finished=row[19],
        )

    def sweeps(self) -> list[SweepRow]:
        """Every sweep (by name) with its number of chains."""
        cur = self._conn.execute(
            "SELECT name, source, created, updated, "
            "(SELECT COUNT(*) FROM sweep_chains s WHERE s.sweep = name) AS chains "
            "FROM sweeps ORDER BY name"
        )
        return [SweepRow(*row) for row in cur.fetchall()]

    def sweep_config(self, sweep: str) -> dict[str, Any]:
        """The configuration ``sweep`` was recorded with (its sweep file, resolved; empty if
        unknown)."""
        row = self._conn.execute(
            "SELECT config_json FROM sweeps WHERE name = ?", (sweep,)
        ).fetchone()
        return dict(json.loads(row[0] or "{}")) if row else {}

    def check_sweep(self, sweep: str) -> None:
        """Raise ``ClipclError`` (naming the known sweeps) unless ``sweep`` is recorded."""
        sweep_filter(self._conn, self.path, sweep, check=True)

    def chain_progress(self, sweep: str | None = None) -> list[ChainRow]:
        """Every chain's progress (sorted by id), in one query; an unknown ``sweep`` has no
        chains."""
        where, params = sweep_filter(self._conn, self.path, sweep, check=False)
        cur = self._conn.execute(
            f"SELECT {_PROGRESS} FROM chains c {_tasks_done(self._conn)} {where} "
            "ORDER BY c.chain_id",
            params,
        )
        return [ChainRow(**_progress_fields(row)) for row in cur.fetchall()]

    # ----- scheduler jobs (one chain may have several: requeues keep the id, per-task mode
    # submits one job per task) -----
    def record_jobs(self, jobs: Iterable[Mapping[str, Any]]) -> None:
        """Record submitted jobs (state ``queued``).

        Args:
            jobs: Mappings with job_id, chain_id, backend and optionally first_task,
                last_task (the tasks the job runs) and log_dir.
        """
        now = time.time()
        with self._write() as c:
            for j in jobs:
                c.execute(
                    f"INSERT INTO jobs ({_JOB_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?) ON CONFLICT (job_id) DO UPDATE SET "
                    + ", ".join(f"{col} = excluded.{col}" for col in _JOB_FIELDS[1:]),
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
    ) -> list[JobRow]:
        """Recorded jobs (oldest first), optionally of some chains and one backend."""
        sql, params = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE 1 = 1", []
        if backend is not None:
            sql += " AND backend = ?"
            params.append(backend)
        cur = self._conn.execute(sql + " ORDER BY submitted, job_id", tuple(params))
        rows = [JobRow(**dict(zip(_JOB_FIELDS, row, strict=True))) for row in cur.fetchall()]
        if chain_ids is not None:
            wanted = set(chain_ids)
            rows = [r for r in rows if r.chain_id in wanted]
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
    def _put_provenance(c: Conn, scope: str, owner: str, info: Mapping[str, Any]) -> None:
        c.executemany(
            "INSERT INTO provenance VALUES (?, ?, ?, ?) ON CONFLICT (scope, owner, key) "
            "DO UPDATE SET value_json = excluded.value_json",
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

    # ----- data frames (clipcl.results.frames) -----
    def eval_rows_frame(self, sweep: str | None = None) -> pd.DataFrame:
        """Every stored eval row joined with its chain's description; see
        :func:`clipcl.results.frames.eval_rows_frame` for the columns.

        Raises:
            ClipclError: If ``sweep`` is given and unknown.
        """
        return eval_rows_frame(self._conn, self.path, sweep)

    def heldout_rows_frame(self, sweep: str | None = None) -> pd.DataFrame:
        """The held-out sets' rows (``eval.extra``); see
        :func:`clipcl.results.frames.heldout_rows_frame`.

        Raises:
            ClipclError: If ``sweep`` is given and unknown.
        """
        return heldout_rows_frame(self._conn, self.path, sweep)

    def intask_rows_frame(self, sweep: str | None = None) -> pd.DataFrame:
        """The in-task evaluations (``eval.interval_steps``); see
        :func:`clipcl.results.frames.intask_rows_frame`.

        Raises:
            ClipclError: If ``sweep`` is given and unknown.
        """
        return intask_rows_frame(self._conn, self.path, sweep)

    def measured_tasks(self) -> list[dict[str, Any]]:
        """Every finished task that recorded its throughput, with its chain's spec (``spec``,
        a dict): the measurements :func:`clipcl.orchestrator.estimate.estimate` uses."""
        columns = ["task_index", *(c for c, _ in TASK_RECORD_COLUMNS)]
        cur = self._conn.execute(
            f"SELECT c.spec_json, {', '.join('t.' + c for c in columns)} FROM tasks t "
            "JOIN chains c USING (chain_id) WHERE t.device IS NOT NULL ORDER BY t.chain_id"
        )
        return [
            {"spec": json.loads(row[0] or "{}"), **dict(zip(columns, row[1:], strict=True))}
            for row in cur.fetchall()
        ]

    def task_seconds_frame(self, sweep: str | None = None) -> pd.DataFrame:
        """Wall time of every finished task (see :func:`~clipcl.results.frames.
        task_seconds_frame`)."""
        return task_seconds_frame(self._conn, self.path, sweep)


def all_rows_frame(url: str, sweep: str | None = None) -> pd.DataFrame:
    """:func:`~clipcl.results.frames.eval_rows_frame` of every root in the PostgreSQL store
    ``url``, one after another (by root path), with a first column ``root``. A root whose
    directory exists here is ingested first.

    Raises:
        ClipclError: If the store cannot be opened, or ``sweep`` is in none of its roots.
    """
    import pandas as pd

    url = pg.check_url(url, "store")
    frames, known = [], set()
    for schema, root in pg.roots(url):
        if Path(root, "chains").is_dir():
            with ResultsStore(Path(root), url) as store:
                store.ingest_root()
        conn = pg.open_schema(url, schema, Path(root))
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sweeps")}
            known |= names
            if sweep is not None and sweep not in names:
                continue
            frame = eval_rows_frame(conn, conn.label, sweep)
        finally:
            conn.close()
        frame.insert(0, "root", root)
        frames.append(frame)
    if sweep is not None and sweep not in known:
        raise unknown_name(f"sweep (in {pg.redact(url)})", sweep, sorted(known))
    if not frames:
        return eval_rows_frame_empty()
    return pd.concat(frames, ignore_index=True)


def eval_rows_frame_empty() -> pd.DataFrame:
    """An empty frame with the columns of :func:`all_rows_frame`."""
    import pandas as pd

    from clipcl.results.frames import CHAIN_COLUMNS, ROW_COLUMNS

    return pd.DataFrame(columns=["root", *CHAIN_COLUMNS, "num_tasks", "config", *ROW_COLUMNS])


#: The tables ``store migrate`` copies, parents first.
TABLES = (
    *("sweeps", "chains", "sweep_chains", "tasks", "eval_rows", "intask_rows", "heldout_rows"),
    *("provenance", "jobs"),
)


def migrate_store(root: Path, url: str) -> dict[str, int]:
    """Copy ``root``'s SQLite store (chain records ingested first) into the PostgreSQL store
    ``url`` in one transaction, then point the root at it (``store.url``); the SQLite file
    is left as it was. Returns the rows copied per table.

    Raises:
        ClipclError: If the root has no SQLite store, already uses another PostgreSQL store,
            or ``url`` already holds rows of this root (nothing is written then).
    """
    root = Path(root)
    url = pg.check_url(url, "--to")
    sqlite_file = store_path(root)
    if not sqlite_file.is_file():
        raise ClipclError(f"no SQLite results store of {root} at {sqlite_file}: nothing to migrate")
    bound = pg.bound_url(root)
    if bound is not None and bound != pg.redact(url):
        raise ClipclError(f"run root {root} already uses the store {bound} ({root / pg.URL_FILE})")
    copied: dict[str, int] = {}
    with ResultsStore(root, "sqlite") as src:
        src.ingest_root()
        dst = pg.connect(url, root, SCHEMA_SQL, SCHEMA_VERSION)
        try:
            with write(dst) as c:
                if c.execute("SELECT 1 FROM chains LIMIT 1").fetchone() is not None:
                    raise ClipclError(
                        f"the store {dst.label} already holds chains of this root: "
                        f"`clipcl store rebuild --root {root}` rebuilds it from the records"
                    )
                for table in TABLES:
                    cols = [r[1] for r in src._conn.execute(f"PRAGMA table_info({table})")]
                    rows = src._conn.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
                    marks = ", ".join("?" * len(cols))
                    c.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", rows)
                    copied[table] = len(rows)
        finally:
            dst.close()
    pg.bind_root(root, url)
    return copied


def store_exists(root: Path) -> bool:
    """Whether ``root`` has a results store yet (nothing is created): its SQLite file, or its
    schema in the PostgreSQL store it uses."""
    url = pg.store_url(Path(root))
    if url is None:
        return store_path(Path(root)).is_file()
    return pg.bound_url(Path(root)) is not None or pg.has_root(url, Path(root))


def rebuild_store(root: Path) -> tuple[Path | str | None, ResultsStore]:
    """Move ``root``'s store aside (with its WAL files) and open a new, empty one.

    Returns:
        (where the old file was kept, or None if there was none; the new store, to be
        filled with :meth:`ResultsStore.ingest_root` and ``record_sweep``).
    """
    root = Path(root)
    url = pg.store_url(root)
    if url is not None:  # PostgreSQL: the root's schema is kept under another name
        with ResultsStore(root, url) as old:
            kept_schema = pg.drop_root(old._conn)
        return f"schema {kept_schema} of {pg.redact(url)}", ResultsStore(root, url)
    path = store_path(root)
    kept: Path | None = None
    if path.exists():
        kept = path.with_name(f"{DB_NAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        path.rename(kept)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(DB_NAME + suffix)
            if side.exists():
                side.rename(kept.with_name(kept.name + suffix))
    return kept, ResultsStore(root)


def _adopt_store_in_root(old: Path, new: Path) -> None:
    """A root on a network filesystem whose store an older clipcl kept in the root: copy it
    (SQLite's backup, consistent) to the local place once; the old file is left as it is."""
    if new.exists() or not old.is_file():
        return
    partial = new.with_name(new.name + ".partial")
    try:
        src = sqlite3.connect(f"file:{old}?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        os.replace(partial, new)
    except (sqlite3.Error, OSError):
        partial.unlink(missing_ok=True)  # unreadable: a new store is built from the records
