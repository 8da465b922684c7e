"""Exec figures where real guests run (the lab on a PVM host), ours vs QEMU microvm with
vhost-vsock in the same run: the same kernel, the same initrd (mm-init and its agent, a
busybox root kept in the initramfs), 1 vCPU, 256 MiB.

    mm lab exec -- .venv/bin/python benchmarks/guest/exec_lab.py --rounds 20

Figures, each over --rounds (median and p90), rounds of ours and QEMU's interleaved:
- `mm exec VM true`: what a user sees, process start to exit (ours only: the CLI);
- agent round trip of `true`, from opening the stream to the exit code: ours through the
  VM's vsock Unix socket (our virtio-vsock device and its muxer), QEMU's over AF_VSOCK to
  vhost-vsock (in the host kernel); the floor `mm exec` adds its start-up to;
- stdout throughput: --mib MiB of `head -c N /dev/zero` into the client (MB/s), both, and
  through `mm exec ... > /dev/null` for ours;
- init time, once per VM (issue 5): from the kernel handing over to init (its log record
  "Run /init as init process") to the workload starting (the workload's first act is a
  line into /dev/kmsg), both stamped by the kernel's log clock (µs, read back from
  /dev/kmsg); and the kernel's own boot to that hand-over, in guest time.
Results go to benchmarks/results/exec-<UTC time>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
MM = str(REPO / ".venv" / "bin" / "mm")
sys.path.insert(0, str(REPO))

AGENT_PORT = 1024
MEMORY_MIB = 256
WORKLOAD_MARK = "mm-workload-start"
HANDOVER = "Run /init as init process"


def build_initrd(dest: Path) -> Path:
    from vmm.guest import initramfs
    from vmm.guest.bootconfig import BootConfig
    from vmm.guest.cpio import CpioWriter

    w = CpioWriter()
    w.add_file("bin/busybox", Path("/bin/busybox").read_bytes(), 0o755)
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in sorted(set(applets) - {"busybox"}):
        w.add_symlink(f"bin/{applet}", "busybox")
    w.add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
    # The workload's first act stamps the kernel log (see init_time); then it idles.
    config = BootConfig(argv=["/bin/sh", "-c", f"echo {WORKLOAD_MARK} > /dev/kmsg; exec /bin/sleep 2147483647"],
                        root=None, overlay=None, hostname="bench")
    dest.write_bytes(initramfs.base_initramfs().read_bytes() + initramfs.config_archive(config) + w.finish())
    return dest


class Ours:
    name = "mm"

    def __init__(self, kernel: str, initrd: Path, state: Path) -> None:
        from vmm.machines.db import open_control

        os.environ["MM_STATE"] = str(state)
        self.control = open_control(state)
        rec = self.control.machines.create("bench initramfs", name="bench")
        root = self.control.paths(rec).create().root
        self.control.machines.update(rec.id, config={"worker": {
            "factory": "vmm.machine:worker_factory", "agent_port": AGENT_PORT, "stop_timeout": 5,
            "machine": {"kernel": kernel, "initrd": str(initrd), "memory": MEMORY_MIB << 20,
                        "vsock": f"3:{root}/vsock.sock"}}})
        self.rec = self.control.start(rec.id)
        from vmm.guest.agent_client import AgentClient
        from vmm.machines.exec import VsockConnector

        self.agent = AgentClient(VsockConnector(self.control, self.rec, wait=600))

    def stop(self) -> None:
        self.control.remove(self.rec.id, force=True)


class Qemu:
    name = "qemu"

    def __init__(self, kernel: str, initrd: Path, log: Path) -> None:
        from vmm.guest.agent_client import AgentClient

        self.cid = random.randint(1000, 1 << 20)  # vhost-vsock CIDs are host-wide
        argv = ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-smp", "1",
                "-m", f"{MEMORY_MIB}M", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-serial", f"file:{log}", "-kernel", kernel, "-initrd", str(initrd),
                "-append", "console=ttyS0 reboot=t panic=-1 quiet",
                "-device", f"vhost-vsock-device,guest-cid={self.cid}"]
        self.log = log
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        self.agent = AgentClient(self._connect)

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        s.connect((self.cid, AGENT_PORT))
        return s

    def wait_agent(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._connect().close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("QEMU's guest agent never answered")
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput(agent, size: int) -> float:
    got = [0]

    def sink(data: bytes) -> None:
        got[0] += len(data)

    t = timed(lambda: agent.exec(["head", "-c", str(size), "/dev/zero"], on_stdout=sink))
    assert got[0] == size, got[0]
    return size / t / 1e6


def init_time(agent) -> dict[str, float]:
    """Guest-clock seconds of the kernel's boot to the hand-over to init, and milliseconds
    from the hand-over to the workload's start, from the kernel log's records (/dev/kmsg:
    `prio,seq,usec,flags;text`; the guest kernel has no printk times, the records do).
    `cat` of /dev/kmsg waits for more at the end: `timeout` ends it."""
    log = agent.exec(["timeout", "1", "cat", "/dev/kmsg"]).stdout.decode(errors="replace")
    stamps: dict[str, int] = {}
    for line in log.splitlines():
        head, _, text = line.partition(";")
        fields = head.split(",")
        for key in (HANDOVER, WORKLOAD_MARK):
            if text.startswith(key) and key not in stamps and len(fields) >= 3:
                stamps[key] = int(fields[2])
    if len(stamps) != 2:
        raise RuntimeError(f"the guest's kernel log lacks {sorted({HANDOVER, WORKLOAD_MARK} - set(stamps))}")
    return {"kernel_to_init_s": stamps[HANDOVER] / 1e6,
            "init_to_workload_ms": (stamps[WORKLOAD_MARK] - stamps[HANDOVER]) / 1e3}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "min": ordered[0], "max": ordered[-1], "n": len(ordered)}


def measure(ours: Ours, qemu: Qemu, rounds: int, size: int, failures: list[str]) -> dict[str, dict[str, float]]:
    """Every figure once a round; a sample that fails is counted in `failures` (round,
    figure, why) and the rounds go on, so one broken stream does not lose the run."""
    samples: dict[str, list[float]] = {k: [] for k in (
        "mm exec true (s)", "agent true, mm (s)", "agent true, qemu (s)",
        "stdout MB/s, mm", "stdout MB/s, qemu", "mm exec stdout MB/s")}
    cli_env = {**os.environ, "MM_STATE": os.environ["MM_STATE"]}

    def take(i: int, key: str, fn) -> None:
        if key.endswith(("qemu", "qemu (s)")) and qemu.proc.poll() is not None:
            return  # said once below; its samples end there
        try:
            samples[key].append(fn())
        except Exception as exc:  # a benchmark records what broke and measures on
            failures.append(f"round {i} {key}: {type(exc).__name__}: {str(exc).strip()[-300:]}")
            print(failures[-1], flush=True)
            if key.endswith(("qemu", "qemu (s)")):
                _qemu_gone(qemu, failures)

    def mm_exec_stdout() -> float:
        with open(os.devnull, "wb") as null:
            return size / timed(lambda: subprocess.run([MM, "exec", "bench", "head", "-c", str(size), "/dev/zero"],
                                                       env=cli_env, stdout=null, check=True)) / 1e6

    for i in range(rounds):
        pair = [(ours, "mm"), (qemu, "qemu")]
        if i % 2:
            pair.reverse()  # neither always goes first
        for vm, key in pair:
            take(i, f"agent true, {key} (s)", lambda: timed(lambda: vm.agent.exec(["true"])))
            take(i, f"stdout MB/s, {key}", lambda: throughput(vm.agent, size))
        take(i, "mm exec true (s)", lambda: timed(lambda: subprocess.run([MM, "exec", "bench", "true"], env=cli_env,
                                                                         check=True)))
        take(i, "mm exec stdout MB/s", mm_exec_stdout)
        print(f"round {i}: " + ", ".join(f"{k} {v[-1]:.4g}" for k, v in samples.items() if v), flush=True)
    return {k: summary(v) for k, v in samples.items() if v}


def _qemu_gone(qemu: Qemu, failures: list[str]) -> None:
    """If QEMU itself ended, say how and keep the end of its guest's console."""
    try:
        qemu.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return
    try:
        tail = qemu.log.read_text(errors="replace").strip().splitlines()[-8:]
    except OSError as exc:
        tail = [f"(no console log: {exc})"]
    failures.append(f"QEMU exited with status {qemu.proc.returncode}; its console ended: " + " | ".join(tail))
    print(failures[-1], flush=True)


def write_results(figures: dict, args, inits: dict[str, dict[str, float]], failures: list[str]) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    base = out / f"exec-{stamp}"
    meta = {"rounds": args.rounds, "mib": args.mib, "memory_mib": MEMORY_MIB, "vcpus": 1,
            "load": os.getloadavg(), "host": os.uname().nodename}
    base.with_suffix(".json").write_text(json.dumps({"meta": meta, "figures": figures, "init": inits,
                                                      "failures": failures}, indent=1))
    lines = [f"# exec, ours vs QEMU microvm + vhost-vsock ({stamp})", "",
             f"{args.rounds} rounds, {args.mib} MiB per throughput sample, load {meta['load'][0]:.1f}", "",
             "| figure | n | median | p90 | min | max |", "| --- | --- | --- | --- | --- | --- |"]
    for name, s in figures.items():
        lines.append(f"| {name} | {s['n']} | {s['median']:.4g} | {s['p90']:.4g} | {s['min']:.4g} | {s['max']:.4g} |")
    a, q = figures["agent true, mm (s)"]["median"], figures["agent true, qemu (s)"]["median"]
    ta, tq = figures["stdout MB/s, mm"]["median"], figures["stdout MB/s, qemu"]["median"]
    lines += ["", f"round trip ours/QEMU: {a / q:.2f}; throughput ours/QEMU: {ta / tq:.2f}", "",
              "Init time (one boot each, guest clock): kernel boot to the hand-over to init, then "
              "hand-over to the workload's start", ""]
    lines += [f"- {name}: kernel {i['kernel_to_init_s']:.3f} s, init {i['init_to_workload_ms']:.1f} ms"
              for name, i in inits.items()]
    if failures:
        lines += ["", f"Failed samples ({len(failures)}):"] + [f"- {f}" for f in failures]
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--mib", type=int, default=64, help="MiB of stdout per throughput sample")
    p.add_argument("--kernel", help="guest kernel (default: `mm kernel path`)")
    # A lab booted from another checkout sees this one read-only: write to its results share.
    p.add_argument("--out", default=str(RESULTS), help="directory for the result files")
    args = p.parse_args(argv)
    if not shutil.which("qemu-system-x86_64"):
        print("qemu-system-x86_64 is needed for the peer", file=sys.stderr)
        return 2
    if not os.path.exists("/dev/vhost-vsock"):
        # the lab loads the modules it needs at boot; this one only the peer needs
        subprocess.run(["modprobe", "vhost_vsock"], check=False)
        if not os.path.exists("/dev/vhost-vsock"):
            print("/dev/vhost-vsock is missing (modprobe vhost_vsock failed): no peer", file=sys.stderr)
            return 2
    from vmm.kernel import kernel_path

    kernel = args.kernel or str(kernel_path("vmlinux"))
    work = Path(tempfile.mkdtemp(prefix="exec-bench-", dir="/tmp"))
    initrd = build_initrd(work / "initrd")
    ours = qemu = None
    try:
        ours = Ours(kernel, initrd, work / "state")
        qemu = Qemu(kernel, initrd, work / "qemu.log")
        ours.agent.exec(["true"])  # both booted and answering before the clock runs
        qemu.wait_agent()
        qemu.agent.exec(["true"])
        inits = {vm.name: init_time(vm.agent) for vm in (ours, qemu)}
        print(f"init time: {inits}", flush=True)
        failures: list[str] = []
        write_results(measure(ours, qemu, args.rounds, args.mib << 20, failures), args, inits, failures)
    finally:
        for vm in (ours, qemu):
            if vm is not None:
                vm.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
