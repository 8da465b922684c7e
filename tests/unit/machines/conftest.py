"""Fixtures: a real SQLite store file in WAL mode with the machines migration applied."""
from __future__ import annotations

import sqlite3

import pytest

from vmm.machines import Machines
from vmm.machines.schema import MIGRATIONS


def open_db(path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "store.db"
    conn = open_db(path)
    for _, sql in MIGRATIONS:
        conn.executescript(sql)
    conn.close()
    return path


@pytest.fixture
def machines(db_path) -> Machines:
    return Machines(open_db(db_path))
