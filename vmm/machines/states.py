"""Lifecycle states of a machine and the literal table of allowed steps.

    created ─► starting ─► running ◄─► paused
                  │           │          │
                  ▼           ▼          ▼
               exited ◄── stopping ◄─────┘        (any live state ─► dead)
                  │
                  └──► starting  (mm start / restart)

`dead` means the worker vanished without recording how the VM ended (killed, crashed);
`mm ps` finds it by checking the recorded pid and process start time.
"""
from __future__ import annotations

import enum


class State(str, enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    EXITED = "exited"
    DEAD = "dead"

    def __str__(self) -> str:
        return self.value


S = State
ALLOWED: frozenset[tuple[State, State]] = frozenset(
    {
        (S.CREATED, S.STARTING),
        (S.CREATED, S.DEAD),
        (S.STARTING, S.RUNNING),
        (S.STARTING, S.STOPPING),
        (S.STARTING, S.EXITED),
        (S.STARTING, S.DEAD),
        (S.RUNNING, S.PAUSED),
        (S.RUNNING, S.STOPPING),
        (S.RUNNING, S.EXITED),
        (S.RUNNING, S.DEAD),
        (S.PAUSED, S.RUNNING),
        (S.PAUSED, S.STOPPING),
        (S.PAUSED, S.EXITED),
        (S.PAUSED, S.DEAD),
        (S.STOPPING, S.EXITED),
        (S.STOPPING, S.DEAD),
        (S.EXITED, S.STARTING),
        (S.DEAD, S.STARTING),
    }
)

# States in which a worker process should exist.
LIVE: frozenset[State] = frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING})
# States from which a machine can be (re)started.
STARTABLE: frozenset[State] = frozenset({S.CREATED, S.EXITED, S.DEAD})


def sources(target: State) -> frozenset[State]:
    """Every state from which `target` may be entered."""
    return frozenset(a for a, b in ALLOWED if b == target)


def allowed(current: State, target: State) -> bool:
    return (current, target) in ALLOWED
