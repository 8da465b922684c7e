"""vmm.store: WAL connection, immediate transactions, per-area migrations, concurrency."""
from __future__ import annotations

import multiprocessing

import pytest

from vmm import store

MIGRATIONS = [(1, "CREATE TABLE things (n INTEGER PRIMARY KEY, v TEXT)"),
              (2, "ALTER TABLE things ADD COLUMN w INTEGER DEFAULT 0; CREATE INDEX things_v ON things(v)")]


def test_connect_uses_wal_and_busy_timeout(tmp_path):
    conn = store.connect(tmp_path / "mm.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == store.BUSY_TIMEOUT_MS


def test_default_path_is_under_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_STATE", str(tmp_path / "state"))
    store.connect().close()
    assert (tmp_path / "state" / "mm.db").exists()


def test_migrations_apply_once_per_area(tmp_path):
    conn = store.connect(tmp_path / "mm.db")
    store.migrate(conn, "a", MIGRATIONS[:1])
    store.migrate(conn, "a", MIGRATIONS)
    store.migrate(conn, "a", MIGRATIONS)
    assert store.applied(conn, "a") == {1, 2}
    assert store.applied(conn, "b") == set()
    cols = [r["name"] for r in conn.execute("PRAGMA table_info(things)")]
    assert cols == ["n", "v", "w"]


def test_failed_migration_rolls_back_everything(tmp_path):
    conn = store.connect(tmp_path / "mm.db")
    with pytest.raises(Exception):
        store.migrate(conn, "a", [(1, "CREATE TABLE t1 (x)"), (2, "CREATE TABLE broken (")])
    assert store.applied(conn, "a") == set()
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 't1'").fetchone() is None


def test_migration_versions_must_increase(tmp_path):
    with pytest.raises(ValueError):
        store.migrate(store.connect(tmp_path / "mm.db"), "a", [(2, "SELECT 1"), (1, "SELECT 1")])


def test_transaction_rolls_back_on_error(tmp_path):
    conn = store.connect(tmp_path / "mm.db")
    store.migrate(conn, "a", MIGRATIONS)
    with pytest.raises(RuntimeError):
        with store.transaction(conn):
            conn.execute("INSERT INTO things (v) VALUES ('x')")
            raise RuntimeError("boom")
    assert conn.execute("SELECT COUNT(*) FROM things").fetchone()[0] == 0


def _bump(path, times):
    conn = store.connect(path)
    store.migrate(conn, "a", MIGRATIONS)
    for _ in range(times):
        with store.transaction(conn):
            (n,) = conn.execute("SELECT COUNT(*) FROM things").fetchone()
            conn.execute("INSERT INTO things (n, v) VALUES (?, 'x')", (n + 1,))


def test_read_decide_write_is_atomic_across_processes(tmp_path):
    path = tmp_path / "mm.db"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_bump, args=(path, 10)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    conn = store.connect(path)
    assert [r[0] for r in conn.execute("SELECT n FROM things ORDER BY n")] == list(range(1, 81))
