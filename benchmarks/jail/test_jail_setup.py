"""Jail set-up time (target <= 15 ms) and what it adds to a worker's start.

    .venv/bin/pytest benchmarks/jail --benchmark-only -p no:cacheprovider -s

`test_enter`: each round forks a supervisor-like process that makes a new PID
namespace and forks a VMM-like child, which enters the real jail (vmm.jail.enter:
thread check, namespaces, the cell with this interpreter's code roots and a machine
directory, pivot_root, rlimits, uid drop, seccomp load) and reports each step's
duration. `as-in-a-worker`: the filter was compiled beforehand, as a worker's
supervisor does while its VMM imports; `compiling-itself`: the VMM compiles it too. pytest-benchmark times the whole round (two forks, the jail, exits,
reaping); `enter_ms` in extra_info is the median of the jail itself, measured inside,
which is what answers the target, with the per-step medians beside it.

`test_cgroup`: the supervisor's share: creating the machine's cgroup with CPU, memory
and pids limits, and removing it.

`test_worker_start`: `MachineControl.start` of a tiny guest (spec written, worker
launched, VM running, ready reported) with the jail and with `--no-jail`; the
difference is what the jail costs a user's `mm run`.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the jail needs root (namespaces, cgroups, uid drop)")

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("jail_probe.py")


def _median_ms(samples: list[dict], key: str) -> float:
    return round(statistics.median(s[key] for s in samples) * 1000, 2)


@pytest.mark.parametrize("precompiled", [True, False], ids=["as-in-a-worker", "compiling-itself"])
def test_enter(benchmark, precompiled):
    state = Path(tempfile.mkdtemp(prefix="mm-jail-bench-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, str(PROBE), str(state), "1" if precompiled else "0"]
    samples: list[dict] = []
    try:
        (state / "cell").mkdir()
        (state / "machines" / "bench").mkdir(parents=True)
        run = (lambda: samples.append(json.loads(
            subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout)))
        benchmark.pedantic(run, rounds=20, warmup_rounds=2)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    samples = samples[2:]
    summary = {"enter_ms": _median_ms(samples, "total"),
               "enter_max_ms": round(max(s["total"] for s in samples) * 1000, 2)}
    for step in ("check", "compile", "unshare", "cell", "pivot", "drop", "seccomp"):
        if step in samples[0]:
            summary[f"{step}_ms"] = _median_ms(samples, step)
    summary["loadavg_1min"] = os.getloadavg()[0]
    benchmark.extra_info.update(summary)
    print(f"\njail set-up ({'filter precompiled' if precompiled else 'compiling the filter'}): {json.dumps(summary)}")


def test_cgroup(benchmark):
    from vmm.jail.cgroups import MachineCgroup

    def once():
        MachineCgroup.create("b" * 64, cpus=1.0, memory=384 * MiB, pids=65).remove()

    benchmark.pedantic(once, rounds=30, warmup_rounds=2)
    benchmark.extra_info["cgroup_version"] = MachineCgroup.for_machine("b" * 64).version


@pytest.fixture
def control(tmp_path, monkeypatch):
    from vmm.machines.db import open_control
    from vmm.paths import REPO_ROOT

    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("needs read/write access to /dev/kvm for the tiny test guests")
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    c = open_control(tmp_path / "s")
    yield c
    for rec in c.machines.list():
        c.remove(rec.id, force=True)


@pytest.mark.parametrize("jailed", [True, False], ids=["jail", "no-jail"])
def test_worker_start(benchmark, control, jailed):
    worker = {"factory": "tests.worker.tinyguest:create", "machine": {}, "stop_timeout": 1.0,
              "jail": {"enabled": jailed}}
    started = []

    def once():
        rec = control.machines.create("tiny-guest", config={"worker": worker})
        started.append(control.start(rec.id))

    benchmark.pedantic(once, rounds=10, warmup_rounds=1)
    for rec in started:
        control.remove(rec.id, force=True)
