"""Where `mm run`'s time goes: one detached run of the default image with Python's import
profiler on in the CLI and the worker (PYTHONPROFILEIMPORTTIME, inherited by the worker,
whose stderr is its worker.log) and cProfile on the CLI. Under the lab's TCG every
import costs ~70x what it costs here, so this is meant to run there:

    mm lab exec -- .venv/bin/python benchmarks/cli/profile_run.py [--no-jail] [--top 15]

Prints the phases (CLI returned = VM running, first output byte, VM ended), the heaviest
top-level imports of the CLI and of the worker with their totals, and the CLI's
heaviest functions; the same text goes to benchmarks/results/run-profile-<UTC time>.md.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def imports(text: str, top: int) -> tuple[float, list[tuple[float, str]]]:
    """(total self time in s, [(cumulative s, module)] of the heaviest modules imported at top level)."""
    total, rows = 0, []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            total += int(m.group(1))
            if len(m.group(3)) == 1:  # one space: imported by the program itself, not by a module
                rows.append((int(m.group(2)) / 1e6, m.group(4)))
    return total / 1e6, sorted(rows, reverse=True)[:top]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--no-jail", action="store_true")
    p.add_argument("--top", type=int, default=15)
    # A lab booted from another checkout sees this one read-only: write to its results share.
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mm-prof-", dir="/tmp"))
    env = {**os.environ, "MM_STATE": str(work / "state"), "PYTHONPROFILEIMPORTTIME": "1"}
    mm = [sys.executable, "-m", "cProfile", "-o", str(work / "cli.prof"), "-m", "vmm"]
    run = mm + ["run", "-d", "--name", "prof", "--network", "none"] + (["--no-jail"] if args.no_jail else [])
    t0 = time.monotonic()
    cli = subprocess.run(run + ["mm/default", "echo", "first-byte"], env=env, capture_output=True, text=True)
    t_running = time.monotonic() - t0
    if cli.returncode != 0:
        print(cli.stderr[-3000:], file=sys.stderr)
        return 1
    machine = work / "state" / "machines" / cli.stdout.strip()[:12]
    while not (machine / "output.log").exists() or (machine / "output.log").stat().st_size == 0:
        time.sleep(0.05)
    t_first = time.monotonic() - t0
    plain = {k: v for k, v in env.items() if k != "PYTHONPROFILEIMPORTTIME"}
    subprocess.run([sys.executable, "-m", "vmm", "wait", "prof"], env=plain, capture_output=True)
    t_end = time.monotonic() - t0
    worker_log = (machine / "worker.log").read_text(errors="replace")
    subprocess.run([sys.executable, "-m", "vmm", "rm", "-f", "prof"], env=plain, capture_output=True)
    report = _report(args, cli.stderr, worker_log, work / "cli.prof", (t_running, t_first, t_end))
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    (out / f"run-profile-{when}.md").write_text(report)
    subprocess.run(["rm", "-rf", str(work)])
    return 0


def _report(args, cli_err: str, worker_log: str, prof: Path, phases: tuple[float, float, float]) -> str:
    lines = [f"# `mm run -d` profile ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {platform.node()}, "
             f"jail {'off' if args.no_jail else 'on'})", "",
             f"CLI returned (VM running) {phases[0]:.2f} s, first output byte {phases[1]:.2f} s, "
             f"VM ended {phases[2]:.2f} s (import profiling adds a little to each).", ""]
    for who, text in (("CLI", cli_err), ("worker (supervisor + VMM)", worker_log)):
        total, rows = imports(text, args.top)
        lines += [f"## {who}: imports {total:.2f} s in all (self times summed)", "",
                  "| cumulative | module |", "| --- | --- |"] + [f"| {s:.3f} s | {m} |" for s, m in rows] + [""]
    buf = io.StringIO()
    pstats.Stats(str(prof), stream=buf).sort_stats("cumulative").print_stats(args.top + 10)
    body = buf.getvalue()
    lines += ["## CLI functions by cumulative time (cProfile)", "", "```", body[body.find("ncalls"):].rstrip(), "```", ""]
    lines += ["## worker.log (without import lines)", "", "```"]
    lines += [line for line in worker_log.splitlines() if not line.startswith("import time:")][-15:] + ["```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
