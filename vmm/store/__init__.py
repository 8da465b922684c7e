"""The state store: one SQLite file (WAL) under `vmm.paths.state_dir()/mm.db`.

Every process (CLI, worker, `mm network`) opens its own connection; nothing is cached
across processes. The API:

- `connect(path=None) -> sqlite3.Connection`: opens (creating) the database in WAL mode
  with a 60 s busy timeout, autocommit (`isolation_level=None`) so transactions are
  explicit, and `sqlite3.Row` rows.
- `transaction(conn)`: a context manager running its block in `BEGIN IMMEDIATE`; the
  write lock is taken at the start, so a read-decide-write sequence (allocate an IP,
  change a machine's state) is atomic against every other process. Commits on success,
  rolls back on any exception.
- `migrate(conn, area, migrations)`: applies the numbered migrations of one area
  (`[(1, "CREATE TABLE ..."), (2, "ALTER ...")]`), each at most once, recorded in the
  `migrations(area, version)` table, inside one immediate transaction. Areas are
  independent: the network area owns `networks`, `leases`, `ports`; the machines area
  adds `machines` with its own list. Append new migrations; never edit applied ones.

Example:
    conn = connect()
    migrate(conn, "machines", MIGRATIONS)
    with transaction(conn):
        conn.execute("UPDATE machines SET state = ? WHERE id = ?", ("running", mid))
"""
from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from vmm import paths

DB_NAME = "mm.db"
# How long a connection waits for the write lock. Transactions are short and never span a
# subprocess or an nft load (the host table has its own file lock, vmm/network/hostlock.py),
# but under the lab's emulation ten concurrent `mm run`s still queue for seconds; a wait
# past this is a stuck holder, reported as "database is locked".
BUSY_TIMEOUT_MS = 60_000


def db_path() -> Path:
    return paths.state_dir() / DB_NAME


def connect(path: Path | None = None) -> sqlite3.Connection:
    """A new connection to the store (WAL, busy timeout, explicit transactions)."""
    target = Path(path) if path is not None else db_path()
    paths.ensure(target.parent)
    conn = sqlite3.connect(target, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL is durable against process crashes (only an OS crash may lose the last commit).
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block under the database write lock (BEGIN IMMEDIATE); commit or roll back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def applied(conn: sqlite3.Connection, area: str) -> set[int]:
    _ensure_table(conn)
    return {row[0] for row in conn.execute("SELECT version FROM migrations WHERE area = ?", (area,))}


def _ensure_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS migrations ("
        " area TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (area, version))"
    )


def migrate(conn: sqlite3.Connection, area: str, migrations: Sequence[tuple[int, str]]) -> None:
    """Apply the not-yet-applied migrations of `area`, in version order, atomically."""
    versions = [v for v, _ in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"migrations of {area} must have unique increasing versions: {versions}")
    if set(versions) <= applied(conn, area):
        return
    with transaction(conn):
        done = applied(conn, area)  # another process may have migrated while we waited
        for version, sql in migrations:
            if version in done:
                continue
            for statement in filter(str.strip, sql.split(";")):
                conn.execute(statement)
            conn.execute("INSERT INTO migrations (area, version) VALUES (?, ?)", (area, version))
