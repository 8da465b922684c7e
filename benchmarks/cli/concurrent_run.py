"""N machines started at once with `mm run -d`, as N users would type it (issue 8's "20
concurrent VMs": wall time and per-worker RSS). Real Linux guests, so on a PVM host it
runs inside the lab:

    mm lab exec -- .venv/bin/python benchmarks/cli/concurrent_run.py [-n 20] [--no-jail]

Figures: wall time until every `mm run -d` has returned (each returns once its VM
runs), until every workload has written its first byte (output.log non-empty), and
each worker's resident memory once all run: the supervisor, the VMM it forks, and the
two together (guest RAM the guest touched is part of the VMM's RSS). Then every machine
is removed with one `mm rm -f`, timed too. Results go to
benchmarks/results/run-concurrent-<UTC time>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MM = str(Path(sys.executable).with_name("mm"))


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def start_all(n: int, env: dict, extra: list[str]) -> tuple[float, list[subprocess.CompletedProcess]]:
    t0 = time.monotonic()
    procs = [subprocess.Popen([MM, "run", "-d", "--name", f"cc{i}", "--network", "none", "-m", "64m", *extra,
                               "mm/default", "sh", "-c", "echo up; exec sleep 2147483647"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    results = []
    for i, p in enumerate(procs):
        out, err = p.communicate()
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        # Progress as it comes: if the lab gives out under the load, the log still says how far it got.
        print(f"cc{i}: mm run -d returned at {time.monotonic() - t0:.1f} s, rc {p.returncode}"
              + (f": {err.strip()[-200:]}" if p.returncode else ""), flush=True)
    return time.monotonic() - t0, results


def wait_first_bytes(state: Path, ids: list[str], t0: float, timeout: float = 600) -> tuple[float | None, list[str]]:
    """Seconds until every machine's workload wrote its first byte (None: some never did in
    `timeout`), and the worker.log "VM ended" lines of machines that ended first: those are
    not waited for, so the time is then that of the others."""
    dirs = [state / "machines" / i[:12] for i in ids]
    while True:
        ended = [_ended(d) for d in dirs]
        if all(e or ((d / "output.log").exists() and (d / "output.log").stat().st_size > 0)
               for d, e in zip(dirs, ended)):
            return time.monotonic() - t0, [e for e in ended if e]
        if time.monotonic() - t0 > timeout:
            return None, [e for e in ended if e]
        time.sleep(0.2)


def _ended(machine: Path) -> str:
    try:
        log = (machine / "worker.log").read_text(errors="replace")
    except OSError:
        return ""
    return next((f"{machine.name}: {line.strip()}" for line in log.splitlines() if "VM ended" in line), "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--no-jail", action="store_true")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="mm-bench-cc-", dir="/tmp"))  # the lab's tmpfs: sockets work
    env = {**os.environ, "MM_STATE": str(state)}
    extra = ["--no-jail"] if args.no_jail else []
    t0 = time.monotonic()
    wall, results = start_all(args.n, env, extra)
    failed = [r for r in results if r.returncode != 0]
    ids = [r.stdout.strip() for r in results if r.returncode == 0]
    first, ended = wait_first_bytes(state, ids, t0)
    print(f"every workload's first byte at {first} s; ended early: {ended}", flush=True)
    records = json.loads(subprocess.run([MM, "ps", "--format", "json"], env=env, capture_output=True,
                                        text=True).stdout or "[]")
    sup = [rss_kib(r["pid"]) for r in records if r.get("pid")]
    vmm = [sum(rss_kib(c) for c in children(r["pid"])) for r in records if r.get("pid")]
    t1 = time.monotonic()
    rm = subprocess.run([MM, "rm", "-f", *[f"cc{i}" for i in range(args.n)]], env=env, capture_output=True, text=True)
    rm_wall = time.monotonic() - t1
    both = [a + b for a, b in zip(sup, vmm)]
    figures = {
        "n": args.n, "started": len(ids), "failed": [r.stderr.strip()[-300:] for r in failed], "ended_early": ended,
        "running": len(records), "wall_all_started_s": wall, "wall_all_first_byte_s": first, "rm_all_s": rm_wall,
        "rm_rc": rm.returncode,
        **{f"{k}_kib": {"median": statistics.median(v), "max": max(v), "min": min(v)} if v else None
           for k, v in (("supervisor_rss", sup), ("vmm_rss", vmm), ("worker_rss", both))},
    }
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta = {"when": when, "host": platform.node(), "jail": not args.no_jail, "memory": "64m", "network": "none"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"run-concurrent-{when.replace(':', '')}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "figures": figures}, indent=2) + "\n")
    md = _markdown(meta, figures)
    stem.with_suffix(".md").write_text(md)
    print(md)
    subprocess.run(["rm", "-rf", str(state)])
    return 0 if not failed and not ended and rm.returncode == 0 else 1


def _markdown(meta: dict, f: dict) -> str:
    def mib(d):
        return "—" if not d else f"{d['median'] / 1024:.1f} MiB (max {d['max'] / 1024:.1f})"

    first = f"{f['wall_all_first_byte_s']:.1f} s" if f["wall_all_first_byte_s"] else "—"
    return "\n".join([
        f"# {f['n']} concurrent `mm run -d` ({meta['when']}, {meta['host']}, jail {'on' if meta['jail'] else 'off'})", "",
        "| figure | value |", "| --- | --- |",
        f"| started / running | {f['started']} / {f['running']} |",
        f"| wall time until every `mm run -d` returned | {f['wall_all_started_s']:.1f} s |",
        f"| wall time until every workload's first byte | {first} |",
        f"| per-worker RSS, supervisor + VMM (median) | {mib(f['worker_rss_kib'])} |",
        f"| supervisor RSS (median) | {mib(f['supervisor_rss_kib'])} |",
        f"| VMM RSS incl. touched guest RAM (median) | {mib(f['vmm_rss_kib'])} |",
        f"| `mm rm -f` of all | {f['rm_all_s']:.1f} s (rc {f['rm_rc']}) |", ""]
        + [f"failed: {e}" for e in f["failed"]] + [f"ended before its first byte: {e}" for e in f["ended_early"]]) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
