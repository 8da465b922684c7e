"""Result files for the guest benchmarks run on this host (no VM): the exec agent on a
Unix socket and mm-init as PID 1 in fresh namespaces.

Each module records its figures through the `record` fixture; at the end of the session
they go to benchmarks/results/agent-<UTC time>.md and .json with the command, the
commit, the host's load before and after, and per figure n, median, p90, min-max.
p90 is the 90th-percentile round by time (the slow end), also for throughputs.
"""
from __future__ import annotations

import os
import statistics
import sys

import pytest

from benchmarks.resultfiles import commit, host_facts, utc_now, write

_FIGURES: dict[str, dict] = {}


def _summary(values: list[float], slow_end_is_high: bool) -> dict:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] if slow_end_is_high \
        else ordered[max(0, len(ordered) - 1 - int(0.9 * len(ordered)))]
    return {"n": len(values), "median": statistics.median(values), "p90": p90,
            "min": ordered[0], "max": ordered[-1], "mean": statistics.fmean(values)}


@pytest.fixture
def record():
    """`record(benchmark, name, bytes_per_round=None)`: times in ms, or MB/s when bytes are given."""
    def _record(benchmark, name: str, bytes_per_round: int | None = None) -> None:
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable: ran once, untimed
            return
        times = list(stats.stats.data)
        if bytes_per_round is None:
            _FIGURES[name] = {"unit": "ms", **_summary([t * 1e3 for t in times], True)}
        else:
            _FIGURES[name] = {"unit": "MB/s", "bytes_per_round": bytes_per_round,
                              **_summary([bytes_per_round / t / 1e6 for t in times], False)}
    return _record


def _markdown(meta: dict) -> str:
    lines = [f"# Exec agent and mm-init on this host, no VM ({meta['when']})", "",
             f"Host {meta['host']} ({meta['cpus']} cores, kernel {meta['kernel']}), shared; load "
             f"{meta['load_before'][0]:.2f} before, {meta['load_after'][0]:.2f} after (1-min average).",
             f"Commit {meta['commit']}. Command: `{meta['command']}`.",
             "The agent is mm-init's own (`mm-init agent --unix`, the C code that serves vsock in a guest), "
             "driven by vmm.guest.agent_client over a Unix socket; init runs as PID 1 in fresh "
             "mount+pid+net+uts+ipc namespaces. No vsock, VMM or guest kernel is in these figures.", "",
             "| figure | n | median | p90 (slow end) | min-max |", "| --- | --- | --- | --- | --- |"]
    for name, f in _FIGURES.items():
        u, fmt = f["unit"], (lambda v: f"{v:.2f}") if f["unit"] == "ms" else (lambda v: f"{v:.0f}")
        lines.append(f"| {name} | {f['n']} | {fmt(f['median'])} {u} | {fmt(f['p90'])} {u} | "
                     f"{fmt(f['min'])}-{fmt(f['max'])} {u} |")
    init, base = _FIGURES.get("init: boot, `true`, shutdown"), _FIGURES.get("baseline: same namespaces, `true` alone")
    if init and base:
        lines += ["", f"Init's own overhead (difference of the medians): {init['median'] - base['median']:.1f} ms "
                  "(kernel filesystems, overlay root, switch root, /etc files, loopback and NIC set-up, "
                  "agent fork, then kill-all, unmount and reboot)."]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session", autouse=True)
def results_file():
    load_before = os.getloadavg()
    yield
    if not _FIGURES:
        return
    meta = {"when": utc_now(), **host_facts(),
            "commit": commit(("guest", "vmm/guest", "benchmarks/guest"), "guest code modified") or "",
            "command": "python -m pytest " + " ".join(sys.argv[1:]),
            "load_before": list(load_before), "load_after": list(os.getloadavg())}
    write("agent", meta["when"], {"meta": meta, "figures": _FIGURES}, _markdown(meta))
