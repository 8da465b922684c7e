"""benchmarks/peer_cpus.py: which CPUs each side of a side-by-side run gets."""
from __future__ import annotations

import pytest

from benchmarks import peer_cpus

LAB = {"MM_WORKER_CPUSET": "single"}


@pytest.fixture
def two_cpus(monkeypatch):
    monkeypatch.setattr(peer_cpus, "_START_CPUS", [0, 1])
    monkeypatch.setattr(peer_cpus, "_cpuset_cgroup", lambda cpu: None)  # no cgroup writes from a test


def test_split_puts_both_vms_on_the_last_cpu_and_the_harness_elsewhere(two_cpus, monkeypatch):
    assert peer_cpus.ours_prefix("split", LAB) == ("taskset", "-c", "1")
    assert peer_cpus.peer_prefix("split", LAB) == ("taskset", "-c", "1")
    moved = []
    monkeypatch.setattr(peer_cpus.os, "sched_setaffinity", lambda pid, cpus: moved.append((pid, cpus)))
    peer_cpus.confine_harness("split", LAB)
    assert moved == [(0, [0])]
    assert "lab CPU 1" in peer_cpus.describe("split", LAB) and "on 0" in peer_cpus.describe("split", LAB)


def test_other_modes_leave_ours_and_the_harness_alone(two_cpus, monkeypatch):
    monkeypatch.setattr(peer_cpus.os, "sched_setaffinity", lambda *a: pytest.fail("moved the harness"))
    for mode in ("same", "any"):
        assert peer_cpus.ours_prefix(mode, LAB) == ()
        peer_cpus.confine_harness(mode, LAB)
    assert peer_cpus.peer_prefix("any", LAB) == ()
    assert peer_cpus.peer_prefix("same", LAB)[:2] == ("taskset", "-c")


def test_split_outside_the_lab_or_on_one_cpu_confines_nothing(monkeypatch):
    monkeypatch.setattr(peer_cpus, "_START_CPUS", [0, 1])
    assert peer_cpus.ours_prefix("split", {}) == () and peer_cpus.peer_prefix("split", {}) == ()
    monkeypatch.setattr(peer_cpus, "_START_CPUS", [0])
    monkeypatch.setattr(peer_cpus, "_cpuset_cgroup", lambda cpu: None)
    assert peer_cpus.ours_prefix("split", LAB) == ()
    assert peer_cpus.peer_prefix("split", LAB) == ("taskset", "-c", "0")  # one CPU: as "same"
