"""Opening the machines table: the store's SQLite file (WAL) with our migrations applied.

Every process (CLI, worker) opens its own connection. `busy_timeout` lets concurrent
writers queue on the lock instead of failing; transitions take it with BEGIN IMMEDIATE.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from vmm import paths
from vmm.machines.records import Machines
from vmm.machines.schema import AREA, MIGRATIONS

DB_NAME = "store.db"


def connect(state: Path | None = None) -> sqlite3.Connection:
    base = paths.ensure(state if state is not None else paths.state_dir())
    conn = sqlite3.connect(base / DB_NAME, isolation_level=None, timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    _migrate(conn)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (area TEXT, version INTEGER, PRIMARY KEY (area, version))")
    done = {v for (v,) in conn.execute("SELECT version FROM migrations WHERE area = ?", (AREA,))}
    if all(v in done for v, _ in MIGRATIONS):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = {v for (v,) in conn.execute("SELECT version FROM migrations WHERE area = ?", (AREA,))}
        for version, sql in MIGRATIONS:
            if version not in done:
                for statement in filter(str.strip, sql.split(";")):
                    conn.execute(statement)
                conn.execute("INSERT INTO migrations (area, version) VALUES (?, ?)", (AREA, version))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_machines(state: Path | None = None) -> Machines:
    return Machines(connect(state))


def open_control(state: Path | None = None):
    """A `MachineControl` on the store under `state` (default: MM_STATE)."""
    from vmm.machines.control import MachineControl

    base = state if state is not None else paths.state_dir()
    return MachineControl(open_machines(base), base)
