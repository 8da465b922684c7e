"""Lifecycle control on records without a worker: refusals change nothing, rm and
prune leave no files. (Control of real workers is in tests/worker.)"""
from __future__ import annotations

import pytest

from vmm.errors import Conflict
from vmm.machines import InvalidTransition, MachineNotFound, State
from vmm.machines.db import open_control


@pytest.fixture
def control(tmp_path):
    return open_control(tmp_path / "state")


def _dead(control, name):
    rec = control.machines.create("alpine", name=name, config={"worker": {"factory": "x:y", "machine": {}}})
    rec = control.machines.begin_start(rec.id)
    control.machines.set_worker(rec.id, rec.generation, 2**22 + 1, 1)  # no such process
    control.paths(rec).create()
    control.paths(rec).console_log.write_bytes(b"boot\n")
    return rec


def test_worker_gone_is_dead_and_removable(control):
    rec = _dead(control, "ghost")
    assert control.find("ghost").state is State.DEAD
    control.remove("ghost")
    assert not control.paths(rec).root.exists()
    with pytest.raises(MachineNotFound):
        control.find("ghost")


def test_refusals_change_nothing(control):
    rec = control.machines.create("alpine", name="idle")
    before = control.machines.get(rec.id)
    for action in (control.pause, control.unpause, control.kill, control.stats):
        with pytest.raises(InvalidTransition) as err:
            action("idle")
        assert "created" in err.value.message
    assert control.machines.get(rec.id) == before


def test_rm_of_running_needs_force(control):
    rec = control.machines.transition(control.machines.begin_start(
        control.machines.create("alpine", name="busy").id).id, State.RUNNING)
    import os

    from vmm.machines.liveness import self_identity

    control.machines.set_worker(rec.id, rec.generation, *self_identity())  # "alive": this process
    with pytest.raises(Conflict) as err:
        control.remove("busy")
    assert "-f" in err.value.hint
    assert control.find("busy").state is State.RUNNING
    assert os.getpid()


def test_start_without_worker_config_refused(control):
    control.machines.create("alpine", name="bare")
    with pytest.raises(Conflict):
        control.start("bare")
    assert control.find("bare").state is State.CREATED


def test_prune_removes_stopped_and_orphans(control, tmp_path):
    _dead(control, "a")
    keep = control.machines.create("alpine", name="fresh")  # a `mm run` in progress
    orphan = tmp_path / "state" / "machines" / "0123456789ab"
    orphan.mkdir(parents=True)
    (orphan / "api.sock").write_bytes(b"")
    removed = control.prune()
    assert [r.name for r in removed] == ["a"]
    assert not orphan.exists()
    assert [r.name for r in control.machines.list()] == [keep.name]


def test_stop_of_stopped_is_noop(control):
    rec = _dead(control, "s")
    assert control.stop("s").state is State.DEAD
    assert control.wait("s") == 1
    assert control.machines.get(rec.id).state is State.DEAD
