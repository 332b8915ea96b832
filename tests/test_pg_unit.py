"""The PostgreSQL store's pieces that need no server: URLs (checked, passwords kept out of
messages and files), which store a root uses, and the translation of the SQLite statements."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from clipcl.errors import ClipclError
from clipcl.results import pg
from clipcl.results.schema import SCHEMA_SQL, concat


def test_redact_drops_the_password_and_nothing_else():
    assert pg.redact("postgresql://u:s3cret@db.lab:6543/runs") == "postgresql://u@db.lab:6543/runs"
    assert pg.redact("postgresql://u@h/d?sslmode=require") == "postgresql://u@h/d?sslmode=require"
    assert pg.redact("postgres://u:p@h/d?password=x&sslmode=require") == (
        "postgres://u@h/d?sslmode=require"
    )
    assert pg.redact("postgresql://u:p@h:notaport/d") == "postgresql://u@h:notaport/d"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("mysql://u@h/d", "not a PostgreSQL URL"),
        ("sqlite:///x.db", "not a PostgreSQL URL"),
        ("postgresql://u:pw@h:abc/d", "malformed port"),
        ("postgresql://", "names no host and no database"),
    ],
)
def test_bad_urls_are_named_with_where_they_came_from(url, why):
    with pytest.raises(ClipclError, match=why) as got:
        pg.check_url(url, "sweep.yaml: store")
    assert str(got.value).startswith("sweep.yaml: store: ") and ":pw@" not in str(got.value)


def test_which_store_a_root_uses(tmp_path, monkeypatch):
    monkeypatch.delenv(pg.URL_ENV, raising=False)
    monkeypatch.setattr(pg, "_explicit", {})
    root = tmp_path / "runs"
    root.mkdir()
    assert pg.store_url(root) is None  # the SQLite store by default
    pg.remember(root, "postgresql://sweep@h/d")
    assert pg.store_url(root) == "postgresql://sweep@h/d"  # the sweep file's store:
    monkeypatch.setenv(pg.URL_ENV, "postgresql://env:pw@h/d")
    assert pg.store_url(root) == "postgresql://env:pw@h/d"  # --store / $CLIPCL_STORE first
    pg.bind_root(root, "postgresql://env:pw@h/d")
    assert (root / pg.URL_FILE).read_text() == "postgresql://env@h/d\n"  # no password on disk
    monkeypatch.delenv(pg.URL_ENV)
    pg._explicit.clear()
    assert pg.store_url(root) == "postgresql://env@h/d"  # later commands: the root's file
    monkeypatch.setenv(pg.URL_ENV, "postgresql://other@h/d")
    with pytest.raises(ClipclError, match="keeps its results in the store postgresql://env@h/d"):
        pg.store_url(root)  # the root's states would split between two stores


def test_the_schema_translates_to_postgresql():
    statements = pg.ddl(SCHEMA_SQL)
    text = ";".join(statements)
    assert "PRAGMA" not in text and "WITHOUT ROWID" not in text and " REAL" not in text
    assert "DOUBLE PRECISION" in text and "BIGINT" in text and 'COLLATE "C"' in text
    assert len(statements) == len([s for s in SCHEMA_SQL.split(";") if s.strip()]) - 1
    assert pg.translate("SELECT ? WHERE x LIKE '5%'") == "SELECT %s WHERE x LIKE '5%%'"


def test_concat_is_one_sql_for_both_and_sqlite_runs_it():
    class Fake:
        dialect = "postgresql"

    assert concat(Fake(), "host", distinct=True) == "string_agg(DISTINCT (host)::text, ',')"
    assert concat(Fake(), "x", " ") == "string_agg((x)::text, ' ')"
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (g, host)")
    conn.executemany("INSERT INTO t VALUES (1, ?)", [("a",), ("b",), ("a",)])
    got = conn.execute(f"SELECT {concat(conn, 'host', distinct=True)} FROM t").fetchone()[0]
    assert sorted(got.split(",")) == ["a", "b"]


def test_a_store_url_without_psycopg_says_how_to_install(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_psycopg(name, *args, **kwargs):
        if name == "psycopg":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psycopg)
    with pytest.raises(ClipclError, match=r"clipcl\[postgres\]"):
        pg.connect("postgresql://u@h/d", Path(tmp_path), SCHEMA_SQL, 3)
