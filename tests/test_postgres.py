"""The PostgreSQL results store on a real PostgreSQL (scripts/postgres-dev.sh, started by
`make test`): a sweep into it gives the SQLite store's results, coordinators ingest at once
without duplicates, a coordinator killed mid-ingest loses nothing, a migrated store equals the
original, and bad stores fail with one line. Each test gets its own database."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from clipcl.results.pg import redact
from clipcl.results.store import TABLES

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "postgres-dev.sh"
CLIPCL = Path(sys.executable).parent / "clipcl"
SWEEP = """\
name: pgdemo
root: runs
model: {arch: tiny}
benchmarks: [mini-mtil, mini-cil]
methods:
  zeroshot: {}
  finetune: {train_mode: whole}
  nsp2: {benchmarks: [mini-cil], train: {lr: 1.0e-2}, grid: {method.project: [true, false]}}
train: {iterations: 4}
seeds: [0]
resources: {cpus: 1, mem_gb: 4, timeout_min: 30}
"""


def _server_url() -> str:
    """The URL of the test PostgreSQL: $CLIPCL_TEST_STORE, the running postgres-dev.sh server,
    or one this test starts (root); skipped (failed with CI=true) when none can be had."""
    if os.environ.get("CLIPCL_TEST_STORE"):
        return os.environ["CLIPCL_TEST_STORE"]
    got = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True)
    if got.returncode != 0 and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["bash", str(SCRIPT), "install"], capture_output=True, timeout=900)
        got = subprocess.run(
            ["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=300
        )
    if got.returncode == 0:
        return got.stdout.strip().splitlines()[-1]
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but no PostgreSQL: " + got.stderr[-2000:])
    pytest.skip("no PostgreSQL (scripts/postgres-dev.sh up needs root)")


def _with_db(url: str, db: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + db, parts.query, parts.fragment))


@pytest.fixture(scope="module")
def server() -> str:
    return _server_url()


def _new_db(server: str):
    import psycopg

    name = f"clipcl_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return name, _with_db(server, name)


def _drop_db(server: str, name: str) -> None:
    """Drop a test database; a session the server has not yet seen end (a killed client) or an
    autovacuum worker can make that fail for a while: then it is left for the next run."""
    import psycopg

    for _ in range(20):
        try:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            return
        except psycopg.Error:
            time.sleep(0.5)
    print(f"left the test database {name} on the server")


@pytest.fixture
def pg_url(server):
    name, url = _new_db(server)
    yield url
    _drop_db(server, name)


def _env(store: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CLIPCL_STORE", "CLIPCL_STORE_PLACE")}
    if store is not None:
        env["CLIPCL_STORE"] = store
    return env


def _clipcl(cwd: Path, *args: str, store: str | None = None, ok: bool = True):
    done = subprocess.run(
        [str(CLIPCL), *args], cwd=cwd, capture_output=True, text=True, env=_env(store), timeout=600
    )
    if ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def finished(server, tmp_path_factory):
    """The sweep run on the local backend twice: into a PostgreSQL database (the sweep file's
    `store:`) and, in another directory, into the SQLite store."""
    name, url = _new_db(server)
    pg_dir, sq_dir = tmp_path_factory.mktemp("pg"), tmp_path_factory.mktemp("sqlite")
    (pg_dir / "sweep.yaml").write_text(SWEEP + f"store: {url}\n")
    (sq_dir / "sweep.yaml").write_text(SWEEP)
    for where in (pg_dir, sq_dir):
        _clipcl(where, "submit", "sweep.yaml", "--backend", "local", "--jobs", "2", "--follow")
    yield {"url": url, "pg": pg_dir, "sqlite": sq_dir}
    _drop_db(server, name)


def _rows(conn, table: str, columns: list[str]) -> list[tuple]:
    rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
    return sorted((tuple(r) for r in rows), key=repr)


def _sqlite_columns(path: Path, table: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _pg_tables(url: str, root: Path, columns: dict[str, list[str]]) -> dict[str, list[tuple]]:
    import psycopg

    from clipcl.results.pg import root_schema

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"SET search_path TO {root_schema(root)}")
        return {t: _rows(conn, t, cols) for t, cols in columns.items()}


def test_sweep_into_postgres_gives_the_sqlite_results(finished):
    pg_dir, sq_dir, url = finished["pg"], finished["sqlite"], finished["url"]
    root = pg_dir / "runs"
    # the root names its store, without the password
    assert (root / "store.url").read_text().strip() == redact(url) != url
    assert not (root / "clipcl.sqlite").exists()
    assert (sq_dir / "runs" / "clipcl.sqlite").is_file()
    got = _clipcl(pg_dir, "results", "sweep.yaml", "--format", "json").stdout
    want = _clipcl(sq_dir, "results", "sweep.yaml", "--format", "json").stdout
    assert json.loads(got) == json.loads(want) and len(json.loads(got)) == 6
    status = _clipcl(pg_dir, "status", "sweep.yaml").stdout
    assert "6 done" in status
    _clipcl(pg_dir, "report", "sweep.yaml", "-o", "report")  # the report reads the same store
    assert (pg_dir / "report" / "index.html").is_file()
    where = _clipcl(pg_dir, "store", "where", "sweep.yaml").stdout
    assert "PostgreSQL store" in where and urlsplit(url).password not in where
    # from the root alone (no sweep file): the root's store.url plus the password from libpq's
    # $PGPASSWORD
    env = {**_env(), "PGPASSWORD": urlsplit(url).password}
    done = subprocess.run(
        [str(CLIPCL), "status", "--root", str(root)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0 and "6 done" in done.stdout, done.stderr
    # and without any password: one line that says where to give it
    done = subprocess.run(
        [str(CLIPCL), "status", "--root", str(root)], capture_output=True, text=True, env=_env()
    )
    assert done.returncode == 2 and "PGPASSWORD" in done.stderr


def test_load_results_and_results_all_span_roots(finished, tmp_path):
    from clipcl.results import load_results

    url, sq_dir = finished["url"], finished["sqlite"]
    other = tmp_path / "other"
    shutil.copytree(sq_dir / "runs" / "chains", other / "chains")
    _clipcl(tmp_path, "store", "rebuild", "--root", str(other), "--sweep",
            str(sq_dir / "sweep.yaml"), store=url)  # fmt: skip
    df = load_results(store=url)
    assert set(df["root"]) == {str(finished["pg"] / "runs"), str(other)}
    single = load_results(finished["pg"] / "runs", store=url)
    part = df[df["root"] == str(finished["pg"] / "runs")].drop(columns="root")
    assert part.reset_index(drop=True).equals(single)
    table = json.loads(_clipcl(tmp_path, "results", "--all", "--format", "json", store=url).stdout)
    assert {r["root"] for r in table} == set(df["root"]) and len(table) == 12
    assert {r["sweep"] for r in table} == {"pgdemo"}
    with pytest.raises(Exception, match="unknown sweep"):
        load_results(store=url, sweep="nope")


_INGEST = """
import sys, time
from pathlib import Path
from clipcl.results.store import ResultsStore
url, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    time.sleep(0.005)
for root in sys.argv[3:]:
    with ResultsStore(Path(root), url) as store:
        store.ingest_root()
"""


def test_two_coordinators_ingest_the_same_roots_at_once(finished, pg_url, tmp_path):
    roots = []
    for i in range(2):
        roots.append(tmp_path / f"root{i}")
        shutil.copytree(finished["sqlite"] / "runs" / "chains", roots[-1] / "chains")
    start = time.time() + 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _INGEST, pg_url, str(start), *map(str, order)],
            env=_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for order in (roots, roots[::-1])
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    sqlite_file = finished["sqlite"] / "runs" / "clipcl.sqlite"
    columns = {t: _sqlite_columns(sqlite_file, t) for t in ("tasks", "eval_rows")}
    with sqlite3.connect(sqlite_file) as conn:
        want = {t: _rows(conn, t, cols) for t, cols in columns.items()}
    for root in roots:
        got = _pg_tables(pg_url, root, columns)
        assert got == want  # every row once: none duplicated, none missing
        assert len(got["eval_rows"]) > 100


_KILLED = """
import os, sys, time
from pathlib import Path
from clipcl.results import ingest
from clipcl.results.store import ResultsStore
real = ingest._put_rows
def slow(c, chain_id, *args):
    real(c, chain_id, *args)
    Path(sys.argv[3]).write_text(chain_id)  # inside the transaction: rows written, no commit
    time.sleep(120)
ingest._put_rows = slow
with ResultsStore(Path(sys.argv[2]), sys.argv[1]) as store:
    store.ingest_root()
"""


def test_a_coordinator_killed_mid_ingest_loses_nothing(finished, pg_url, tmp_path):
    from clipcl.results.store import ResultsStore

    root = tmp_path / "root"
    shutil.copytree(finished["sqlite"] / "runs" / "chains", root / "chains")
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED, pg_url, str(root), str(ready)], env=_env()
    )
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        with ResultsStore(root, pg_url) as reader:  # a reader does not wait for the writer
            assert reader.eval_rows_frame().empty  # nothing half-written is visible
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with ResultsStore(root, pg_url) as store:  # the next coordinator ingests everything
        assert store.ingest_root() == 6
        got = store.eval_rows_frame()
    with ResultsStore(finished["sqlite"] / "runs", "sqlite") as sq:
        want = sq.eval_rows_frame()
    key = ["chain_id", "trained_task", "eval_task"]
    cols = [*key, "correct", "total", "method", "benchmark", "seed"]
    got = got[cols].sort_values(key).reset_index(drop=True)
    want = want[cols].sort_values(key).reset_index(drop=True)
    assert got.equals(want)


def test_a_migrated_store_equals_the_original(finished, pg_url, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(finished["sqlite"] / "runs", root)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    sqlite_file = root / "clipcl.sqlite"
    # a sweep's states, jobs and provenance live only in the store: they must come along
    with sqlite3.connect(sqlite_file) as conn:
        conn.execute(
            "INSERT INTO jobs VALUES ('77_1', (SELECT MIN(chain_id) FROM chains), 'slurm', 0, "
            "NULL, '/logs', 'done', 1.5, 2.25)"
        )
        conn.execute(
            "UPDATE chains SET attempts = 3 WHERE chain_id = (SELECT MIN(chain_id) FROM chains)"
        )
    before = _clipcl(tmp_path, "results", "sweep.yaml", "--format", "json").stdout
    columns = {t: _sqlite_columns(sqlite_file, t) for t in TABLES}
    with sqlite3.connect(sqlite_file) as conn:
        want = {t: _rows(conn, t, cols) for t, cols in columns.items()}
    done = _clipcl(tmp_path, "store", "migrate", "--from", str(root), "--to", pg_url)
    assert "6 chains" in done.stdout and urlsplit(pg_url).password not in done.stdout
    assert _pg_tables(pg_url, root, columns) == want
    assert all(want[t] for t in ("sweeps", "chains", "tasks", "eval_rows", "jobs", "provenance"))
    after = _clipcl(tmp_path, "results", "sweep.yaml", "--format", "json", store=pg_url).stdout
    assert json.loads(after) == json.loads(before)
    again = _clipcl(tmp_path, "store", "migrate", "--from", str(root), "--to", pg_url, ok=False)
    assert again.returncode == 2 and "already holds" in again.stderr
    assert _pg_tables(pg_url, root, columns) == want
    # rebuilt from the records on PostgreSQL: the old schema is kept, the results are the same
    done = _clipcl(tmp_path, "store", "rebuild", "--root", str(root), "--sweep", "sweep.yaml",
                   store=pg_url)  # fmt: skip
    assert "kept the old store as schema r_" in done.stdout and "_kept_" in done.stdout
    rebuilt = _clipcl(tmp_path, "results", "sweep.yaml", "--format", "json", store=pg_url).stdout
    assert json.loads(rebuilt) == json.loads(before)


def _one_error(done) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_bad_stores_fail_with_one_line_and_write_nothing(pg_url, tmp_path):
    parts = urlsplit(pg_url)
    host = parts.netloc.rsplit("@", 1)[1]
    wrong_password = pg_url.replace(f":{parts.password}@", ":not-the-password@")
    cases = {
        "postgresql://clipcl@127.0.0.1:notaport/x": "malformed port",
        "mysql://clipcl@127.0.0.1/x": "not a PostgreSQL URL",
        "postgresql://clipcl:pw@127.0.0.1:1/clipcl": "Connection refused",
        wrong_password: "password authentication failed",
        _with_db(pg_url, "no_such_database"): "does not exist",
    }
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    for url, why in cases.items():
        done = subprocess.run(
            [str(CLIPCL), "--store", url, "submit", "sweep.yaml", "--backend", "local"],
            cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=120,
        )  # fmt: skip
        line = _one_error(done)
        assert why in line and "not-the-password" not in line and ":pw@" not in line
        assert not (tmp_path / "runs").exists(), url  # nothing written
    (tmp_path / "bad.yaml").write_text(SWEEP + "store: sqlite:///x.db\n")
    line = _one_error(_clipcl(tmp_path, "results", "bad.yaml", ok=False))
    assert "bad.yaml: store" in line and "not a PostgreSQL URL" in line
    assert host  # the server is the one the other cases reached


def test_a_newer_schema_and_another_store_are_refused(server, pg_url, tmp_path):
    import psycopg

    from clipcl.results.store import ResultsStore

    root = tmp_path / "runs"
    ResultsStore(root, pg_url).close()
    name, other = _new_db(server)
    try:  # the root uses pg_url: another store for it is refused (its states would split)
        line = _one_error(_clipcl(tmp_path, "status", "--root", str(root), store=other, ok=False))
        assert "keeps its results in the store" in line and "store migrate" in line
    finally:
        _drop_db(server, name)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE clipcl.roots SET version = 99")
    line = _one_error(_clipcl(tmp_path, "status", "--root", str(root), store=pg_url, ok=False))
    assert "schema version 99" in line and "upgrade clipcl" in line


def test_a_detached_coordinator_uses_the_sweep_files_store(pg_url, tmp_path):
    (tmp_path / "sweep.yaml").write_text(
        "name: detached\nroot: runs\nbenchmarks: [smoke]\nmethods: {zeroshot: {}}\n"
        f"seeds: [0]\nstore: {pg_url}\n"
    )
    _clipcl(tmp_path, "submit", "sweep.yaml", "--backend", "local")  # no --follow
    deadline = time.time() + 180
    while "1 done" not in (status := _clipcl(tmp_path, "status", "sweep.yaml").stdout):
        log = tmp_path / "runs" / "coordinator.log"
        assert time.time() < deadline, status + (log.read_text() if log.exists() else "")
        time.sleep(1)
    assert "error" not in (tmp_path / "runs" / "coordinator.log").read_text()
    assert not (tmp_path / "runs" / "clipcl.sqlite").exists()


def test_a_schema_3_root_gains_top5_when_opened(pg_url, tmp_path):
    """A root an older clipcl created (schema 3: no correct5) is upgraded on open: the column
    is added, the version becomes 4 and the rows ingested after carry their top-5."""
    import psycopg

    from clipcl.results.pg import root_schema
    from clipcl.results.records import RunDir
    from clipcl.results.rows import ChainRecord
    from clipcl.results.schema import SCHEMA_VERSION
    from clipcl.results.store import ResultsStore
    from clipcl.workers import run_chain
    from tests.helpers import tiny_spec

    root = tmp_path / "runs"
    ResultsStore(root, pg_url).close()
    schema = root_schema(root)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {schema}.eval_rows DROP COLUMN correct5")
        conn.execute("UPDATE clipcl.roots SET version = 3")
    spec = tiny_spec(iterations=2)
    run = RunDir.of(root, spec.chain_id)
    run_chain(spec, run.path)
    with ResultsStore(root, pg_url) as store:
        store.record_sweep(
            "s", None, {}, [ChainRecord.from_spec(spec.chain_id, run.read_spec())], {}
        )
        store.ingest_root(root)
        frame = store.eval_rows_frame("s")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        (version,) = conn.execute("SELECT version FROM clipcl.roots").fetchone()
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'eval_rows'",
            (schema,),
        ).fetchall()
    assert version == SCHEMA_VERSION == 4 and ("correct5",) in columns
    rows = {(r.trained_task, r.eval_task): r.correct5 for r in run.read_rows()}
    got = {
        (int(a), int(b)): int(c)
        for a, b, c in frame[["trained_task", "eval_task", "correct5"]].to_numpy()
    }
    assert got == rows and all(v is not None for v in rows.values())
