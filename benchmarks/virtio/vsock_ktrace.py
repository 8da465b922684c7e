"""What the lab's kernel sees during a vsock connect: ours vs QEMU + vhost-vsock, per connect.

    mm lab exec -- .venv/bin/python benchmarks/virtio/vsock_ktrace.py [--connects 20] [--keep DIR]

Boots the virtio-vsock suite's guest (benchmarks/virtio/suites.py) under each VMM in turn,
QEMU confined to one lab CPU as each of our VMs is (benchmarks/peer_cpus.py), warms it
with a few connects, then records the lab kernel's kvm and sched events (tracefs) while
the client makes sequential connects, each bracketed by trace_marker lines. Prints per
VMM the median per connect of: wall time; the time the VMM's threads were on a CPU
(sched_switch accounting, QEMU's vhost worker included), the part of it in guest mode
(kvm_entry to kvm_exit) and the rest, the host side's cost as the lab runs it, split into
the vCPU threads' time outside guest mode and the other threads' (our device threads and
main loop; QEMU's main loop and vhost worker), and each thread's share; interrupts
injected (the guest's timer left out), exits to user space, guest exits and HLT exits. With `--events
raw_syscalls/sys_enter,raw_syscalls/sys_exit` it also prints our device thread's user time
between system calls (which step of a turn costs). Tracing slows both.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

TRACEFS = Path("/sys/kernel/tracing")
EVENTS = ("kvm/kvm_exit", "kvm/kvm_entry", "kvm/kvm_inj_virq", "kvm/kvm_userspace_exit", "sched/sched_switch")
LINE = re.compile(r"^\s*(?P<comm>.+?)-(?P<tid>\d+)\s+\[\d+\].*?\s(?P<t>\d+\.\d+): (?P<ev>\w+): (?P<rest>.*)$")


def _write(name: str, value: str) -> None:
    (TRACEFS / name).write_text(value)


def record(suite, name: str, argv: list[str], prefix: tuple, connects: int,
           events: tuple = EVENTS) -> tuple[str, list[float], set[int]]:
    """Boot `name`, trace `connects` connects; (trace text, client latencies, the VMM's pids)."""
    from benchmarks.virtio.guestvm import GuestProcess
    from benchmarks.virtio.suites import READY

    vm = GuestProcess(name, argv, prefix=prefix)
    try:
        vm.wait_for(READY, 180)
        suite._first_connect(name).close()
        for _ in range(20):
            suite._connect(name, timed=False).close()
        _write("trace", "")
        _write("buffer_size_kb", "16384")
        for e in events:
            _write(f"events/{e}/enable", "1")
        lat = []
        with open(TRACEFS / "trace_marker", "w") as mark:
            _write("tracing_on", "1")
            for i in range(connects):
                mark.write(f"MMK-BEGIN {i}\n")
                mark.flush()
                t0 = time.perf_counter()
                s = suite._connect(name, timed=False)
                lat.append(time.perf_counter() - t0)
                mark.write(f"MMK-END {i}\n")
                mark.flush()
                s.close()
            _write("tracing_on", "0")
        for e in events:
            _write(f"events/{e}/enable", "0")
        return (TRACEFS / "trace").read_text(), lat, _descendants(vm.proc.pid)
    finally:
        vm.kill()


def _descendants(pid: int) -> set[int]:
    """Every process under `pid` (the VMM's worker, its VMM; QEMU) and their threads."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            out.add(int(task.name))
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def per_connect(text: str, pids: set[int]) -> list[dict[str, float]]:
    """Each traced connect's counts; `vmm_cpu_ms` is the on-CPU time of the VMM's threads
    (`pids`, plus any vhost-<pid> worker), `guest_ms` the part of it in guest mode."""
    out, cur, running, entered = [], None, {}, {}
    vcpus = {int(m[1]) for m in re.finditer(r"-(\d+)\s+\[\d+\].*? kvm_entry:", text)}
    for raw in text.splitlines():
        m = LINE.match(raw)
        if not m:
            continue
        t, ev, rest, tid = float(m["t"]), m["ev"], m["rest"], int(m["tid"])
        if ev == "tracing_mark_write":
            if rest.startswith("MMK-BEGIN"):
                cur = {"t0": t, "irqs": 0, "user_exits": 0, "exits": 0, "hlt": 0, "vmm_cpu_ms": 0.0,
                       "guest_ms": 0.0, "vcpu_ms": 0.0}
            elif rest.startswith("MMK-END") and cur is not None:
                cur["wall_ms"] = (t - cur.pop("t0")) * 1e3
                cur["host_side_ms"] = cur["vmm_cpu_ms"] - cur["guest_ms"]
                cur["vcpu_host_ms"] = cur["vcpu_ms"] - cur["guest_ms"]
                cur["other_threads_ms"] = cur.pop("vmm_cpu_ms") - cur.pop("vcpu_ms")
                cur["vmm_cpu_ms"] = cur["vcpu_host_ms"] + cur["guest_ms"] + cur["other_threads_ms"]
                out.append(cur)
                cur = None
        elif ev == "sched_switch":
            prev = re.search(r"prev_comm=(.*?) prev_pid=(\d+)", rest)
            nxt = re.search(r"next_comm=(.*?) next_pid=(\d+)", rest)
            if prev and int(prev[2]) in running:
                start = running.pop(int(prev[2]))
                if cur is not None:
                    ran = (t - max(start, cur["t0"])) * 1e3
                    cur["vmm_cpu_ms"] += ran
                    if int(prev[2]) in vcpus:
                        cur["vcpu_ms"] += ran
            if nxt and (int(nxt[2]) in pids or nxt[1].startswith("vhost-")):
                running[int(nxt[2])] = t
        elif ev == "kvm_entry":
            entered[tid] = t
        elif ev == "kvm_exit":
            start = entered.pop(tid, None)
            if cur is not None:
                cur["exits"] += 1
                cur["hlt"] += "reason hlt" in rest
                if start is not None:
                    cur["guest_ms"] += (t - max(start, cur["t0"])) * 1e3
        elif cur is None:
            continue
        elif ev == "kvm_inj_virq" and "reinjected" not in rest and "0xec" not in rest:
            cur["irqs"] += 1  # the device's interrupts (0xec is the guest's local timer)
        elif ev == "kvm_userspace_exit":
            cur["user_exits"] += 1
    return out


def _connects(text: str):
    """(line match, inside a traced connect?, its index, its start time) per trace line."""
    index, inside, start = -1, False, 0.0
    for raw in text.splitlines():
        m = LINE.match(raw)
        if not m:
            continue
        if m["ev"] == "tracing_mark_write":
            inside = m["rest"].startswith("MMK-BEGIN")
            index += inside
            start = float(m["t"]) if inside else start
            continue
        yield m, inside, index, start


def per_thread(text: str) -> dict[str, tuple[float, float]]:
    """Every thread that ran inside the traced connects: "comm-tid" -> (median times it
    was switched in, median on-CPU ms), per connect."""
    runs: dict = collections.defaultdict(lambda: collections.defaultdict(float))
    count: dict = collections.defaultdict(lambda: collections.defaultdict(int))
    running: dict[str, float] = {}
    connects = set()
    for m, inside, i, start in _connects(text):
        if m["ev"] != "sched_switch":
            continue
        t = float(m["t"])
        prev = re.search(r"prev_comm=(.*?) prev_pid=(\d+)", m["rest"])
        nxt = re.search(r"next_comm=(.*?) next_pid=(\d+)", m["rest"])
        name = f"{prev[1]}-{prev[2]}"
        if name in running and inside:
            runs[name][i] += (t - max(running[name], start)) * 1e3
            count[name][i] += 1
            connects.add(i)
        running.pop(name, None)
        running[f"{nxt[1]}-{nxt[2]}"] = t
    n = len(connects)
    med = lambda d: statistics.median([d.get(i, 0) for i in connects]) if n else 0.0  # noqa: E731
    return {name: (med(count[name]), med(runs[name])) for name in runs}


SYSCALLS = {0: "read", 1: "write", 3: "close", 7: "poll", 16: "ioctl", 19: "readv", 20: "writev", 41: "socket",
            42: "connect", 44: "sendto", 45: "recvfrom", 46: "sendmsg", 288: "accept4"}


def syscall_gaps(text: str) -> dict[str, tuple[int, float]]:
    """With raw_syscalls events: the user-space time of the thread that accepts host
    clients (our device thread) between one system call's return and the next call,
    by (previous, next) call: "prev -> next" -> (count, median ms)."""
    tid = next((m["tid"] for m, _, _, _ in _connects(text)
                if m["ev"] == "sys_enter" and m["rest"].startswith("NR 288 ")), None)
    gaps: dict[str, list[float]] = collections.defaultdict(list)
    last = None
    for m, inside, _, _ in _connects(text):
        if m["tid"] != tid or m["ev"] not in ("sys_enter", "sys_exit"):
            continue
        name = SYSCALLS.get(int(m["rest"].split()[1]), m["rest"].split()[1])
        if m["ev"] == "sys_exit":
            last = (float(m["t"]), name)
        elif last is not None and inside:
            gaps[f"{last[1]} -> {name}"].append((float(m["t"]) - last[0]) * 1e3)
    return {k: (len(v), statistics.median(v)) for k, v in gaps.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connects", type=int, default=20)
    p.add_argument("--keep", help="also write each raw trace to DIR/vsock-ktrace-<vmm>.txt")
    p.add_argument("--events", default="", help="more tracefs events to record, comma-separated (for --keep), "
                   "e.g. raw_syscalls/sys_enter,raw_syscalls/sys_exit")
    p.add_argument("--only", help="trace only this VMM (mm or qemu-microvm)")
    args = p.parse_args()
    from benchmarks import peer_cpus
    from benchmarks.virtio.harness import WORK
    from benchmarks.virtio.suites import PEER, VsockSuite
    from vmm.kernel import kernel_path

    if not (TRACEFS / "trace").exists():
        os.system(f"mount -t tracefs nodev {TRACEFS}")
    ns = types.SimpleNamespace(kernel=str(kernel_path("vmlinux")), cpus=1, mem_mib=1024, guest_append="quiet",
                               timeout=180.0, qemu="qemu-system-x86_64", append="", seconds=8)
    WORK.mkdir(parents=True, exist_ok=True)
    VsockSuite.CONNECTS = 40 + args.connects  # the guest's server serves this many streams
    suite = VsockSuite(ns)
    suite.setup()
    try:
        extra = tuple(e for e in args.events.split(",") if e)
        for name, argv, prefix in suite.contenders():
            if args.only and name != args.only:
                continue
            confine = peer_cpus.peer_prefix("same") if name == PEER else ()
            text, lat, pids = record(suite, name, argv, (*confine, *prefix), args.connects, EVENTS + extra)
            if args.keep:
                Path(args.keep, f"vsock-ktrace-{name}.txt").write_text(text)
            rows = per_connect(text, pids)
            print(f"{name}: client connect median {statistics.median(lat) * 1e3:.2f} ms (n={len(lat)})")
            for key in ("wall_ms", "vmm_cpu_ms", "guest_ms", "host_side_ms", "vcpu_host_ms", "other_threads_ms",
                        "irqs", "user_exits", "exits", "hlt"):
                vals = [r[key] for r in rows]
                if vals:
                    print(f"  {key:11s} median {statistics.median(vals):7.2f}   min {min(vals):7.2f}   max {max(vals):7.2f}")
            print("  threads per connect (median times switched in, on-CPU ms):")
            for thread, (runs, ms) in sorted(per_thread(text).items(), key=lambda kv: -kv[1][1]):
                if ms > 0.01:
                    print(f"    {thread:24s} {runs:4.1f}  {ms:6.2f}")
            gaps = syscall_gaps(text)
            if gaps:
                print("  device thread, user time between system calls (n, median ms):")
                for k, (n, ms) in sorted(gaps.items(), key=lambda kv: -kv[1][0] * kv[1][1]):
                    print(f"    {k:22s} {n:4d}  {ms:6.3f}")
    finally:
        suite.teardown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
