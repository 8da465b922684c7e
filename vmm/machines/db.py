"""Opening the machines table: the store's SQLite file (`vmm.store`) with the machines
area's migrations applied. Every process (CLI, worker) opens its own connection."""
from __future__ import annotations

from pathlib import Path

from vmm import paths, store
from vmm.machines.records import Machines
from vmm.machines.schema import AREA, MIGRATIONS


def open_machines(state: Path | None = None) -> Machines:
    base = state if state is not None else paths.state_dir()
    conn = store.connect(base / store.DB_NAME)
    store.migrate(conn, AREA, MIGRATIONS)
    return Machines(conn)


def open_control(state: Path | None = None):
    """A `MachineControl` on the store under `state` (default: MM_STATE)."""
    from vmm.machines.control import MachineControl

    base = state if state is not None else paths.state_dir()
    return MachineControl(open_machines(base), base)
