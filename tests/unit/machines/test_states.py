"""The transition table is the documented lifecycle."""
from __future__ import annotations

from vmm.machines.states import ALLOWED, LIVE, STARTABLE, State, allowed, sources


def test_lifecycle_path():
    path = [State.CREATED, State.STARTING, State.RUNNING, State.PAUSED, State.RUNNING,
            State.STOPPING, State.EXITED, State.STARTING]
    for a, b in zip(path, path[1:]):
        assert allowed(a, b), (a, b)


def test_forbidden_steps():
    assert not allowed(State.EXITED, State.RUNNING)
    assert not allowed(State.CREATED, State.RUNNING)
    assert not allowed(State.EXITED, State.PAUSED)
    assert not allowed(State.STOPPING, State.RUNNING)
    assert not any(a == b for a, b in ALLOWED)


def test_every_live_state_can_die():
    for s in LIVE:
        assert allowed(s, State.DEAD)
    assert sources(State.STARTING) == STARTABLE
