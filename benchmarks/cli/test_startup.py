"""Start-up time of `mm --version` and `mm ps` as a user runs them (a fresh process).

Target ≤ 60 ms each on the development host (issue 8). Run:
    .venv/bin/python -m pytest benchmarks/cli --benchmark-only -p no:cacheprovider
`mm ps` runs against a state directory holding 20 machine records, so the figure
includes opening the store and reconciling records.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

MM = [sys.executable, "-m", "vmm"]


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    path = tmp_path_factory.mktemp("state")
    from vmm.machines import State
    from vmm.machines.db import open_machines

    m = open_machines(path)
    for i in range(20):
        rec = m.begin_start(m.create("alpine", name=f"vm{i}").id)
        m.transition(rec.id, State.EXITED, exit_code=0, exit_reason="poweroff")
    return path


def _env(**extra):
    """As a user's shell has it: bytecode caching on (a dev shell may disable it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **extra}


def _run(argv, env):
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)


def test_version(benchmark):
    benchmark.pedantic(_run, args=(MM + ["--version"], _env()), rounds=20, warmup_rounds=2)


def test_ps(benchmark, state):
    env = _env(MM_STATE=str(state))
    benchmark.pedantic(_run, args=(MM + ["ps", "-a"], env), rounds=20, warmup_rounds=2)


def test_python_baseline(benchmark):
    """The interpreter alone (with this venv's site hooks): the floor under both figures."""
    benchmark.pedantic(_run, args=([sys.executable, "-c", "pass"], _env()), rounds=20, warmup_rounds=2)
