"""A PostgreSQL results store: one database for every run root of a lab, through psycopg 3.

Why psycopg 3 and not SQLAlchemy Core: the store's SQL is a few dozen plain statements that
already run on SQLite; psycopg is the maintained PostgreSQL driver SQLAlchemy itself would use,
so a thin translation of those statements (``?`` parameters, column types, the write lock)
costs less than a second query language, and keeps one set of statements for both databases.

Layout: each run root gets its own PostgreSQL *schema* (``r_<16 hex of the root's path>``)
holding exactly the SQLite store's tables, so every statement of the store runs unchanged in
it, and chain ids (content hashes, equal in two roots that ran the same sweep) never collide.
The schema ``clipcl`` has the table ``roots`` (schema, run root, schema version, created) that
:func:`roots` and ``clipcl results --all`` read to query across roots. A write transaction
takes a transaction-scoped advisory lock of its root first (the ``BEGIN IMMEDIATE`` of the
SQLite store): writers of one root take turns, readers never wait, other roots never block.

Where the URL comes from (:func:`store_url`): ``--store`` / ``$CLIPCL_STORE``, the sweep
file's ``store:``, else the root's ``store.url`` file, written when a root first uses a
PostgreSQL store so that every later command on that root (``status``, ``results``, the Slurm
watcher) finds it. That file never holds a password: give it in the URL each time, or through
``$PGPASSWORD`` / ``~/.pgpass`` (libpq's own ways).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from clipcl.errors import ClipclError

__all__ = [
    "URL_ENV",
    "URL_FILE",
    "PgConnection",
    "bind_root",
    "connect",
    "is_url",
    "redact",
    "roots",
    "store_url",
]

URL_ENV = "CLIPCL_STORE"
URL_FILE = "store.url"  # in the run root: the store it uses (no password)
SCHEMES = ("postgresql", "postgres")
CONNECT_TIMEOUT_S = 10
_META = "clipcl"
_SETUP_LOCK = 0x636C6970636C  # "clipcl": one setup (schemas, roots table) at a time
_explicit: dict[str, str] = {}  # run root → URL named by a sweep file's `store:` in this process


def is_url(text: str | None) -> bool:
    """Whether ``text`` names a PostgreSQL store (``postgresql://`` or ``postgres://``)."""
    return bool(text) and urlsplit(str(text)).scheme in SCHEMES


def check_url(url: str, where: str) -> str:
    """``url`` if it is a PostgreSQL URL with a host or database, else a ClipclError naming
    ``where`` it came from."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ClipclError(
            f"{where}: '{redact(url)}' is not a PostgreSQL URL (allowed: "
            "postgresql://USER@HOST[:PORT]/DATABASE; leave it out for the SQLite store in the root)"
        )
    try:
        parts.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        raise ClipclError(f"{where}: '{redact(url)}' has a malformed port") from None
    if not parts.path.strip("/") and not parts.hostname:
        raise ClipclError(f"{where}: '{redact(url)}' names no host and no database")
    return url


def redact(url: str) -> str:
    """``url`` without its password (for messages and the root's ``store.url``)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hostport = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{hostport}"
    query = "&".join(
        q for q in parts.query.split("&") if q and not q.lower().startswith("password=")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _key(root: Path) -> str:
    return str(Path(os.path.abspath(root)))


def root_schema(root: Path) -> str:
    """The PostgreSQL schema of a run root: ``r_`` and 16 hex digits of its absolute path."""
    return "r_" + hashlib.sha256(_key(root).encode()).hexdigest()[:16]


def _lock_id(schema: str) -> int:
    """A signed 64-bit advisory lock id for a schema name."""
    return int.from_bytes(hashlib.sha256(schema.encode()).digest()[:8], "big", signed=True)


def remember(root: Path, url: str) -> None:
    """Use ``url`` for ``root`` in this process (a sweep file's ``store:``)."""
    _explicit[_key(root)] = url


def bound_url(root: Path) -> str | None:
    """The URL (no password) in ``root``'s ``store.url``, or None."""
    try:
        text = (Path(root) / URL_FILE).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ClipclError(f"cannot read {Path(root) / URL_FILE}: {exc}") from None
    return text or None


def store_url(root: Path) -> str | None:
    """The PostgreSQL store ``root`` uses, or None for the SQLite store.

    In order: ``$CLIPCL_STORE`` (also what ``--store`` sets), a sweep file's ``store:`` read
    by this process, the root's ``store.url``. An explicit URL that differs (without
    passwords) from the one the root already uses is refused: the root's states would split.
    """
    explicit = os.environ.get(URL_ENV) or _explicit.get(_key(root)) or None
    bound = bound_url(root)
    if explicit is not None:
        check_url(explicit, f"${URL_ENV}" if explicit == os.environ.get(URL_ENV) else "store")
        if bound is not None and redact(explicit) != bound:
            raise ClipclError(
                f"run root {root} keeps its results in the store {bound} "
                f"({Path(root) / URL_FILE}), not {redact(explicit)}: name that store, or "
                "move the root with `clipcl store migrate`"
            )
        return explicit
    if bound is not None:
        check_url(bound, str(Path(root) / URL_FILE))
    return bound


def bind_root(root: Path, url: str) -> None:
    """Write ``root``'s ``store.url`` (atomically; no password) unless it already says so."""
    path = Path(root) / URL_FILE
    text = redact(url)
    if bound_url(root) == text:
        return
    tmp = path.with_name(URL_FILE + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """A statement of the SQLite store in psycopg's form: ``?`` → ``%s`` (``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def ddl(sqlite_schema: str) -> list[str]:
    """The SQLite store's DDL as PostgreSQL statements: 64-bit integers and doubles, byte-order
    ("C") text so sorting equals SQLite's, no ``WITHOUT ROWID`` and no ``PRAGMA``."""
    out = []
    for statement in sqlite_schema.split(";"):
        s = statement.strip()
        if not s or s.upper().startswith("PRAGMA"):
            continue
        s = s.replace("WITHOUT ROWID", "")
        s = re.sub(r"\bREAL\b", "DOUBLE PRECISION", s)
        s = re.sub(r"\bINTEGER\b", "BIGINT", s)
        s = re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', s)
        out.append(s)
    return out


def added_columns() -> list[str]:
    """``ALTER TABLE … ADD COLUMN IF NOT EXISTS`` for every column a later schema version added
    (``schema.ADDED_COLUMNS``), in PostgreSQL's types."""
    from clipcl.results.schema import ADDED_COLUMNS

    kinds = {"REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT", "TEXT": 'TEXT COLLATE "C"'}
    return [
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kinds[kind]}"
        for table, column, kind in ADDED_COLUMNS
    ]


class _Cursor:
    """What the store reads from a statement: rows and the row count."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur
        self.rowcount = cur.rowcount

    def fetchone(self) -> Any:
        return self._cur.fetchone() if self._cur.description else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cur.fetchall() if self._cur.description else []

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


class PgConnection:
    """A psycopg connection that takes the store's SQLite-style statements (autocommit; a
    write is :meth:`write`)."""

    dialect = "postgresql"

    def __init__(self, raw: Any, url: str, root: Path, schema: str) -> None:
        self._raw = raw
        self.url = url
        self.root = root
        self.schema = schema
        self.label = f"{redact(url)} (run root {root})"

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        return _Cursor(self._raw.execute(translate(sql), tuple(params)))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> None:
        rows = [tuple(p) for p in seq]
        if rows:
            with self._raw.cursor() as cur:
                cur.executemany(translate(sql), rows)

    @contextmanager
    def write(self) -> Iterator[PgConnection]:
        """One transaction holding the root's write lock (released at commit or rollback)."""
        with self._raw.transaction():
            self._raw.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(self.schema),))
            yield self

    def close(self) -> None:
        self._raw.close()


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ClipclError(
            "a PostgreSQL store needs psycopg 3: pip install 'clipcl[postgres]'"
        ) from None
    return psycopg


def error_text(exc: BaseException) -> str:
    """The first line of a driver error, without the noise libpq adds."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _open(url: str) -> Any:
    psycopg = _psycopg()
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        text = error_text(exc)
        hint = ""
        if "no password supplied" in text:
            hint = (
                f" (a run root's {URL_FILE} keeps no password: give it in --store / "
                f"${URL_ENV}, $PGPASSWORD or ~/.pgpass)"
            )
        raise ClipclError(f"cannot open the results store {redact(url)}: {text}{hint}") from None


def _root_version(raw: Any, schema: str) -> int | None:
    """The schema version the store records for a root's schema (None: none yet)."""
    if raw.execute(f"SELECT to_regclass('{_META}.roots')").fetchone()[0] is None:
        return None
    got = raw.execute(
        f"SELECT version FROM {_META}.roots WHERE schema_name = %s", (schema,)
    ).fetchone()
    return None if got is None else int(got[0])


def _setup_meta(raw: Any) -> None:
    raw.execute(f"CREATE SCHEMA IF NOT EXISTS {_META}")
    raw.execute(
        f'CREATE TABLE IF NOT EXISTS {_META}.roots (schema_name TEXT COLLATE "C" PRIMARY KEY, '
        'root TEXT COLLATE "C" NOT NULL UNIQUE, version BIGINT NOT NULL, '
        "created DOUBLE PRECISION NOT NULL)"
    )


def connect(url: str, root: Path, sqlite_schema: str, version: int) -> PgConnection:
    """Open ``url`` as the store of ``root``: the root's schema created (or checked) and set as
    the connection's search path.

    Raises:
        ClipclError: If the server cannot be reached, refuses the credentials, or holds the
            root in a schema version newer than ``version``.
    """
    psycopg = _psycopg()
    raw = _open(url)
    schema = root_schema(root)
    label = f"{redact(url)} (run root {root})"
    try:
        got = _root_version(raw, schema)
        if got == version:  # the usual case: no DDL, so opening never waits for a writer
            raw.execute(f"SET search_path TO {schema}")
            return PgConnection(raw, url, Path(root), schema)
        with raw.transaction():
            raw.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
            _setup_meta(raw)
            got = raw.execute(
                f"SELECT version FROM {_META}.roots WHERE schema_name = %s", (schema,)
            ).fetchone()
            if got is not None and got[0] > version:
                raise ClipclError(
                    f"the results store {label} has schema version {got[0]}; this clipcl "
                    f"reads up to {version}: upgrade clipcl"
                )
            raw.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            raw.execute(f"SET LOCAL search_path TO {schema}")
            for statement in ddl(sqlite_schema):
                raw.execute(statement)
            for statement in added_columns():  # a root an older clipcl created
                raw.execute(statement)
            raw.execute(
                f"INSERT INTO {_META}.roots VALUES (%s, %s, %s, %s) ON CONFLICT (schema_name) "
                "DO UPDATE SET version = excluded.version, root = excluded.root",
                (schema, _key(root), version, time.time()),
            )
        raw.execute(f"SET search_path TO {schema}")
    except psycopg.Error as exc:
        raw.close()
        raise ClipclError(f"results store {label}: {error_text(exc)}") from None
    except BaseException:
        raw.close()
        raise
    return PgConnection(raw, url, Path(root), schema)


def open_schema(url: str, schema: str, root: Path) -> PgConnection:
    """A connection reading one root's schema as it is (nothing created, nothing ingested)."""
    if not re.fullmatch(r"r_[0-9a-f]{16}", schema):
        raise ClipclError(f"results store {redact(url)}: '{schema}' is not a run root's schema")
    psycopg = _psycopg()
    raw = _open(url)
    try:
        raw.execute(f"SET search_path TO {schema}")
    except psycopg.Error as exc:
        raw.close()
        raise ClipclError(f"results store {redact(url)}: {error_text(exc)}") from None
    return PgConnection(raw, url, root, schema)


def roots(url: str) -> list[tuple[str, str]]:
    """Every run root the store at ``url`` holds: (schema, root path), by path."""
    psycopg = _psycopg()
    raw = _open(url)
    try:
        if raw.execute(f"SELECT to_regclass('{_META}.roots')").fetchone()[0] is None:
            return []
        return [
            (r[0], r[1])
            for r in raw.execute(f"SELECT schema_name, root FROM {_META}.roots ORDER BY root")
        ]
    except psycopg.Error as exc:
        raise ClipclError(f"results store {redact(url)}: {error_text(exc)}") from None
    finally:
        raw.close()


def has_root(url: str, root: Path) -> bool:
    """Whether the store at ``url`` holds ``root``."""
    return any(schema == root_schema(root) for schema, _ in roots(url))


def drop_root(conn: PgConnection) -> str:
    """Keep a root's schema under another name (``<schema>_kept_<time>``) and forget it, for
    ``store rebuild``; the new name."""
    kept = f"{conn.schema}_kept_{time.strftime('%Y%m%d_%H%M%S')}"
    with conn._raw.transaction():
        conn._raw.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
        conn._raw.execute(f"ALTER SCHEMA {conn.schema} RENAME TO {kept}")
        conn._raw.execute(f"DELETE FROM {_META}.roots WHERE schema_name = %s", (conn.schema,))
    return kept
