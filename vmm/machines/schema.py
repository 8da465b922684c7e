"""The `machines` table, as numbered migrations of the store's "machines" area.

Columns that the lifecycle changes are plain columns (state, pid, exit code); the
settings a machine was run with are one JSON document (`config`) because only the
worker and `inspect` read them. `generation` counts starts, so a worker from an
earlier start can never overwrite the outcome of a later one.
"""
from __future__ import annotations

AREA = "machines"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE machines (
            id            TEXT PRIMARY KEY CHECK (length(id) = 64),
            short_id      TEXT NOT NULL UNIQUE,
            name          TEXT NOT NULL UNIQUE,
            image         TEXT NOT NULL,
            state         TEXT NOT NULL,
            created       REAL NOT NULL,
            started_at    REAL,
            finished_at   REAL,
            exit_code     INTEGER,
            exit_reason   TEXT,
            error         TEXT,
            worker_pid    INTEGER,
            worker_start  INTEGER,
            generation    INTEGER NOT NULL DEFAULT 0,
            ip            TEXT,
            auto_remove   INTEGER NOT NULL DEFAULT 0,
            labels        TEXT NOT NULL DEFAULT '{}',
            config        TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX machines_state ON machines(state);
        """,
    ),
]
