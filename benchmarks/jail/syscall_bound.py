"""The jail's bound on overhead per workload, from the host side: how many syscalls a
jailed VMM makes while a real guest runs each workload, times what the seccomp filter
adds to a syscall, over the workload's time.

    mm lab exec -- .venv/bin/python benchmarks/jail/syscall_bound.py

Why: in a shared lab, TCP throughput between two runs of the same machine spreads far
more than 3% (benchmarks/results/jail-*.md), so a jail/no-jail ratio cannot resolve the
target there. The jail's per-I/O cost is its seccomp filter (the cgroup sets no CPU
limit by default, vmm/jail/config.py; namespaces, the cell and the uid drop cost nothing
per request: every fd is opened before the jail), and that cost can be bounded:

    overhead <= syscalls during the workload x filter ns per syscall / workload time

which holds even if every filtered syscall were on the workload's critical path.

One jailed machine (`mm run -d -m 512m --cpus 1`, default network) runs each workload of
benchmarks/jail/throughput.py (dd O_DIRECT 1 MiB write, 1 MiB read, 4 KiB QD1 read;
iperf3 TCP each way) under `perf stat -p` of every process in its cgroup, counting
raw_syscalls:sys_enter (every syscall, all threads) and the syscalls a VMM's I/O makes,
so nothing slows the VMM down (tracepoint counters, no ptrace). The window is the whole
`mm exec` / iperf3 run, the exec session's own vsock traffic included; the counts also
hold the 3 s perf takes to attach before it (an idle row shows what idling costs), so
the bound errs high. The filter's cost per syscall is measured here, in the same place
(benchmarks/jail/test_filter_cost.py's fork: 4 KiB pread, eventfd write and a KVM
ioctl, plain vs filtered; the largest difference is charged to every syscall, so the
bound errs high again).
Results: benchmarks/results/jail-syscalls-<UTC time>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from benchmarks.iperf import client_argv, received_mbps  # noqa: E402  (after the path)
from benchmarks.jail import throughput as tp  # noqa: E402

# What a VMM's device paths call (the rest of raw_syscalls is "other").
SYSCALLS = ("read", "write", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "readv", "writev",
            "ioctl", "epoll_wait", "epoll_pwait", "poll", "ppoll", "select", "pselect6", "futex", "recvfrom",
            "sendto", "recvmsg", "sendmsg", "fdatasync", "fsync", "sched_yield", "clock_nanosleep", "madvise")
WORKLOADS = {  # name: guest shell command (block), iperf3 direction (net), or seconds of idling
    "idle_5s": 5.0,
    "blk_seqwrite_1m": f"cd /root && dd if=/dev/zero of=bench bs=1M count={tp.WRITE_MIB} oflag=direct conv=fsync",
    "blk_seqread_1m": "cd /root && dd if=bench of=/dev/null bs=1M iflag=direct",
    "blk_read_4k_qd1": f"cd /root && dd if=bench of=/dev/null bs=4k count={tp.READ_4K_MIB * 256} iflag=direct",
    "tcp_host_to_guest": False, "tcp_guest_to_host": True,
}
TRACEFS = "/sys/kernel/tracing"


class BoundError(RuntimeError):
    """A step of the measurement failed; says which."""


def vmm_pids(machine_id: str) -> list[int]:
    """The host pids of the processes in the machine's cgroup: the jailed VMM and any
    child it forked (the supervisor stays outside)."""
    from vmm.jail.cgroups import MachineCgroup

    pids = [int(p) for p in (MachineCgroup.for_machine(machine_id).dirs["cpu"] / "cgroup.procs").read_text().split()]
    if not pids:
        raise BoundError(f"machine {machine_id[:12]}'s cgroup is empty: the VMM is gone")
    return pids


def ensure_tracefs() -> None:
    """perf's syscall tracepoints need tracefs; the lab's /sys may not have it mounted."""
    if not Path(TRACEFS, "events").is_dir():
        res = subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], capture_output=True, text=True)
        if res.returncode != 0:
            raise BoundError(f"cannot mount tracefs on {TRACEFS}: {res.stderr.strip()}")


def counted(pids: list[int], run) -> tuple[dict[str, int], float, object]:
    """({syscall: count, "total": n}, seconds, run's result) for `run()` while perf counts
    the VMM's syscalls (all threads)."""
    events = ["raw_syscalls:sys_enter", *(f"syscalls:sys_enter_{s}" for s in SYSCALLS)]
    out = Path(os.environ["MM_STATE"], "perf.csv")
    argv = ["perf", "stat", "-x,", "-o", str(out), "-p", ",".join(map(str, pids)), "-e", ",".join(events)]
    perf = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # perf opens one counter per event and thread before it counts
    if perf.poll() is not None:
        raise BoundError(f"perf stat exited {perf.returncode}: {perf.stderr.read()[-500:]}")
    t0 = time.perf_counter()
    try:
        result = run()
    finally:
        seconds = time.perf_counter() - t0
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=60)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].strip().isdigit():
            name = fields[2].split(":")[-1].removeprefix("sys_enter_")
            counts["total" if name == "sys_enter" else name] = int(fields[0])
    if "total" not in counts:
        raise BoundError(f"perf stat counted nothing: {out.read_text()[-500:]}")
    return counts, seconds, result


def workload(name: str, machine: str, ip: str, seconds: int):
    """The workload as a call: a guest command through `mm exec`, or one iperf3 run (its
    Mbit/s as the result)."""
    spec = WORKLOADS[name]
    if isinstance(spec, float):
        return lambda: time.sleep(spec)
    if isinstance(spec, str):
        return lambda: tp.mm("exec", machine, "sh", "-c", spec)
    argv = client_argv(ip, seconds, reverse=spec)

    def tcp() -> float:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
        return received_mbps(res.stdout, res.stderr)
    return tcp


def filter_cost() -> dict[str, float]:
    """Median over 5 forks of test_filter_cost's plain and filtered ns per call."""
    from benchmarks.jail.test_filter_cost import _measure

    runs = [_measure() for _ in range(5)]
    med = {}
    for key in runs[0]["plain"]:
        for kind in ("plain", "filtered"):
            med[f"{key}_{kind}"] = sorted(r[kind][key] for r in runs)[2]
    med["added_ns"] = max(med[f"{k}_filtered"] - med[f"{k}_plain"] for k in runs[0]["plain"])
    return med


def markdown(meta: dict, cost: dict, rows: dict) -> str:
    lines = ["# jail: the seccomp filter's bound on overhead per workload", "",
             f"{meta['when']} on {meta['host']}; {meta['details']}.", "",
             "Filter cost here (median of 5 forks, plain -> filtered): " + ", ".join(
                 f"{k.removesuffix('_ns')} {cost[k + '_plain']:.0f} -> {cost[k + '_filtered']:.0f} ns"
                 for k in ("pread_ns", "eventfd_ns", "kvm_ioctl_ns") if k + "_plain" in cost)
             + f" ({cost['source']}); the largest difference, {cost['added_ns']:.0f} ns, is charged to every syscall.", "",
             "| workload | window s | VMM syscalls | per s | top syscalls | filter time | bound on overhead |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | — | — | — | {r['error'][:200]} | — | — |")
            continue
        top = sorted(((k, v) for k, v in r["counts"].items() if k != "total"), key=lambda kv: -kv[1])[:4]
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['counts']['total']:,} | {r['per_s']:,.0f} | "
                     + ", ".join(f"{k} {v:,}" for k, v in top) + f" | {r['filter_ms']:.1f} ms | "
                     f"{r['bound_pct']:.3f}% |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=8, help="per iperf3 direction")
    p.add_argument("--filter-cost", help="JSON of an earlier run's filter cost here (its 'filter cost:' line), "
                   "instead of measuring it again (~3.5 min in the lab)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    shutil.which("perf") or sys.exit("perf is missing: apt-get install linux-perf")
    ensure_tracefs()
    tar = tp.iperf_tar()
    tp._scope()
    cost = json.loads(args.filter_cost) if args.filter_cost else filter_cost()
    cost["source"] = "given (an earlier run here)" if args.filter_cost else "measured in this run"
    print(f"filter cost: {json.dumps(cost)}", flush=True)
    rows: dict[str, dict] = {}
    name, facts = "jsb", {}
    try:
        _, facts = tp.start(name, [])
        machine_id = json.loads(tp.mm("inspect", name, "--json"))["id"]
        tp.mm("cp", "-", f"{name}:/tmp", stdin=tar)
        tp.mm("exec", "-d", name, *tp.guest_iperf("-s"))
        pids = vmm_pids(machine_id)
        print(f"counting the syscalls of pids {pids} (/proc comm: "
              f"{[Path(f'/proc/{p}/comm').read_text().strip() for p in pids]})", flush=True)
        for wl in WORKLOADS:
            try:
                counts, seconds, result = counted(pids, workload(wl, name, facts["ip"], args.seconds))
            except (BoundError, tp.BenchError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
                rows[wl] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            filter_s = counts["total"] * cost["added_ns"] / 1e9
            rows[wl] = {"counts": counts, "seconds": seconds, "per_s": counts["total"] / seconds,
                        "filter_ms": filter_s * 1e3, "bound_pct": filter_s / seconds * 100,
                        "result": result if isinstance(result, float) else None}
            print(f"{wl}: {json.dumps(rows[wl])}", flush=True)
    finally:
        subprocess.run([tp.MM, "rm", "-f", name], capture_output=True, timeout=300)
        subprocess.run([tp.MM, "network", "prune"], capture_output=True, timeout=300)
        shutil.rmtree(os.environ["MM_STATE"], ignore_errors=True)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta = {"suite": "jail-syscalls", "when": when, "host": platform.node(), "loadavg": os.getloadavg(),
            "limits": facts.get("limits"),
            "details": ("one jailed mm run -d -m 512m --cpus 1 (" + str(facts.get("limits")) + "); perf stat -p VMM "
                        "over each mm exec / iperf3 run; bound = syscalls x filter ns / window")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"jail-syscalls-{when.replace(':', '')}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "filter_cost": cost, "workloads": rows},
                                                    indent=2) + "\n")
    md = markdown(meta, cost, rows)
    stem.with_suffix(".md").write_text(md)
    print(md + f"wrote {stem}.json and {stem}.md")
    return 0 if all("error" not in r for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
