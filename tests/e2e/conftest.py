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
from pathlib import Path

import pytest

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


class GuestHost:
    """Where real Linux guests run: this host (hardware KVM) or the lab."""

    def __init__(self, where: str, workdir: Path, lab=None) -> None:
        self.where = where  # "host" or "lab"
        self.workdir = workdir
        self._lab = lab

    def __repr__(self) -> str:
        return f"GuestHost({self.where}, workdir={self.workdir})"

    def run(self, argv, timeout: float = 600, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
        argv = [str(a) for a in argv]
        if self._lab is None:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout,
                env={**os.environ, **(env or {})}, cwd=cwd,
            )
        from vmm.lab import LabTimeout

        try:
            rc, out, err = self._lab.exec(argv, timeout=timeout, env=env, cwd=cwd)
        except LabTimeout as exc:
            raise subprocess.TimeoutExpired(
                argv, timeout, output=exc.stdout.decode(errors="replace"), stderr=exc.stderr.decode(errors="replace")
            ) from None
        return subprocess.CompletedProcess(argv, rc, out, err)


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
