"""The host-table file lock: beside the store, exclusive across processes, re-entrant in a
thread, and separate from the store's write lock (an allocation does not wait for it)."""
from __future__ import annotations

import fcntl
import multiprocessing
import os
import sqlite3

from vmm import store
from vmm.network import hostlock, ipam


def _try_lock(path, result):
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result.send("got it")
    except BlockingIOError:
        result.send("busy")
    finally:
        os.close(fd)


def _in_child(target, *args) -> str:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    return parent.recv()


def test_the_lock_file_sits_beside_the_store(tmp_path):
    conn = ipam.open_db(tmp_path / "state" / "mm.db")
    assert hostlock.lock_path(conn) == tmp_path / "state" / hostlock.LOCK_NAME


def test_held_excludes_another_process_until_released(tmp_path):
    conn = ipam.open_db(tmp_path / "mm.db")
    path = hostlock.lock_path(conn)
    with hostlock.held(conn):
        assert _in_child(_try_lock, path) == "busy"
        with hostlock.held(conn):  # nested in one thread: no self-deadlock
            assert _in_child(_try_lock, path) == "busy"
        assert _in_child(_try_lock, path) == "busy"  # the outer hold still counts
    assert _in_child(_try_lock, path) == "got it"


def _allocate(db, result):
    conn = ipam.open_db(db)
    conn.execute("PRAGMA busy_timeout=2000")  # a wait would mean the locks are one
    with store.transaction(conn):
        lease = ipam.allocate(conn, "vm-child", ipam.DEFAULT_NAME)
    result.send(lease.ip)


def test_an_allocation_does_not_wait_for_the_host_lock(tmp_path):
    db = tmp_path / "mm.db"
    conn = ipam.open_db(db)
    ipam.create_network(conn, ipam.DEFAULT_NAME, "10.88.0.0/16", False, [])
    with hostlock.held(conn):
        assert _in_child(_allocate, db) == "10.88.0.2"


def test_an_in_memory_store_locks_in_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_STATE", str(tmp_path))
    conn = sqlite3.connect(":memory:")
    assert hostlock.lock_path(conn) == tmp_path / hostlock.LOCK_NAME
