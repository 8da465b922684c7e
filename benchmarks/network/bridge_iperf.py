"""iperf3 host <-> guest through mm's network plumbing: our VMM vs QEMU microvm, same TAP.

    mm lab exec -- .venv/bin/python benchmarks/network/bridge_iperf.py --rounds 3 --seconds 8

Per round and contender (the order swapped every round), the VM gets its network from
`vmm.network.attach` exactly as `mm run` gives it: a namespace holding the TAP, a veth to
the host bridge, the 1:1 NAT between the VM's unique address and the guest's fixed
172.31.255.2. The VMM runs in that namespace (`nsenter --net`): `mm boot --tap mmtap0`,
or QEMU microvm with `-netdev tap,ifname=mmtap0,script=no,downscript=no,vhost=off`.
Both boot the same kernel and the same busybox initramfs carrying the host's iperf3 with
its libraries (tests/e2e/virtio_guest.initramfs); the guest configures its fixed address
and serves iperf3. The client runs in the host namespace against the VM's unique
address, so every byte crosses bridge, veth, NAT and TAP: TCP host→guest, then guest→host
(`-R`). Each run also times `attach` and `detach` (here, inside the lab).

Everything lives in a private scope (MM_STATE, MM_NETNS_PREFIX, MM_NETWORK_SUBNET of its
own), so machines of others on the same host are not touched. Results go to
benchmarks/results/net-bridge-<UTC time>.json and .md; ratios are ours/QEMU (> 1 favours us).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from benchmarks.iperf import iperf3_path, tcp_mbps  # noqa: E402  (after the path)

OURS, PEER = "mm", "qemu-microvm"
READY = "MM-NET-READY"
SAY = 'say() { echo "$*"; echo "<2>$*" > /dev/kmsg; }\n'  # kmsg: shown under `quiet` on both VMMs
METRICS = {"tcp_host_to_guest_Mbps": "Mbit/s", "tcp_guest_to_host_Mbps": "Mbit/s",
           "attach_ms": "ms", "detach_ms": "ms"}


class BenchError(RuntimeError):
    """One run went wrong (the guest did not come up, iperf3 failed); says which."""


class Guest:
    """A VMM process whose console is collected by a thread."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name, self.console, self.cond = name, bytearray(), threading.Condition()
        # stdin stays open (a pipe): `mm boot` forwards stdin to the guest's console and,
        # seen with /dev/null, the guest ended right after reaching init.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            with self.cond:
                self.console += chunk
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, marker: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while marker.encode() not in self.console:
                left = deadline - time.monotonic()
                if left <= 0 or not self.reader.is_alive():
                    tail = self.console[-2000:].decode(errors="replace")
                    raise BenchError(f"{self.name}: no {marker} ({'exited' if left > 0 else 'timeout'}):\n{tail}")
                self.cond.wait(min(left, 0.5))

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.reader.join(5)
        self.proc.stdin.close()
        self.proc.stdout.close()


def guest_script() -> str:
    from vmm.network.attachment import GATEWAY_IP, GUEST_IP, GUEST_PREFIXLEN

    return SAY + f"""ip link set lo up
ip addr add {GUEST_IP}/{GUEST_PREFIXLEN} dev eth0 && ip link set eth0 up && ip route add default via {GATEWAY_IP}
iperf3 -s > /dev/null 2>&1 &
sleep 1
say {READY}
sleep 100000
"""


def contenders(args, initrd: Path) -> dict[str, list[str]]:
    from vmm.network.attachment import GUEST_MAC, TAP_NAME

    common_append = f"quiet {args.append}".strip()
    ours = [sys.executable, "-m", "vmm", "boot", "--kernel", args.kernel, "--initrd", str(initrd),
            "--cpus", str(args.cpus), "--memory", f"{args.memory}m", "--append", common_append,
            "--tap", f"{TAP_NAME}:{GUEST_MAC}"]
    qemu = [args.qemu, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-smp", str(args.cpus),
            "-m", f"{args.memory}M", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-no-reboot", "-kernel", args.kernel, "-initrd", str(initrd),
            "-append", f"console=ttyS0 reboot=k panic=-1 {common_append}",
            "-netdev", f"tap,id=n0,ifname={TAP_NAME},script=no,downscript=no,vhost=off",
            "-device", f"virtio-net-device,netdev=n0,mac={GUEST_MAC}"]
    return {OURS: ours, PEER: qemu}


def run_once(args, name: str, argv: list[str], vm_id: str) -> dict:
    from vmm.network import attach, detach

    t0 = time.perf_counter()
    a = attach(vm_id)
    figures = {"attach_ms": (time.perf_counter() - t0) * 1000}
    guest = Guest(name, ["nsenter", f"--net={a.netns_path}", *argv])
    try:
        guest.wait_for(READY, args.timeout)
        for metric, reverse in (("tcp_host_to_guest_Mbps", False), ("tcp_guest_to_host_Mbps", True)):
            figures[metric] = tcp_mbps(a.host_ip, args.seconds, reverse, iperf3=args.iperf3, error=BenchError)
        return {"contender": name, "figures": figures, "error": None}
    except BenchError as exc:
        return {"contender": name, "figures": figures, "error": str(exc)}
    finally:
        guest.kill()
        t0 = time.perf_counter()
        detach(vm_id)
        figures["detach_ms"] = (time.perf_counter() - t0) * 1000


def summarize(runs: list[dict]) -> dict:
    out = {}
    for metric, unit in METRICS.items():
        row: dict = {"unit": unit}
        for name in (OURS, PEER):
            vals = [r["figures"][metric] for r in runs if r["contender"] == name and metric in r["figures"]]
            row[name] = {"n": len(vals), "median": statistics.median(vals), "min": min(vals),
                         "max": max(vals)} if vals else {"n": 0}
        if unit == "Mbit/s" and row[OURS]["n"] and row[PEER]["n"]:
            row["ratio"] = row[OURS]["median"] / row[PEER]["median"]
        out[metric] = row
    return out


def markdown(meta: dict, summary: dict, runs: list[dict]) -> str:
    lines = [f"# net-bridge: {OURS} vs {PEER}", "", f"{meta['when']} on {meta['host']} — {meta['rounds']} rounds, "
             f"alternating; {meta['details']}.", "Ratio: ours/QEMU (> 1 favours us); attach/detach are the "
             "same code for both (vmm.network), shown per run.", "",
             f"| metric | {OURS} median | {OURS} min–max | {PEER} median | {PEER} min–max | ratio |",
             "| --- | --- | --- | --- | --- | --- |"]
    for metric, row in summary.items():
        cells = []
        for name in (OURS, PEER):
            s = row[name]
            cells += [f"{s['median']:.1f} {row['unit']}", f"{s['min']:.1f}–{s['max']:.1f}"] if s["n"] else ["—", "—"]
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else "—"
        lines.append(f"| {metric} (n={row[OURS]['n']}/{row[PEER]['n']}) | " + " | ".join(cells) + f" | {ratio} |")
    failed = [r for r in runs if r["error"]]
    if failed:
        lines += ["", "Failed runs:"] + [f"- round {r['round']} {r['contender']}: {r['error'].splitlines()[0]}"
                                          for r in failed]
    return "\n".join(lines) + "\n"


def _scope() -> None:
    """A private store, namespace prefix and subnet for this run (see the module doc)."""
    token = secrets.token_hex(3)
    os.environ["MM_STATE"] = tempfile.mkdtemp(prefix=f"mm-bench-net-{token}-", dir="/tmp")
    os.environ["MM_NETNS_PREFIX"] = f"mb{token}-"
    os.environ["MM_NETWORK_SUBNET"] = f"10.{random.randint(100, 250)}.0.0/24"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=8, help="per iperf3 direction")
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--memory", type=int, default=512, help="MiB")
    p.add_argument("--kernel", default=None)
    p.add_argument("--append", default="", help="extra kernel command line words (both sides)")
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for a guest to come up")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    from tests.e2e.virtio_guest import initramfs
    from vmm.kernel import kernel_path
    from vmm.network import manage

    args.iperf3 = iperf3_path()
    args.kernel = args.kernel or str(kernel_path("vmlinux"))
    _scope()
    initrd = initramfs(Path(os.environ["MM_STATE"]), guest_script(), host_binaries=[args.iperf3])
    argvs = contenders(args, initrd)
    runs: list[dict] = []
    try:
        for rnd in range(args.rounds):
            for name in ([OURS, PEER] if rnd % 2 == 0 else [PEER, OURS]):
                r = run_once(args, name, argvs[name], f"bench{name[:2]}{rnd}")
                r["round"] = rnd
                runs.append(r)
                print(f"round {rnd} {name}: {r['figures']} {r['error'] or ''}", flush=True)
    finally:
        manage.prune()
        shutil.rmtree(os.environ["MM_STATE"], ignore_errors=True)
    summary = summarize(runs)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta = {"suite": "net-bridge", "when": when, "host": platform.node(), "rounds": args.rounds,
            "details": (f"kernel {args.kernel}, {args.cpus} vCPU, {args.memory} MiB; iperf3 TCP {args.seconds} s "
                        f"each way between the host namespace and the VM's unique address (bridge, veth, 1:1 NAT, "
                        f"TAP with vnet header); QEMU with vhost=off"),
            "argv": argvs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"net-bridge-{when.replace(':', '')}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2) + "\n")
    md = markdown(meta, summary, runs)
    stem.with_suffix(".md").write_text(md)
    print(md + f"wrote {stem}.json and {stem}.md")
    return 0 if not any(r["error"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
