"""Machine records: what `mm ps` lists, kept in the store's `machines` table.

A record holds a machine's identity (64-hex id, 12-char short form, unique name), the
settings it was run with, its lifecycle state and its worker (pid + process start time,
so a dead or recycled pid is noticed). State changes go through `Machines.transition`,
which is atomic across processes: `UPDATE ... WHERE state IN (allowed)` in one
transaction. Nothing here starts processes; `vmm.worker` does.
"""
from __future__ import annotations

from vmm.machines.errors import BadName, InvalidTransition, MachineNotFound, NameInUse
from vmm.machines.ids import new_id, random_name, short_id, validate_name
from vmm.machines.states import State


def __getattr__(name: str):
    # MachineRecord and Machines load on first use: they bring sqlite3 (and datetime),
    # which the jailed VMM, importing this package for State and errors, never needs.
    if name in ("MachineRecord", "Machines"):
        from vmm.machines import records

        return getattr(records, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BadName",
    "InvalidTransition",
    "MachineNotFound",
    "MachineRecord",
    "Machines",
    "NameInUse",
    "State",
    "new_id",
    "random_name",
    "short_id",
    "validate_name",
]
