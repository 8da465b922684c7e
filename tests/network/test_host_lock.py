"""The host nft table under concurrency: every nft load runs under the host-table file
lock and never inside a store write transaction, and concurrent attaches and detaches
(ports freed by one machine taken by another) leave the table exactly as the store says."""
from __future__ import annotations

import fcntl
import multiprocessing
import os
import re
import sqlite3
import time

from vmm import store
from vmm.network import attachment as net
from vmm.network import hostlock, ipam, nft
from vmm.network.errors import PortInUse
from tests.network.conftest import host_rules


def _probe(db) -> tuple[bool, bool]:
    """(store write lock free, host-table lock held) as seen from this very moment."""
    other = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        write_free = True
    except sqlite3.OperationalError:
        write_free = False
    finally:
        other.close()
    fd = os.open(hostlock.lock_path(ipam.open_db()), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: conflicts even in-process
        lock_held = False
    except BlockingIOError:
        lock_held = True
    finally:
        os.close(fd)
    return write_free, lock_held


def test_nft_runs_under_the_host_lock_and_outside_store_transactions(host, monkeypatch):
    db = store.db_path()
    seen: list[tuple[str, bool, bool]] = []
    real_run = nft.run

    def watched(script: str) -> None:
        if f"ip {net.scope.host_table()}" in script:  # the host table, not a VM namespace's
            seen.append((script.split("\n", 1)[0], *_probe(db)))
        real_run(script)

    monkeypatch.setattr(nft, "run", watched)
    net.attach("vm-a", publish=["18300:80"])           # first: the full render
    net.attach("vm-b", publish=["18301:80"])           # then: additions only
    net.attach("vm-b", publish=["18302:80"])           # re-attach dropping a port
    net.detach("vm-b")                                 # deletes its port
    net.sync_host(ipam.open_db())                      # what prune ends with
    net.detach("vm-a")                                 # the last: the table goes
    assert len(seen) >= 6
    assert all(free and held for _, free, held in seen), seen


def _published(rules: str) -> set[tuple[int, str, int]]:
    body = re.search(r"map pub_tcp \{.*?\}", rules, re.S).group(0)
    return {(int(p), ip, int(g)) for p, ip, g in re.findall(r"(\d+) : ([\d.]+) \. (\d+)", body)}


def _stored() -> set[tuple[int, str, int]]:
    conn = ipam.open_db()
    rows = conn.execute("SELECT p.host_port, l.ip, p.guest_port FROM ports p JOIN leases l USING (vm_id)")
    return {(r[0], r[1], r[2]) for r in rows}


def _churn(job: str, vm: str, port: int, result) -> None:
    try:
        if job == "detach":
            net.detach(vm)
        else:
            deadline = time.monotonic() + 60
            while True:  # the port frees when its detaching machine commits
                try:
                    net.attach(vm, publish=[f"{port}:{port - 18000}"])
                    break
                except PortInUse:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.005)
        result.put((job, vm, None))
    except BaseException as exc:  # noqa: BLE001 (reported to the parent)
        result.put((job, vm, repr(exc)))


def test_concurrent_attach_and_detach_keep_the_table_in_step_with_the_store(host):
    keep = net.attach("keeper", publish=["18399:99"])
    for i in range(8):
        net.attach(f"old{i}", publish=[f"{18400 + i}:{400 + i}"])
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    # Eight machines leave while eight others arrive, each taking a port one of them frees.
    jobs = [("detach", f"old{i}", 0) for i in range(8)] + [("attach", f"new{i}", 18400 + i) for i in range(8)]
    procs = [ctx.Process(target=_churn, args=(*job, result)) for job in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    outcomes = [result.get(timeout=5) for _ in jobs]
    assert [o for o in outcomes if o[2]] == []
    leases = ipam.list_leases(ipam.open_db())
    assert sorted(lease.vm_id for lease in leases) == ["keeper"] + [f"new{i}" for i in range(8)]
    assert len({lease.ip for lease in leases}) == 9
    assert _published(host_rules()) == _stored()
    assert (18399, keep.host_ip, 99) in _stored() and len(_stored()) == 9
    for lease in leases:
        net.detach(lease.vm_id)
    assert host_rules() == ""
