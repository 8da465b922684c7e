"""Fixtures for tests that boot real Linux guests.

`guest_host` (session-scoped) runs a command where real Linux guests can run:

* on a hardware-KVM host (Intel VT-x / AMD-V, `vmm.hostinfo.runs_standard_guests()`)
  the command runs directly on the host;
* otherwise (this PVM machine kind) it runs inside the lab (`mm lab`), which is booted once
  for the test session when it is not up already, and stopped at the end if this session
  booted it and no other process is using it then.

    def test_something(guest_host):
        res = guest_host.run(["/work/main/.venv/bin/mm", "run", ...], timeout=120)
        assert res.returncode == 0, res.stderr

`run(argv, timeout=..., env=None, cwd=None)` returns a `subprocess.CompletedProcess` with
text stdout/stderr and raises `subprocess.TimeoutExpired` on timeout, like
`subprocess.run`. Inside the lab the command runs chrooted in the host's filesystem at the
same paths, with MM_* and PATH from the test's environment plus `env`.
`guest_host.workdir` is a fresh directory that the command sees at the same path (on the
lab's writable results share), for files a test builds on the host and uses inside.
Everything under tests/e2e is marked `e2e`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item (`item.rep_call`...), for fixtures that act
    on a failure (tests/e2e/exec_machine.py's `vm`)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# What `mm run` says when its guest's vCPU shut down (vmm/cli/run.py).
GUEST_TRIPLE_FAULT = "ended by triple_fault"


def _warn_guest_fault(argv, err: str) -> None:
    """A guest in the lab triple-faulted under a command: say so loudly; the caller runs
    the command once more. In the lab a guest's page tables have been seen to take a lab
    address, a fault we put down to TCG's emulation of SVM (docs/lab.md, "One CPU per
    VM"); keeping each VM on one lab CPU made it rare, not impossible (twice in a day of
    heavy use, 2026-12-03). A second fault fails the test, and on a hardware-KVM host
    nothing is retried."""
    import warnings

    warnings.warn(f"a guest triple-faulted in the lab running {argv[:3]}...; retrying once.\n"
                  f"its stderr:\n{err[-2000:]}", stacklevel=3)


class GuestHost:
    """Where real Linux guests run: this host (hardware KVM) or the lab."""

    def __init__(self, where: str, workdir: Path, lab=None) -> None:
        self.where = where  # "host" or "lab"
        self.workdir = workdir
        self._lab = lab
        # Bumped when a dead or hung lab was replaced by a fresh one: what a fixture made
        # inside the old one (machines, namespaces, tmpfs files) is gone.
        self.generation = 0

    def __repr__(self) -> str:
        return f"GuestHost({self.where}, workdir={self.workdir})"

    def run(self, argv, timeout: float = 600, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
        argv = [str(a) for a in argv]
        if self._lab is None:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout,
                env={**os.environ, **(env or {})}, cwd=cwd,
            )
        from vmm.lab import LabError, LabTimeout

        for attempt in (1, 2):
            watchdog = HangWatch(self)
            try:
                with watchdog:
                    rc, out, err = self._lab.exec(argv, timeout=timeout, env=env, cwd=cwd)
                if attempt == 1 and GUEST_TRIPLE_FAULT in err:  # scripts often exit 0 regardless
                    _warn_guest_fault(argv, err)
                    continue
                return subprocess.CompletedProcess(argv, rc, out, err)
            except LabTimeout as exc:
                raise subprocess.TimeoutExpired(
                    argv, timeout, output=exc.stdout.decode(errors="replace"), stderr=exc.stderr.decode(errors="replace")
                ) from None
            except LabError as exc:
                if attempt == 2 or (not watchdog.stopped and self._answers()):
                    raise
                self._revive(argv, exc, watchdog.stopped)
        raise AssertionError("unreachable")

    def _answers(self, timeout: float = 10.0) -> bool:
        try:
            self._lab._request({"op": "ping"}, timeout=timeout)
            return True
        except Exception:
            return False

    def _revive(self, argv, exc, hung: str = "") -> None:
        """The lab itself died under a command. Its kernel runs on QEMU's emulated SVM
        (TCG), which on rare occasions crashes it (a stack-guard hit in exc_page_fault
        right after a VM exit, seen under heavy host load) — not something a hardware
        host does. Say so loudly, keep the post-mortem, boot a fresh lab and run the
        command once more; a second death fails the test."""
        import warnings

        tail = self._lab._serial_tail(40)
        how = hung or f"the lab died running {argv[:3]}...: {exc.message}"
        warnings.warn(f"{how}; rebooting it and retrying once.\n"
                      f"its serial log (kept as serial.log.1):\n{tail}", stacklevel=3)
        self._lab.down()
        self._lab.ensure_up()
        self.generation += 1


class HangWatch:
    """While a command runs in the lab, ping its agent from the side; when it has answered
    nothing for HUNG_AFTER_S, stop the lab. Besides dying, the lab can hang under load:
    QEMU spinning at full CPU, its kernel and agent silent, nothing on the console (seen
    in this machine kind's TCG). Then the command in flight would only fail at its own
    timeout (15 minutes for some), and every later test after it; stopped, the command
    fails at once and GuestHost.run revives the lab and retries it, as for a death."""

    HUNG_AFTER_S = 150.0
    PING_EVERY_S = 20.0
    PING_TIMEOUT_S = 15.0  # an agent on a busy but live lab answers well within this

    def __init__(self, host: GuestHost) -> None:
        self.host, self.stopped = host, ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "HangWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        silent_since = None
        while not self._done.wait(self.PING_EVERY_S):
            if self.host._answers(self.PING_TIMEOUT_S):
                silent_since = None
                continue
            now = time.monotonic()
            silent_since = silent_since or now
            if now - silent_since >= self.HUNG_AFTER_S and not self._done.is_set():
                self.stopped = f"the lab answered no ping for {now - silent_since:.0f} s (hung)"
                self.host._lab.down()
                return


@pytest.fixture(scope="session")
def guest_host(tmp_path_factory):
    from vmm import hostinfo

    if hostinfo.runs_standard_guests():
        yield GuestHost("host", tmp_path_factory.mktemp("guest-host"))
        return
    if hostinfo.in_lab():
        pytest.skip("already inside the lab, whose /dev/kvm is not hardware-style here")
    from vmm.lab import Lab, is_prepared, results_dir

    if not is_prepared():
        pytest.skip(f"no hardware KVM here ({hostinfo.kvm_flavour()}) and the lab is not prepared: run `mm lab prepare`")
    # Other sessions may share the lab: it is stopped at the end only if this session booted
    # it and nobody else is using it then.
    with Lab().session() as lab:
        results_dir().mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="e2e-", dir=results_dir()))
        try:
            yield GuestHost("lab", workdir, lab)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
