"""Worker start and worker RSS.

Start to first KVM_RUN (target <= 30 ms): a fresh process imports the VMM,
opens /dev/kvm, makes a VM (irqchip + PIT), 128 MiB of guest memory and a configured
vCPU, then enters the guest.

    .venv/bin/pytest benchmarks/kvm --benchmark-only -p no:cacheprovider -s

pytest-benchmark times the whole child process (including its exit); the figure that
answers the target is `to_first_run_ms` in extra_info (median over the rounds, measured
with CLOCK_MONOTONIC from just before the spawn to just before KVM_RUN), printed with
the per-step breakdown. Variants: the venv's python as is, and `python -S` with
PYTHONPATH (no site: how a worker can be exec'd, since it needs only the stdlib).

RSS beyond guest memory (target <= 25 MiB): the probe's VmRSS minus RssShmem (guest
RAM is a memfd, so every guest page it holds is shmem), after a VM with 256 MiB and a
vCPU has run and 64 MiB of guest memory were written.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("worker_probe.py")
STEPS = ("imports", "open_kvm", "vm", "memory", "vcpu", "first_run", "first_exit")


def spawn(no_site: bool, memory_mib: int = 128, touch_mib: int = 0) -> dict:
    argv = [sys.executable] + (["-S"] if no_site else []) + [str(PROBE), str(memory_mib), str(touch_mib)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t_spawn = time.monotonic()
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    data = json.loads(out)
    data["t"]["spawn"] = t_spawn
    return data


def _summary(samples: list[dict]) -> dict:
    def med(f):
        return round(statistics.median(f(s["t"]) for s in samples) * 1000, 2)

    out = {"to_first_run_ms": med(lambda t: t["first_run"] - t["spawn"]),
           "interpreter_start_ms": med(lambda t: t["start"] - t["spawn"])}
    prev = "start"
    for step in STEPS:
        out[f"{step}_ms"] = med(lambda t, a=prev, b=step: t[b] - t[a])
        prev = step
    return out


@pytest.mark.parametrize("no_site", [False, True], ids=["python", "python-S"])
def test_worker_start_to_first_kvm_run(benchmark, no_site):
    samples: list[dict] = []
    benchmark.pedantic(lambda: samples.append(spawn(no_site)), rounds=15, warmup_rounds=2)
    summary = _summary(samples[2:] if len(samples) > 2 else samples)
    summary["loadavg_1min"] = os.getloadavg()[0]
    benchmark.extra_info.update(summary)
    print(f"\nworker start ({'python -S' if no_site else 'python'}): {summary}")


def test_worker_rss_beyond_guest_memory(benchmark):
    result = {}

    def once():
        result.update(spawn(no_site=True, memory_mib=256, touch_mib=64)["rss"])

    benchmark.pedantic(once, rounds=3)
    info = {"rss_total_mib": round(result["VmRSS"] / 2**20, 1),
            "guest_shmem_mib": round(result["RssShmem"] / 2**20, 1),
            "overhead_mib": round((result["VmRSS"] - result["RssShmem"]) / 2**20, 1),
            "anon_mib": round(result["RssAnon"] / 2**20, 1),
            "file_mib": round(result["RssFile"] / 2**20, 1)}
    benchmark.extra_info.update(info)
    print(f"\nworker RSS: {info}")
