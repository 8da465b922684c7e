"""The machines the exec, cp, top and ssh e2e tests share: `mm run -d --network none
mm/default sleep ...` (the built-in busybox image; other `mm run` options per name) in a
private state directory on the guest host, started on first use and removed at the end of
the session. Each machine has its own state directory, network namespace prefix and
subnet (tests/e2e/mm_shell.py's MMShell), so it lives beside other engineers' machines in
the shared lab; MM_E2E_NO_JAIL=1 runs it with `--no-jail`, as MMShell's runs.

    vm = shared(guest_host)
    r = vm.mm("exec", vm.name, "true")             # CompletedProcess, text output
    r = vm.sh('$MM exec $VM sh -c "exit 3"; echo rc=$?')   # bash with MM, VM set

Every `mm` call in the lab costs a Python start-up there (seconds under load), so tests
batch several checks into one `sh` script where that reads naturally. A test that stops
the machine calls `stopped()`; the next user starts it again. So does the next test
after the lab was replaced (GuestHost.generation): the machine died with the old lab.
Tests take it through a function-scoped fixture calling `shared()`, which checks that.
"""
from __future__ import annotations

import json
import secrets
import subprocess

import pytest

from tests.e2e.mm_shell import IMAGE, MM, MMShell, run_flags

WORKLOAD = ["sleep", "2147483647"]


class SharedMachine:
    def __init__(self, guest_host, tag: str, run_args: tuple[str, ...] = ("--network", "none")) -> None:
        self.gh, self.run_args = guest_host, run_args
        self.name = f"{tag}-{secrets.token_hex(3)}"
        self.shell = MMShell(guest_host, tag)  # state on the lab's tmpfs, own prefix and subnet
        self.state, self.env = self.shell.state, self.shell.env
        self.running = False
        self.suspect = False  # a test using it failed: look at it before the next one
        self.generation = guest_host.generation

    def mm(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.gh.run([MM, *args], env=self.env, timeout=timeout)

    def sh(self, script: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.gh.run(["bash", "-c", "set -u; cd /tmp; " + script],
                           env={**self.env, "MM": MM, "VM": self.name}, timeout=timeout)

    def ensure_running(self) -> None:
        if self.suspect:
            self._replace_if_dead()
        if self.running and self.generation == self.gh.generation:
            return
        self.generation = self.gh.generation
        r = self.mm("inspect", self.name)
        if r.returncode != 0:
            r = self.mm("run", "-d", *run_flags(), "--name", self.name, *self.run_args, IMAGE, *WORKLOAD)
        elif json.loads(r.stdout)["state"] != "running":
            r = self.mm("start", self.name)
        assert r.returncode == 0, f"starting {self.name} failed:\n{r.stdout}\n{r.stderr}"
        # The first exec waits for the guest's agent (it may still be booting).
        r = self.mm("exec", self.name, "true")
        assert r.returncode == 0, f"the agent of {self.name} did not answer:\n{r.stderr}"
        self.running = True

    def stopped(self) -> None:
        self.running = False

    def _replace_if_dead(self) -> None:
        """After a failed test: a machine whose agent no longer answers is removed, so the
        next test gets a fresh one instead of failing the same way (one broken guest
        failed five tests in a row once)."""
        self.suspect = False
        if not self.running or self.generation != self.gh.generation:
            return
        if self.mm("exec", self.name, "true", timeout=120).returncode != 0:
            self.mm("rm", "-f", self.name)
            self.running = False

    def remove(self) -> None:
        self.shell.close()


_machines: dict[str, SharedMachine] = {}


def shared(guest_host, name: str = "execvm", run_args: tuple[str, ...] = ("--network", "none")) -> SharedMachine:
    """The running shared machine (one per session and name)."""
    if name not in _machines:
        _machines[name] = SharedMachine(guest_host, name, run_args)
    vm = _machines[name]
    vm.ensure_running()
    return vm


def release_all() -> None:
    """Remove every shared machine (idempotent: each test module's fixture calls it)."""
    while _machines:
        _, vm = _machines.popitem()
        vm.remove()


# Fixtures for the modules that share the machine: `from tests.e2e.exec_machine import
# release_machines, vm  # noqa: F401` and take `vm` (or call shared() for another name).
@pytest.fixture(scope="session")
def release_machines(guest_host):
    yield
    release_all()


@pytest.fixture
def vm(request, guest_host, release_machines):
    """The shared machine, (re)started if it is not running (in a fresh lab, say), and
    looked at again after a test that failed with it."""
    machine = shared(guest_host)
    yield machine
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        machine.suspect = True
