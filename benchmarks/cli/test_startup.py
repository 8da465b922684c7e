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


def _run(argv, env):
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)


def test_version(benchmark):
    benchmark.pedantic(_run, args=(MM + ["--version"], os.environ.copy()), rounds=20, warmup_rounds=2)


def test_ps(benchmark, state):
    env = dict(os.environ, MM_STATE=str(state))
    benchmark.pedantic(_run, args=(MM + ["ps", "-a"], env), rounds=20, warmup_rounds=2)
