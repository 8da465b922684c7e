"""What the jail costs a real guest: block and network throughput with and without it,
and the jail's set-up time in a real `mm run`, measured in the same run.

    mm lab exec -- .venv/bin/python benchmarks/jail/throughput.py --workloads block --rounds 8
    mm lab exec -- .venv/bin/python benchmarks/jail/throughput.py --workloads net --rounds 12 --boots 4
    .venv/bin/python benchmarks/jail/throughput.py --rounds 8          # hardware KVM: both at once

Two contenders, `jail` (what every `mm run` gets) and `no-jail` (`mm run --no-jail`),
each one machine from the default busybox image, detached, `-m 512m --cpus 1` (no CPU
limit for either: vmm/jail/config.py, "CPU time") on the default network, in a private
store (MM_STATE, MM_NETNS_PREFIX, MM_NETWORK_SUBNET of its own). Both machines boot
first and stay up; every round then measures each once, the order swapped every round,
so slow drifts of a shared host's load fall on both alike. A machine whose workload
fails is recorded with its worker.log tail, replaced by a fresh one, and that round is
dropped from the paired figures (the reason goes into the results).

- block: in the guest, busybox dd with O_DIRECT on a file of the overlay disk (an ext4
  image in the store, on the guest host's /tmp), timed by the guest's /proc/uptime:
  1 MiB sequential write of 256 MiB (conv=fsync), 1 MiB sequential read of it, and 4 KiB
  reads one at a time (32 MiB: the per-request cost, where a syscall filter would show
  first);
- net: iperf3 TCP for `--seconds` each way between the guest host and the VM's address
  (bridge, veth, 1:1 NAT, TAP), the host's iperf3 and its libraries copied into the
  guest with `mm cp` (benchmarks/iperf.py runs the client);
- start (`--boots N` more pairs, booted and removed, order alternating; the first pair
  counts too): the wall time of `mm run -d` and, jailed, the "jailed in X ms (steps)"
  line the VMM writes to worker.log: the jail's set-up time.

Per metric: medians, min-max, the ratio of the medians jail/no-jail, and the per-round
paired ratios with a distribution-free ~95% interval for their median (order statistics
of the sign test). The 3% target is resolved when that interval lies inside 0.97-1.03
(met), or wholly on the jail's losing side of it (missed); otherwise the run could not
tell. Results go to benchmarks/results/jail-<UTC time>.json and .md.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from benchmarks.iperf import iperf3_path, tcp_mbps  # noqa: E402  (after the path)

MM = str(REPO / ".venv" / "bin" / "mm")
MiB = 1 << 20
CONTENDERS = {"jail": [], "no-jail": ["--no-jail"]}
METRICS = {  # name: (unit, higher is better, workload)
    "blk_seqwrite_1m_MBps": ("MB/s", True, "block"), "blk_seqread_1m_MBps": ("MB/s", True, "block"),
    "blk_read_4k_qd1_iops": ("IOPS", True, "block"), "tcp_host_to_guest_Mbps": ("Mbit/s", True, "net"),
    "tcp_guest_to_host_Mbps": ("Mbit/s", True, "net"), "run_d_s": ("s", False, "start"),
    "jail_setup_ms": ("ms", False, "start"),
}
TARGET = 0.03
# In the guest: three dd runs on the overlay disk, timed by the guest's uptime (busybox dd
# there prints no timing line).
WRITE_MIB, READ_4K_MIB = 256, 32
BLOCK = f"""
cd /root; t() {{ cut -d' ' -f1 /proc/uptime; }}
a=$(t); dd if=/dev/zero of=bench bs=1M count={WRITE_MIB} oflag=direct conv=fsync 2>/dev/null || echo write-failed
b=$(t); dd if=bench of=/dev/null bs=1M iflag=direct 2>/dev/null || echo read-failed
c=$(t); dd if=bench of=/dev/null bs=4k count={READ_4K_MIB * 256} iflag=direct 2>/dev/null || echo read4k-failed
d=$(t); rm bench; echo "MM-BLK $a $b $c $d"
"""
JAILED = re.compile(r"jailed in ([\d.]+) ms \(([^)]*)\): (.*)")
GUEST_DIR = "/tmp/iperf"


class BenchError(RuntimeError):
    """One run went wrong; says which step."""


def mm(*args: str, stdin: bytes | None = None, timeout: float = 600) -> str:
    res = subprocess.run([MM, *args], input=stdin, capture_output=True, timeout=timeout)
    if res.returncode != 0:
        raise BenchError(f"mm {' '.join(args[:3])}... exit {res.returncode}: "
                         f"{res.stderr.decode(errors='replace')[-1500:]}")
    return res.stdout.decode(errors="replace")


def iperf_tar() -> bytes:
    """The host's iperf3, its libraries and loader as one flat directory, as a tar stream."""
    binary = iperf3_path()
    libs = re.findall(r"(/\S+\.so[.\d]*) \(0x", subprocess.run(["ldd", binary], capture_output=True,
                                                                text=True, check=True).stdout)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in [binary, *libs]:
            tar.add(os.path.realpath(path), arcname=f"iperf/{os.path.basename(path)}")
    return buf.getvalue()


def guest_iperf(args: str) -> list[str]:
    return ["sh", "-c", f"exec {GUEST_DIR}/ld-linux-x86-64.so.2 --library-path {GUEST_DIR} {GUEST_DIR}/iperf3 {args}"]


def block(name: str) -> dict[str, float]:
    out = mm("exec", name, "sh", "-c", BLOCK)
    m = re.search(r"MM-BLK ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)", out)
    if not m or "failed" in out:
        raise BenchError(f"{name}: the block run said: {out[-500:]}")
    a, b, c, d = map(float, m.groups())
    return {"blk_seqwrite_1m_MBps": WRITE_MIB * MiB / (b - a) / 1e6,
            "blk_seqread_1m_MBps": WRITE_MIB * MiB / (c - b) / 1e6,
            "blk_read_4k_qd1_iops": READ_4K_MIB * 256 / (d - c)}


def network(name: str, ip: str, seconds: int) -> dict[str, float]:
    return {metric: tcp_mbps(ip, seconds, reverse, attempts=30, error=BenchError, what=name)
            for metric, reverse in (("tcp_host_to_guest_Mbps", False), ("tcp_guest_to_host_Mbps", True))}


def start(name: str, flags: list[str]) -> tuple[dict[str, float], dict]:
    """Boot one machine; its start figures and facts (ip, the jail's steps and limits)."""
    t0 = time.perf_counter()
    machine_id = mm("run", "-d", "--name", name, "-m", "512m", "--cpus", "1", *flags, "mm/default",
                    "sleep", "2147483647").strip()
    figures = {"run_d_s": time.perf_counter() - t0}
    info = json.loads(mm("inspect", name, "--json"))
    log = Path(os.environ["MM_STATE"], "machines", machine_id[:12], "worker.log").read_text(errors="replace")
    m = JAILED.search(log)
    facts = {"ip": info["ip"], "steps_ms": {}, "limits": None}
    if m:
        figures["jail_setup_ms"] = float(m.group(1))
        facts["steps_ms"] = {k: float(v) for k, v in (part.split() for part in m.group(2).split(", "))}
        facts["limits"] = m.group(3).strip()
    elif not flags:
        raise BenchError(f"{name}: no 'jailed in' line in worker.log")
    return figures, facts


class Contender:
    """One contender's running machine, replaced when a workload breaks it."""

    def __init__(self, key: str, workloads: set[str], tar: bytes | None) -> None:
        self.key, self.workloads, self.tar, self.generation = key, workloads, tar, 0
        self.name = self.ip = ""
        self.error: str | None = None  # why the last boot failed

    def boot(self) -> dict:
        self.generation += 1
        self.name = f"jt{self.key[0]}{self.generation}"
        boot = {"contender": self.key, "machine": self.name, "figures": {}, "error": None}
        try:
            figures, facts = start(self.name, CONTENDERS[self.key])
            boot.update(figures=figures, **facts)
            self.ip = facts["ip"]
            if "net" in self.workloads:
                mm("cp", "-", f"{self.name}:/tmp", stdin=self.tar)
                mm("exec", "-d", self.name, *guest_iperf("-s"))
        except (BenchError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as exc:
            boot["error"] = f"{type(exc).__name__}: {exc}"
            boot["worker_log_tail"] = _worker_log_tail(self.name)
        self.error = boot["error"]
        return boot

    def measure(self, seconds: int) -> dict[str, float]:
        figures: dict[str, float] = {}
        if "block" in self.workloads:
            figures |= block(self.name)
        if "net" in self.workloads:
            figures |= network(self.name, self.ip, seconds)
        return figures

    def remove(self) -> None:
        if self.name:
            subprocess.run([MM, "rm", "-f", self.name], capture_output=True, timeout=300)


def rounds(args, workloads: set[str], tar: bytes | None) -> tuple[list[dict], list[dict]]:
    """(runs, boots): the workload rounds on one machine per contender, then `--boots`."""
    contenders = {key: Contender(key, workloads, tar) for key in CONTENDERS}
    runs, boots = [], []
    try:
        for c in contenders.values():
            boots.append(c.boot())
        for rnd in range(args.rounds):
            for key in (list(CONTENDERS) if rnd % 2 == 0 else list(CONTENDERS)[::-1]):
                c = contenders[key]
                run = {"round": rnd, "contender": key, "machine": c.name, "figures": {}, "error": None}
                try:
                    if c.error:
                        raise BenchError(f"{c.name} did not start: {c.error}")
                    run["figures"] = c.measure(args.seconds)
                except (BenchError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as exc:
                    run["error"] = f"{type(exc).__name__}: {exc}"
                    run["worker_log_tail"] = _worker_log_tail(c.name)
                    c.remove()
                    boots.append(c.boot())  # a fresh machine for the next rounds
                runs.append(run)
                print(f"round {rnd} {key} ({run['machine']}): {json.dumps(run['figures'])} {run['error'] or ''}",
                      flush=True)
    finally:
        for c in contenders.values():
            c.remove()
    for b in range(args.boots):
        for key in (list(CONTENDERS) if b % 2 else list(CONTENDERS)[::-1]):
            c = Contender(key, set(), None)
            c.generation = 100 + b
            boots.append(c.boot())
            c.remove()
            print(f"boot {b} {key}: {json.dumps(boots[-1]['figures'])} {boots[-1]['error'] or ''}", flush=True)
    return runs, boots


def _worker_log_tail(name: str, lines: int = 12) -> list[str]:
    """The last lines of a machine's worker.log (its exit reason), without import noise."""
    res = subprocess.run([MM, "inspect", name, "--json"], capture_output=True, text=True, timeout=120)
    try:
        machine_id = json.loads(res.stdout)["id"]
        log = Path(os.environ["MM_STATE"], "machines", machine_id[:12], "worker.log").read_text(errors="replace")
    except (ValueError, KeyError, OSError) as exc:
        return [f"(no worker.log: {type(exc).__name__}: {exc})"]
    return log.splitlines()[-lines:]


def median_interval(values: list[float]) -> tuple[float, float, float] | None:
    """(low, high, confidence) for the median: the sign test's order statistics, the
    narrowest pair with at least 95% confidence (n=8: min-max, 99.2%; n=12: 3rd-10th, 96.1%)."""
    xs, n = sorted(values), len(values)
    if n < 6:  # below 6 no pair of order statistics reaches 95%
        return None
    k = 0  # the largest k with P(Binomial(n, 1/2) <= k) <= 2.5%
    while sum(math.comb(n, i) for i in range(k + 2)) / 2**n <= 0.025:
        k += 1
    confidence = 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return xs[k], xs[n - 1 - k], confidence


def verdict(interval: tuple[float, float, float] | None, higher: bool) -> str:
    if interval is None:
        return "too few rounds"
    lo, hi, _ = interval
    if 1 - TARGET <= lo and hi <= 1 + TARGET:
        return "within 3%"
    if (hi < 1 - TARGET) if higher else (lo > 1 + TARGET):
        return "jail costs more than 3%"
    if (lo > 1 + TARGET) if higher else (hi < 1 - TARGET):
        return "jail faster by more than 3%"
    return "not resolved to 3%"


def summarize(runs: list[dict], boots: list[dict]) -> dict:
    out = {}
    for metric, (unit, higher, workload) in METRICS.items():
        source = boots if workload == "start" else runs
        row: dict = {"unit": unit, "higher_is_better": higher}
        for name in CONTENDERS:
            vals = [r["figures"][metric] for r in source if r["contender"] == name and metric in r["figures"]]
            row[name] = {"n": len(vals), "median": statistics.median(vals), "min": min(vals),
                         "max": max(vals)} if vals else {"n": 0}
        if not (row["jail"]["n"] and row["no-jail"]["n"]):
            out[metric] = row
            continue
        row["ratio_of_medians"] = row["jail"]["median"] / row["no-jail"]["median"]
        if workload != "start":
            by_round: dict[int, dict[str, float]] = {}
            for r in runs:
                if metric in r["figures"]:
                    by_round.setdefault(r["round"], {})[r["contender"]] = r["figures"][metric]
            paired = [v["jail"] / v["no-jail"] for _, v in sorted(by_round.items()) if len(v) == 2]
            interval = median_interval(paired)
            row["paired"] = {"n": len(paired), "ratios": paired, "median": statistics.median(paired),
                             "min": min(paired), "max": max(paired), "interval": interval,
                             "verdict": verdict(interval, higher)}
        out[metric] = row
    steps: dict[str, list[float]] = {}
    for b in boots:
        for k, v in (b.get("steps_ms") or {}).items():
            steps.setdefault(k, []).append(v)
    out["jail_steps_ms_median"] = {k: statistics.median(v) for k, v in steps.items()}
    return out


def markdown(meta: dict, summary: dict, runs: list[dict], boots: list[dict]) -> str:
    lines = ["# jail: mm run vs mm run --no-jail", "", f"{meta['when']} on {meta['host']} — {meta['rounds']} rounds "
             f"({meta['workloads']}), {meta['boot_count']} boots, alternating; {meta['details']}; load "
             f"{meta['loadavg_start'][0]:.2f} at the start, {meta['loadavg'][0]:.2f} at the end.",
             "Ratios jail/no-jail (1.00: no difference; throughput below 1 and times above 1 are the jail's cost). "
             "Paired: each round's ratio, the median of those and its ~95% interval (sign test).", "",
             "| metric | jail median (min–max) | no-jail median (min–max) | ratio of medians | paired median | "
             "paired min–max | interval | 3% target |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for metric in METRICS:
        row = summary[metric]
        if not (row["jail"]["n"] or row["no-jail"]["n"]):
            continue
        cells = []
        for name in CONTENDERS:
            s = row[name]
            cells.append(f"{s['median']:.1f} {row['unit']} ({s['min']:.1f}–{s['max']:.1f})" if s["n"] else "—")
        cells.append(f"{row['ratio_of_medians']:.3f}" if "ratio_of_medians" in row else "—")
        p = row.get("paired")
        if p:
            iv = p["interval"]
            cells += [f"{p['median']:.3f}", f"{p['min']:.3f}–{p['max']:.3f}",
                      f"{iv[0]:.3f}–{iv[1]:.3f} ({iv[2] * 100:.1f}%)" if iv else "—", p["verdict"]]
        else:
            cells += ["—", "—", "—", "—"]
        n = f"n={row['jail']['n']}/{row['no-jail']['n']}" + (f", {p['n']} pairs" if p else "")
        lines.append(f"| {metric} ({n}) | " + " | ".join(cells) + " |")
    steps = summary["jail_steps_ms_median"]
    if steps:
        lines += ["", "Jail set-up steps (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items())]
    limits = sorted({b["limits"] for b in boots if b.get("limits")})
    if limits:
        lines.append("Jailed VMM's limits (worker.log): " + "; ".join(limits))
    failed = [r for r in runs + boots if r["error"]]
    if failed:
        lines += ["", "Failed runs (their rounds are dropped from the paired figures):"]
        for r in failed:
            where = f"round {r['round']}" if "round" in r else "boot"
            lines.append(f"- {where} {r['contender']} ({r['machine']}): {r['error'].splitlines()[0][:300]}")
            lines += [f"  - worker.log: {line}" for line in r.get("worker_log_tail", [])]
    return "\n".join(lines) + "\n"


def _scope() -> None:
    """A private store, namespace prefix and subnet (see the module doc)."""
    token = secrets.token_hex(3)
    os.environ["MM_STATE"] = tempfile.mkdtemp(prefix=f"mm-bench-jail-{token}-", dir="/tmp")
    os.environ["MM_NETNS_PREFIX"] = f"mj{token}-"
    os.environ["MM_NETWORK_SUBNET"] = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}.0/24"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default="block,net", help="comma-separated: block, net")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--boots", type=int, default=0, help="more jail/no-jail boot pairs for the start figures")
    p.add_argument("--seconds", type=int, default=8, help="per iperf3 direction")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    workloads = set(args.workloads.split(","))
    if not workloads <= {"block", "net"}:
        p.error(f"unknown workloads: {', '.join(sorted(workloads - {'block', 'net'}))}")
    tar = iperf_tar() if "net" in workloads else None
    _scope()
    load0 = os.getloadavg()
    try:
        runs, boots = rounds(args, workloads, tar)
    finally:
        subprocess.run([MM, "network", "prune"], capture_output=True, timeout=300)
        shutil.rmtree(os.environ["MM_STATE"], ignore_errors=True)
    summary = summarize(runs, boots)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta = {"suite": "jail", "when": when, "host": platform.node(), "rounds": args.rounds,
            "workloads": ",".join(sorted(workloads)), "boot_count": len(boots), "loadavg_start": load0,
            "loadavg": os.getloadavg(),
            "details": "; ".join(["mm run -d -m 512m --cpus 1 (no CPU limit), default network",
                                  *(["busybox dd O_DIRECT on the overlay disk (256 MiB at 1 MiB, 32 MiB at 4 KiB QD1)"]
                                    if "block" in workloads else []),
                                  *([f"iperf3 TCP {args.seconds} s each way guest host <-> VM address"]
                                    if "net" in workloads else []),
                                  "one machine per contender for all rounds"])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"jail-{when.replace(':', '')}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs,
                                                     "boots": boots}, indent=2) + "\n")
    md = markdown(meta, summary, runs, boots)
    stem.with_suffix(".md").write_text(md)
    print(md + f"wrote {stem}.json and {stem}.md")
    return 0 if not any(r["error"] for r in runs + boots) else 1


if __name__ == "__main__":
    raise SystemExit(main())
