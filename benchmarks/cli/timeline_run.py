"""Where a warm `mm run --rm` spends its time, phase by phase (vmm/timeline.py marks).

    mm lab exec -- .venv/bin/python benchmarks/cli/timeline_run.py [--rounds 5] [--no-jail]

Runs `mm run --rm --network none mm/default echo mm-first-byte` `--rounds` times (after
one unmeasured run that warms the fork server and the caches, as a user's second run
is), with MM_TIMELINE set, and prints per phase the median time since the command was
spawned and the median step from the phase before; `first byte` is when this process
read the workload's output. The table goes to benchmarks/results/run-timeline-<UTC>.md.
"""
from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER = b"mm-first-byte"


def one_run(argv: list[str], env: dict, timeline: Path) -> dict[str, float]:
    """One run: phase -> seconds since spawn (the first occurrence of each, plus counts)."""
    timeline.unlink(missing_ok=True)
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    p = subprocess.Popen(argv, env={**env, "MM_TIMELINE": str(timeline)}, stdout=subprocess.PIPE)
    out = b""
    first = None
    while chunk := p.stdout.read1(4096):
        out += chunk
        if first is None and MARKER in out:
            first = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    code = p.wait()
    end = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    if code != 0 or first is None:
        raise SystemExit(f"mm run failed (exit {code}): {out[-500:]!r}")
    phases: dict[str, float] = {}
    counts: collections.Counter = collections.Counter()
    for line in timeline.read_text().splitlines():
        ns, _pid, phase = line.split(" ", 2)
        counts[phase] += 1
        phases.setdefault(phase, (int(ns) - t0) / 1e9)
    phases["first byte (read here)"] = (first - t0) / 1e9
    phases["exit"] = (end - t0) / 1e9
    for phase, n in counts.items():
        if n > 1:
            phases[f"{phase} (count)"] = n
    return phases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-jail", action="store_true")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mm-timeline-", dir="/tmp"))
    env = {**os.environ, "MM_STATE": str(work / "state")}
    run = [str(Path(sys.executable).with_name("mm")), "run", "--rm", "--network", "none"]
    run += (["--no-jail"] if args.no_jail else []) + ["mm/default", "echo", MARKER.decode()]
    one_run(run, env, work / "warm-up")
    rounds = [one_run(run, env, work / f"round-{i}") for i in range(args.rounds)]
    names = sorted({k for r in rounds for k in r if not k.endswith("(count)")},
                   key=lambda k: statistics.median(r.get(k, 0) for r in rounds))
    lines = [f"# `mm run --rm` timeline ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {platform.node()}, "
             f"jail {'off' if args.no_jail else 'on'}, {args.rounds} warm rounds)", "",
             "| phase | since spawn (median) | step (median) |", "| --- | --- | --- |"]
    prev = [0.0] * len(rounds)
    for name in names:
        at = [r.get(name, float("nan")) for r in rounds]
        step = statistics.median(a - b for a, b in zip(at, prev))
        lines.append(f"| {name} | {statistics.median(at):.3f} s | {step * 1000:.0f} ms |")
        prev = at
    counts = {k: statistics.median(r[k] for r in rounds) for k in {k for r in rounds for k in r if k.endswith("(count)")}}
    lines += ["", *(f"- {k}: median {v:g}" for k, v in sorted(counts.items()))]
    report = "\n".join(lines) + "\n"
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"run-timeline-{time.strftime('%Y-%m-%dT%H%M%SZ', time.gmtime())}.md").write_text(report)
    subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
