"""One editor of the host nft table at a time: an flock on a file beside the store.

The host table is edited in place (attach adds a VM's elements, detach deletes them)
and rendered again from the store to repair it. Two editors interleaving could delete
an element another process just added for its VM, so the edits are serialized. They
used to be serialized by the store's write lock, held across the nft load, which made
every other store writer (an IP allocation, a machine's state change) queue behind nft.
Now this file lock serializes the host-table section and store transactions never span
an nft load.

The rules that keep the table in step with the store:
1. Every change to the host table runs under `held(conn)`.
2. A removal the table must follow (a released lease, an unpublished port) commits
   under the lock, in the same hold as its nft deletion; so no render or addition
   runs between the two.
3. An addition (a new lease, a published port) commits without the lock, in the
   allocation transaction; its process then adds the elements under the lock.
   Anything that reads the store under the lock sees every removal applied.
4. Lock order: this lock, then the store's write lock, never the other way round.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from vmm import paths

LOCK_NAME = "network-host.lock"
_held = threading.local()  # paths this thread holds: a nested `held` must not deadlock on itself


def lock_path(conn: sqlite3.Connection) -> Path:
    """The lock file beside the store's database file (the state directory)."""
    for row in conn.execute("PRAGMA database_list"):
        if row[1] == "main" and row[2]:
            return Path(row[2]).parent / LOCK_NAME
    return paths.state_dir() / LOCK_NAME  # an in-memory store: the state directory


@contextlib.contextmanager
def held(conn: sqlite3.Connection) -> Iterator[None]:
    """Hold the host-table lock of `conn`'s store for the block (re-entrant per thread)."""
    path = str(lock_path(conn))
    mine = getattr(_held, "paths", None)
    if mine is None:
        mine = _held.paths = set()
    if path in mine:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes, also if the process dies
        mine.add(path)
        try:
            yield
        finally:
            mine.discard(path)
    finally:
        os.close(fd)
