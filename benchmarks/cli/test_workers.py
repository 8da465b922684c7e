"""20 workers started concurrently, each running the real tiny test guest on /dev/kvm:
wall time until all run, and each worker's resident memory (issue 8's "20 concurrent
VMs" figure, on this host; Linux guests are measured in the lab).

    .venv/bin/python -m pytest benchmarks/cli/test_workers.py --benchmark-only -s
"""
from __future__ import annotations

import os
import statistics
import threading

import pytest

from vmm.paths import REPO_ROOT

N = 20


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.fixture
def control(tmp_path, monkeypatch):
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs /dev/kvm for the tiny test guests")
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    from vmm.machines.db import open_control

    c = open_control(tmp_path / "s")
    yield c
    for rec in c.machines.list():
        c.remove(rec.id, force=True)


def test_twenty_concurrent_workers(benchmark, control):
    from vmm.machines.db import open_control

    worker = {"factory": "tests.worker.tinyguest:create", "machine": {}, "stop_timeout": 5.0}

    def setup():
        for rec in control.machines.list():
            control.remove(rec.id, force=True)
        recs = [control.machines.create("tiny", config={"worker": worker}) for _ in range(N)]
        return (recs,), {}

    def start_all(recs):
        threads = [threading.Thread(target=lambda r=r: open_control(control.state_dir).start(r.id)) for r in recs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    benchmark.pedantic(start_all, setup=setup, rounds=3, iterations=1)
    live = control.machines.reconcile_all(include_stopped=False)
    assert len(live) == N
    rss = [_rss_kib(r.worker_pid) for r in live]
    benchmark.extra_info["worker_rss_kib_median"] = statistics.median(rss)
    benchmark.extra_info["worker_rss_kib_max"] = max(rss)
    print(f"\nper-worker RSS: median {statistics.median(rss) / 1024:.1f} MiB, max {max(rss) / 1024:.1f} MiB")


def test_start_one_worker(benchmark, control):
    """`mm start` of one machine: double fork, worker imports, VM built, vCPU running."""
    worker = {"factory": "tests.worker.tinyguest:create", "machine": {}, "stop_timeout": 5.0}
    rec = control.machines.create("tiny", config={"worker": worker})

    def setup():
        if control.find(rec.id).state.value != "created":
            control.kill(rec.id)
            control.wait(rec.id)
        return (), {}

    benchmark.pedantic(lambda: control.start(rec.id), setup=setup, rounds=5, iterations=1)


def test_pause_resume_round_trip(benchmark, control):
    """One API pause + resume of a running tiny guest (the store updated each time)."""
    worker = {"factory": "tests.worker.tinyguest:create", "machine": {}, "stop_timeout": 5.0}
    rec = control.start(control.machines.create("tiny", config={"worker": worker}).id)
    client = control.client(rec)
    benchmark.pedantic(lambda: (client.pause(), client.resume()), rounds=20, iterations=1)
