"""Machine records in the store and their atomic state transitions.

`Machines` wraps one sqlite3 connection to the store. Every change runs in a
`BEGIN IMMEDIATE` transaction (the write lock is taken up front, so two processes
changing the same machine serialize instead of both reading the old state), checks the
step against `states.ALLOWED` and, for worker-reported outcomes, the start generation.
"""
from __future__ import annotations

import json
import sqlite3
import time

from vmm import store
from vmm.machines import ids, liveness
from vmm.machines.errors import AmbiguousMachine, InvalidTransition, MachineNotFound, NameInUse
from vmm.machines.states import LIVE, STARTABLE, State, allowed
from vmm.plain import REQUIRED, Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~4 ms of import time; annotations here are strings
    from typing import Any

# A machine in `starting` with no worker recorded yet is presumed dead after this long
# (the launcher records the worker's pid within a second of forking it).
STARTING_GRACE_S = 60.0

_UPDATABLE = frozenset(
    {
        "started_at", "finished_at", "exit_code", "exit_reason", "error", "worker_pid",
        "worker_start", "ip", "config", "image",
    }
)


class MachineRecord(Frozen):
    FIELDS = {
        "id": REQUIRED, "name": REQUIRED, "image": REQUIRED,
        "state": REQUIRED,       # State
        "created": REQUIRED,     # float
        "started_at": None,      # float | None, and so on: None until known
        "finished_at": None,
        "exit_code": None,
        "exit_reason": None,
        "error": None,
        "worker_pid": None,
        "worker_start": None,
        "generation": 0,
        "ip": None,
        "auto_remove": False,
        "labels": {},            # dict[str, str]
        "config": {},            # dict[str, Any]
    }

    @property
    def short_id(self) -> str:
        return ids.short_id(self.id)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "MachineRecord":
        data = {k: row[k] for k in row.keys() if k != "short_id"}
        data["state"] = State(data["state"])
        data["auto_remove"] = bool(data["auto_remove"])
        data["labels"] = json.loads(data["labels"])
        data["config"] = json.loads(data["config"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of `mm inspect` (a stable, documented set of keys)."""
        d = self.asdict()
        d["state"] = self.state.value
        d["short_id"] = self.short_id
        d["pid"] = self.worker_pid if self.state in LIVE else None
        return d


class Machines:
    """The machines table. One instance per connection; safe across processes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.conn.row_factory = sqlite3.Row

    def _tx(self):
        return store.transaction(self.conn)

    # -- reading -------------------------------------------------------------------------

    def _row(self, machine_id: str) -> MachineRecord:
        row = self.conn.execute("SELECT * FROM machines WHERE id = ?", (machine_id,)).fetchone()
        if row is None:
            raise MachineNotFound(f"no such machine: {machine_id}")
        return MachineRecord.from_row(row)

    def get(self, ref: str) -> MachineRecord:
        """By exact name, full id, or unique id prefix (Docker's rules, name first)."""
        row = self.conn.execute("SELECT * FROM machines WHERE name = ? OR id = ?", (ref, ref)).fetchone()
        if row is not None:
            return MachineRecord.from_row(row)
        if ids.looks_like_id_prefix(ref):
            rows = self.conn.execute(
                "SELECT * FROM machines WHERE id LIKE ? ESCAPE '\\'", (ref + "%",)
            ).fetchall()
            if len(rows) == 1:
                return MachineRecord.from_row(rows[0])
            if len(rows) > 1:
                raise AmbiguousMachine(f"id prefix {ref!r} matches {len(rows)} machines")
        raise MachineNotFound(f"no such machine: {ref}")

    def name_taken(self, name: str) -> bool:
        """Whether a machine has exactly this name (not get(): "c6" would also match an
        id starting with c6, and refuse a free name)."""
        return self.conn.execute("SELECT 1 FROM machines WHERE name = ?", (name,)).fetchone() is not None

    def list(self, include_stopped: bool = True) -> list[MachineRecord]:
        rows = self.conn.execute("SELECT * FROM machines ORDER BY created DESC").fetchall()
        records = [MachineRecord.from_row(r) for r in rows]
        if not include_stopped:
            records = [r for r in records if r.state in LIVE]
        return records

    # -- creating and removing -----------------------------------------------------------

    def create(
        self,
        image: str,
        name: str | None = None,
        config: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        auto_remove: bool = False,
    ) -> MachineRecord:
        if name is not None:
            ids.validate_name(name)
        for attempt in range(50):
            machine_id = ids.new_id()
            chosen = name or (ids.random_name() if attempt < 20 else f"{ids.random_name()}_{attempt}")
            try:
                with self._tx() as c:
                    c.execute(
                        "INSERT INTO machines (id, short_id, name, image, state, created, auto_remove,"
                        " labels, config) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            machine_id, ids.short_id(machine_id), chosen, image, State.CREATED.value,
                            time.time(), int(auto_remove), json.dumps(labels or {}),
                            json.dumps(config or {}),
                        ),
                    )
            except sqlite3.IntegrityError as exc:
                if "machines.name" in str(exc) and name is not None:
                    raise NameInUse(f"the name {name!r} is already used by another machine") from None
                continue  # a generated name or a short id clashed: draw again
            return self._row(machine_id)
        raise NameInUse("could not find a free machine name", "give one with --name")

    def delete(self, machine_id: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM machines WHERE id = ?", (machine_id,))

    # -- transitions ---------------------------------------------------------------------

    def transition(
        self,
        machine_id: str,
        target: State,
        generation: int | None = None,
        **fields: Any,
    ) -> MachineRecord:
        """Move to `target` if the step is allowed (and, given `generation`, it is current).

        Raises InvalidTransition otherwise, leaving the record untouched.
        """
        bad = set(fields) - _UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")
        with self._tx() as c:
            rec = self._row(machine_id)
            if generation is not None and rec.generation != generation:
                raise InvalidTransition(rec.name, f"{rec.state} (a later start, #{rec.generation})", target.value)
            if not allowed(rec.state, target):
                raise InvalidTransition(rec.name, rec.state.value, target.value)
            self._update(c, machine_id, state=target.value, **fields)
        return self._row(machine_id)

    def begin_start(self, machine_id: str) -> MachineRecord:
        """created/exited/dead → starting, as a new generation with the old outcome cleared."""
        with self._tx() as c:
            rec = self._row(machine_id)
            if rec.state not in STARTABLE:
                raise InvalidTransition(rec.name, rec.state.value, State.STARTING.value,
                                        "it is already running; `mm restart` stops it first")
            self._update(
                c, machine_id, state=State.STARTING.value, generation=rec.generation + 1,
                started_at=time.time(), finished_at=None, exit_code=None, exit_reason=None,
                error=None, worker_pid=None, worker_start=None,
            )
        return self._row(machine_id)

    def set_worker(self, machine_id: str, generation: int, pid: int, start_time: int) -> MachineRecord:
        with self._tx() as c:
            rec = self._row(machine_id)
            if rec.generation != generation or rec.state not in LIVE:
                raise InvalidTransition(rec.name, rec.state.value, "owned by worker %d" % pid)
            self._update(c, machine_id, worker_pid=pid, worker_start=start_time)
        return self._row(machine_id)

    def update(self, machine_id: str, **fields: Any) -> MachineRecord:
        """Change non-state columns (ip, config...)."""
        bad = set(fields) - _UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")
        with self._tx() as c:
            self._row(machine_id)
            self._update(c, machine_id, **fields)
        return self._row(machine_id)

    @staticmethod
    def _update(c: sqlite3.Connection, machine_id: str, **fields: Any) -> None:
        if "config" in fields and not isinstance(fields["config"], str):
            fields["config"] = json.dumps(fields["config"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        c.execute(f"UPDATE machines SET {cols} WHERE id = ?", (*fields.values(), machine_id))

    # -- dead workers --------------------------------------------------------------------

    def reconcile(self, rec: MachineRecord, now: float | None = None) -> MachineRecord:
        """Mark `rec` dead if its state says a worker runs but none does. Returns the truth."""
        if rec.state not in LIVE:
            return rec
        if rec.worker_pid is None:
            if (now or time.time()) - (rec.started_at or rec.created) < STARTING_GRACE_S:
                return rec
        elif liveness.is_alive(rec.worker_pid, rec.worker_start):
            return rec
        try:
            return self.transition(
                rec.id, State.DEAD, generation=rec.generation, finished_at=time.time(),
                error="the worker process died without recording how the VM ended",
            )
        except InvalidTransition:
            return self._row(rec.id)  # someone else settled it first: report what they wrote

    def reconcile_all(self, include_stopped: bool = True) -> list[MachineRecord]:
        return [r for r in (self.reconcile(r) for r in self.list()) if include_stopped or r.state in LIVE]
