"""Lifecycle operations on a machine, shared by the CLI and whatever drives mm next
(a compose file, an MCP server, a containerd shim): start, stop, kill, pause, unpause,
wait, remove and prune.

Each checks the record's state first, so bad requests fail with a clear error and
change nothing; the worker then does the work and writes the new state itself.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from vmm.errors import Conflict
from vmm.machines import liveness
from vmm.machines.errors import InvalidTransition
from vmm.machines.layout import MachinePaths
from vmm.machines.records import MachineRecord, Machines
from vmm.machines.states import LIVE, STARTABLE, State
from vmm.timeline import mark

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~40 ms of `mm run` start-up in the lab (tests/unit/cli/test_run_imports.py)
    from typing import Any


class MachineControl:
    def __init__(self, machines: Machines, state_dir: Path) -> None:
        self.machines, self.state_dir = machines, state_dir

    def paths(self, rec: MachineRecord) -> MachinePaths:
        return MachinePaths.for_id(rec.id, self.state_dir)

    def client(self, rec: MachineRecord, timeout: float | None = 10.0):
        from vmm.api.client import WorkerClient

        return WorkerClient(self.paths(rec).api_socket, timeout=timeout)

    def find(self, ref: str) -> MachineRecord:
        """The record for `ref`, corrected if its worker died (so callers see the truth)."""
        return self.machines.reconcile(self.machines.get(ref))

    def _live(self, ref: str, *states: State) -> MachineRecord:
        rec = self.find(ref)
        if rec.state not in states:
            raise InvalidTransition(rec.name, rec.state.value, "/".join(s.value for s in states),
                                    "`mm ps -a` shows its state")
        return rec

    # -- starting ------------------------------------------------------------------------

    def start(self, ref: str) -> MachineRecord:
        """Start a created, exited or dead machine with a new worker; returns once it runs."""
        from vmm.worker.launch import start_worker
        from vmm.worker.spec import WorkerSpec

        rec = self.find(ref)
        if rec.state not in STARTABLE:
            raise InvalidTransition(rec.name, rec.state.value, "started", "it is already running")
        worker = rec.config.get("worker")
        if not worker:
            raise Conflict(f"machine {rec.name} has no worker configuration", "remove it and `mm run` again")
        rec = self.machines.begin_start(rec.id)
        spec = WorkerSpec(machine_id=rec.id, generation=rec.generation, state_dir=str(self.state_dir), **worker)
        start_worker(spec, self.paths(rec))
        return self.machines.get(rec.id)

    # -- running machines ----------------------------------------------------------------

    def pause(self, ref: str) -> MachineRecord:
        rec = self._live(ref, State.RUNNING)
        self.client(rec).pause()
        return self.machines.get(rec.id)

    def unpause(self, ref: str) -> MachineRecord:
        rec = self._live(ref, State.PAUSED)
        self.client(rec).resume()
        return self.machines.get(rec.id)

    def stop(self, ref: str, timeout: float = 10.0) -> MachineRecord:
        """Graceful stop, forced after `timeout`. Stopping a stopped machine is a no-op."""
        rec = self.find(ref)
        if rec.state in LIVE:
            self.client(rec, timeout=timeout + 30).stop(timeout)
            self._await_worker_exit(rec)
        return self.machines.reconcile(self.machines.get(rec.id))

    def kill(self, ref: str, sig: str = "KILL") -> MachineRecord:
        rec = self._live(ref, State.RUNNING, State.PAUSED, State.STOPPING)
        self.client(rec).kill(sig)
        return self.machines.get(rec.id)

    def wait(self, ref: str) -> int:
        """Block until the machine has ended; its exit code."""
        rec = self.find(ref)
        if rec.state in LIVE:
            from vmm.api.errors import WorkerUnreachable

            try:
                self.client(rec, timeout=None).wait()
            except WorkerUnreachable:
                pass  # it ended (or died) between our read and the call: the store knows
            mark("cli.waited")
            self._await_worker_exit(rec)
            rec = self.machines.reconcile(self.machines.get(rec.id))
        return rec.exit_code if rec.exit_code is not None else 0 if rec.state is State.CREATED else 1

    def stats(self, ref: str) -> dict[str, Any]:
        rec = self._live(ref, State.RUNNING, State.PAUSED, State.STOPPING)
        return self.client(rec).stats()

    def _await_worker_exit(self, rec: MachineRecord, timeout: float = 10.0) -> None:
        """The worker records the end and then exits; wait for both so callers see `exited`."""
        rec = self.machines.get(rec.id)
        liveness.wait_gone(rec.worker_pid, rec.worker_start, timeout)

    # -- removing ------------------------------------------------------------------------

    def remove(self, ref: str, force: bool = False) -> MachineRecord:
        """Delete the record and every leftover (worker, socket, disks, logs, network)."""
        rec = self.find(ref)
        if rec.state in LIVE:
            if not force:
                raise Conflict(f"machine {rec.name} is {rec.state.value}",
                               "stop it first, or use `mm rm -f` to kill and remove it")
            self._kill_worker(rec)
        self.cleanup(rec)
        self.machines.delete(rec.id)
        return rec

    def _kill_worker(self, rec: MachineRecord) -> None:
        from vmm.api.errors import ApiError

        try:
            self.client(rec, timeout=5).kill("KILL")
        except ApiError:
            pass  # unreachable or already ending: make sure below
        self._await_worker_exit(rec, timeout=5)
        rec = self.machines.get(rec.id)
        if liveness.is_alive(rec.worker_pid, rec.worker_start):
            os.kill(rec.worker_pid, signal.SIGKILL)  # pid + start time checked: it is our worker
            self._await_worker_exit(rec, timeout=5)

    def cleanup(self, rec: MachineRecord) -> None:
        import shutil

        if rec.config.get("network"):
            from vmm.network import detach

            detach(rec.id)
        shutil.rmtree(self.paths(rec).root, ignore_errors=True)

    def prune(self) -> list[MachineRecord]:
        """Remove every exited or dead machine, then directories no record owns."""
        import shutil

        removed = []
        now = time.time()
        for rec in self.machines.reconcile_all():
            # a `created` record younger than a minute may be a `mm run` in progress
            stale_created = rec.state is State.CREATED and now - rec.created > 60
            if rec.state in (State.EXITED, State.DEAD) or stale_created:
                removed.append(self.remove(rec.id))
        known = {r.short_id for r in self.machines.list()}
        base = self.state_dir / "machines"
        if base.is_dir():
            for entry in base.iterdir():
                if entry.name not in known:
                    shutil.rmtree(entry, ignore_errors=True)
        return removed
