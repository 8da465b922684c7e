"""Start-up time of `mm --version` and `mm ps` as a user runs them (a fresh process).

Target ≤ 60 ms each on the development host (issue 8). Run:
    .venv/bin/python -m pytest benchmarks/cli --benchmark-only -p no:cacheprovider
`mm ps` runs against a state directory holding 20 machine records, so the figure
includes opening the store and reconciling records. Each timed run also goes to
benchmarks/results/cli-startup-<UTC time>.json and .md (median, p90 per command).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

MM = [str(Path(sys.executable).with_name("mm"))]  # the console script a user types (no runpy)
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
TARGET_MS = 60.0
_FIGURES: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def results_file():
    """Write what the module's benchmarks measured (nothing when benchmarking is disabled)."""
    yield
    if not _FIGURES:
        return
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta = {"when": when, "host": platform.node(), "loadavg": os.getloadavg(), "target_ms": TARGET_MS}
    stem = RESULTS / f"cli-startup-{when.replace(':', '')}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "figures": _FIGURES}, indent=2) + "\n")
    lines = [f"# CLI start-up, a fresh process each ({when}, {meta['host']}, load {meta['loadavg'][0]:.1f})", "",
             f"Target <= {TARGET_MS:.0f} ms for `mm --version` and `mm ps` (issue 8).", "",
             "| command | n | median | p90 | min | max |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {f['n']} | {f['median_ms']:.1f} ms | {f['p90_ms']:.1f} ms | {f['min_ms']:.1f} ms "
              f"| {f['max_ms']:.1f} ms |" for name, f in _FIGURES.items()]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _record(benchmark, name: str) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: the function ran once, untimed
        return
    ms = sorted(t * 1e3 for t in stats.stats.data)
    _FIGURES[name] = {"n": len(ms), "median_ms": statistics.median(ms),
                      "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))], "min_ms": ms[0], "max_ms": ms[-1]}


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
    _record(benchmark, "mm --version")


def test_ps(benchmark, state):
    env = _env(MM_STATE=str(state))
    benchmark.pedantic(_run, args=(MM + ["ps", "-a"], env), rounds=20, warmup_rounds=2)
    _record(benchmark, "mm ps -a (20 records)")


def test_inspect(benchmark, state):
    """A lifecycle-style command on the hand-parsed fast path (vmm/cli/fastargs.py)."""
    env = _env(MM_STATE=str(state))
    benchmark.pedantic(_run, args=(MM + ["inspect", "vm3"], env), rounds=20, warmup_rounds=2)
    _record(benchmark, "mm inspect vm3")


def test_python_baseline(benchmark):
    """The interpreter alone (with this venv's site hooks): the floor under both figures."""
    benchmark.pedantic(_run, args=([sys.executable, "-c", "pass"], _env()), rounds=20, warmup_rounds=2)
    _record(benchmark, "python -c pass (floor)")
