"""Host tests with real workers: each runs a real tiny guest on this host's /dev/kvm.

The worker is the real detached process (`python -m vmm.worker`); its VM comes from
`tests.worker.tinyguest:create`, a 64-bit guest that prints a greeting on port 0x3f8,
echoes console input, and powers off with a chosen exit code when asked to shut down.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vmm.paths import REPO_ROOT

pytestmark = pytest.mark.kvm


@pytest.fixture
def state(tmp_path, monkeypatch):
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs read/write access to /dev/kvm for the tiny test guests")
    path = tmp_path / "s"
    monkeypatch.setenv("MM_STATE", str(path))
    # the worker imports the tiny guest's factory from this tree
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    return path


@pytest.fixture
def control(state):
    from vmm.machines.db import open_control

    c = open_control(state)
    yield c
    for rec in c.machines.list():  # never leave a worker behind
        c.remove(rec.id, force=True)


@pytest.fixture
def spawn(control):
    """Create a machine running a tiny guest and start its worker; returns the record."""

    def _spawn(name: str | None = None, start: bool = True, stop_timeout: float = 5.0, **guest):
        worker = {"factory": "tests.worker.tinyguest:create", "machine": guest, "stop_timeout": stop_timeout}
        rec = control.machines.create("tiny-guest", name=name, config={"worker": worker, "cmd": ["greet"]})
        return control.start(rec.id) if start else rec

    return _spawn


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
