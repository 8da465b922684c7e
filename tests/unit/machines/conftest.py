"""Fixtures: a real store file (vmm.store, WAL) with the machines migrations applied."""
from __future__ import annotations

import sqlite3

import pytest

from vmm.machines import Machines
from vmm import store
from vmm.machines.schema import AREA, MIGRATIONS


def open_db(path) -> sqlite3.Connection:
    return store.connect(path)


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "mm.db"
    conn = open_db(path)
    store.migrate(conn, AREA, MIGRATIONS)
    conn.close()
    return path


@pytest.fixture
def machines(db_path) -> Machines:
    return Machines(open_db(db_path))
