"""Machine records: create, look up, transitions, generations, dead workers."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import time

import pytest

from vmm.machines import InvalidTransition, MachineNotFound, Machines, NameInUse, State
from vmm.machines.errors import AmbiguousMachine
from vmm.machines.liveness import process_start_time, self_identity

from .conftest import open_db


def test_create_and_get(machines):
    rec = machines.create("alpine", name="web", config={"cpus": 2}, labels={"a": "b"})
    assert rec.state is State.CREATED and rec.name == "web" and rec.config == {"cpus": 2}
    assert machines.get("web") == rec
    assert machines.get(rec.id) == rec
    assert machines.get(rec.short_id) == rec
    assert machines.get(rec.id[:3]).id == rec.id
    d = rec.to_dict()
    for key in ("name", "id", "state", "image", "ip", "pid", "exit_code", "created"):
        assert key in d


def test_duplicate_name_changes_nothing(machines):
    machines.create("alpine", name="web")
    with pytest.raises(NameInUse) as err:
        machines.create("busybox", name="web")
    assert err.value.hint
    assert [r.image for r in machines.list()] == ["alpine"]


def test_a_name_that_is_also_an_id_prefix_is_still_free(machines):
    """`mm run --name c6` while another machine's id starts with c6 (ten concurrent runs
    named c1..c10 hit this in CI): the name is free, only get() would match the id."""
    from types import SimpleNamespace

    from vmm.cli.run import _check_name_free

    other = machines.create("alpine", name="first")
    prefix = other.id[:2]
    assert machines.get(prefix).id == other.id  # a lookup by id prefix still works
    assert not machines.name_taken(prefix) and machines.name_taken("first")
    _check_name_free(SimpleNamespace(machines=machines), prefix)  # no NameInUse
    assert machines.create("busybox", name=prefix).name == prefix
    with pytest.raises(NameInUse):
        _check_name_free(SimpleNamespace(machines=machines), "first")


def test_generated_names_are_unique(machines):
    names = {machines.create("alpine").name for _ in range(30)}
    assert len(names) == 30


def test_unknown_and_ambiguous(machines):
    with pytest.raises(MachineNotFound):
        machines.get("nope")
    recs = [machines.create("alpine") for _ in range(40)]
    firsts = [r.id[0] for r in recs]
    dup = next(c for c in firsts if firsts.count(c) > 1)
    with pytest.raises(AmbiguousMachine):
        machines.get(dup)


def test_transitions_and_refusals(machines):
    rec = machines.create("alpine", name="vm")
    with pytest.raises(InvalidTransition):
        machines.transition(rec.id, State.RUNNING)
    rec = machines.begin_start(rec.id)
    assert rec.state is State.STARTING and rec.generation == 1
    rec = machines.transition(rec.id, State.RUNNING)
    with pytest.raises(InvalidTransition) as err:
        machines.begin_start(rec.id)
    assert "running" in err.value.message
    rec = machines.transition(rec.id, State.EXITED, generation=1, exit_code=3, exit_reason="poweroff")
    assert (rec.state, rec.exit_code) == (State.EXITED, 3)
    rec = machines.begin_start(rec.id)
    assert rec.generation == 2 and rec.exit_code is None
    # a stale worker of start #1 cannot overwrite start #2
    with pytest.raises(InvalidTransition):
        machines.transition(rec.id, State.EXITED, generation=1, exit_code=9)
    assert machines.get("vm").state is State.STARTING


def test_unknown_field_rejected(machines):
    rec = machines.create("alpine")
    with pytest.raises(ValueError):
        machines.transition(rec.id, State.STARTING, name="x")


def test_dead_worker_detected(machines):
    rec = machines.begin_start(machines.create("alpine", name="d").id)
    proc = subprocess.Popen(["sleep", "30"])
    start = process_start_time(proc.pid)
    machines.set_worker(rec.id, rec.generation, proc.pid, start)
    rec = machines.transition(rec.id, State.RUNNING)
    assert machines.reconcile(rec).state is State.RUNNING
    proc.kill()
    proc.wait()
    rec = machines.reconcile(machines.get("d"))
    assert rec.state is State.DEAD and "died" in rec.error


def test_recycled_pid_is_not_alive(machines):
    rec = machines.begin_start(machines.create("alpine").id)
    pid, start = self_identity()
    machines.set_worker(rec.id, rec.generation, pid, start - 1)  # same pid, other process
    assert machines.reconcile(machines.get(rec.id)).state is State.DEAD


def test_starting_without_worker_has_grace(machines):
    rec = machines.begin_start(machines.create("alpine").id)
    assert machines.reconcile(rec).state is State.STARTING
    later = time.time() + 120
    assert machines.reconcile(rec, now=later).state is State.DEAD


def _race(db_path, machine_id, target, barrier, results):
    m = Machines(open_db(db_path))
    barrier.wait()
    try:
        m.transition(machine_id, State(target))
        results.put((os.getpid(), target))
    except InvalidTransition:
        results.put((os.getpid(), None))


def test_concurrent_transitions_from_processes(db_path):
    """Eight processes race for each step; exactly one wins it and the rest change nothing."""
    m = Machines(open_db(db_path))
    rec = m.transition(m.begin_start(m.create("alpine").id).id, State.RUNNING)
    ctx = multiprocessing.get_context("fork")
    for target in ("paused", "running", "stopping", "exited"):
        barrier, results = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(db_path, rec.id, target, barrier, results)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        outcomes = [results.get(timeout=5)[1] for _ in procs]
        assert outcomes.count(target) == 1, (target, outcomes)
        assert m.get(rec.id).state.value == target
