"""Where a vsock connect's time goes in a real guest: timestamps on both sides of it.

    mm lab exec -- .venv/bin/python benchmarks/virtio/vsock_trace.py [--connects 100]

Boots the virtio-vsock suite's guest (benchmarks/virtio/suites.py, mmsock's bench server)
under our VMM, with the VMM run through this file (`--child`): before `mm boot` starts,
the vsock device's Muxer, its device thread's turn and the transport's signal_used are
wrapped to record CLOCK_MONOTONIC timestamps (written to a file when the VMM exits). The
parent makes the suite's streams and then sequential connects (connect, `CONNECT <port>`,
`OK <port>`, close), timing each on its side, and prints, per connect, the median and
p90 of each step:

    connect -> accept        client's connect() until the device thread accepted it
    accept -> REQUEST queued the CONNECT line read and the REQUEST made
    REQUEST -> irq           that REQUEST into the rx queue and the interrupt raised
    irq -> RESPONSE          the guest: interrupt, its driver, RESPONSE, the tx kick, our wake-up
    RESPONSE -> OK read      our `OK <port>` written and read by the client
the device thread's turns inside each connect, whether it was busy (not in poll) when the
client connected, and how long until its poll returned after that.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.resultfiles import percentile  # noqa: E402

now = time.monotonic_ns


def install_trace(path: str) -> None:
    """Wrap the device's steps to record (event, ns); dump them at exit."""
    import select
    import types

    from devices.virtio.mmio import MmioTransport
    from devices.virtio.vsock import OP_RESPONSE, device
    from devices.virtio.vsock.device import VsockDevice
    from devices.virtio.vsock.muxer import Muxer

    log: list[tuple[str, int]] = []
    atexit.register(lambda: Path(path).write_text(json.dumps(log)))

    def wrap(cls, name, before=None, after=None):
        orig = getattr(cls, name)

        def traced(self, *a):
            if before:
                before(self, *a)
            r = orig(self, *a)
            if after:
                after(self, r, *a)
            return r
        setattr(cls, name, traced)

    class Poll:  # the device thread's poll(), timed: when it slept and when it woke
        def __init__(self):
            self.p = select.poll()
            self.register, self.unregister = self.p.register, self.p.unregister

        def poll(self, timeout=None):
            log.append(("sleep", now()))
            r = self.p.poll(timeout)
            log.append(("wake", now()))
            return r

    device.select = types.SimpleNamespace(poll=Poll, POLLIN=select.POLLIN)
    wrap(Muxer, "_accept", before=lambda self: log.append(("accept", now())))
    wrap(Muxer, "_connect_client", after=lambda self, r, fd, port, rest: log.append(("request", now()))
         if fd in self.by_fd else None)
    wrap(Muxer, "_tx_op", before=lambda self, c, h, chain: log.append(("response", now()))
         if h.op == OP_RESPONSE else None)
    wrap(MmioTransport, "signal_used", before=lambda self, q: log.append(("irq", now())))
    wrap(VsockDevice, "_turn", before=lambda self, act, d: log.append(("turn", now())),
         after=lambda self, r, act, d: log.append(("turn_end", now())))


def child(trace: str, argv: list[str]) -> int:
    install_trace(trace)
    from vmm.cli.main import main

    sys.argv = ["mm", *argv]
    return main()


def steps(client: list[tuple[int, int]], log: list) -> dict[str, list[float]]:
    """Per connect (client's start, end in ns): each step's ms, and the turns inside."""
    out: dict[str, list[float]] = {k: [] for k in (
        "connect -> accept", "accept -> REQUEST queued", "REQUEST -> irq", "irq -> RESPONSE",
        "RESPONSE -> OK read", "total", "turns", "busy at connect (0/1)", "connect -> wake")}
    for t0, t1 in client:
        inside = [(e, t) for e, t in log if t0 <= t <= t1]
        first = {}
        for e, t in inside:
            first.setdefault(e, t)
        if not all(k in first for k in ("accept", "request", "response")):
            continue
        irq = next((t for e, t in inside if e == "irq" and t >= first["request"]), None)
        if irq is None or irq > first["response"]:
            continue
        ms = lambda a, b: (b - a) / 1e6  # noqa: E731
        out["connect -> accept"].append(ms(t0, first["accept"]))
        out["accept -> REQUEST queued"].append(ms(first["accept"], first["request"]))
        out["REQUEST -> irq"].append(ms(first["request"], irq))
        out["irq -> RESPONSE"].append(ms(irq, first["response"]))
        out["RESPONSE -> OK read"].append(ms(first["response"], t1))
        out["total"].append(ms(t0, t1))
        out["turns"].append(sum(1 for e, _ in inside if e == "turn"))
        before = [e for e, t in log if t < t0 and e in ("sleep", "wake")]
        out["busy at connect (0/1)"].append(1 if before and before[-1] == "wake" else 0)
        wake = next((t for e, t in inside if e == "wake"), None)
        if wake is not None:
            out["connect -> wake"].append(ms(t0, wake))
    return out


def parent(args) -> int:
    import types

    from benchmarks.virtio.guestvm import GuestProcess
    from benchmarks.virtio.harness import WORK
    from benchmarks.virtio.suites import OURS, READY, VsockSuite
    from vmm.kernel import kernel_path

    ns = types.SimpleNamespace(kernel=str(kernel_path("vmlinux")), cpus=1, mem_mib=1024, guest_append="quiet",
                               timeout=180.0, qemu="qemu-system-x86_64", append="", seconds=8)
    WORK.mkdir(parents=True, exist_ok=True)
    VsockSuite.CONNECTS = args.connects  # the guest's server serves 2 streams + these
    suite = VsockSuite(ns)
    suite.setup()
    argv = suite.contenders()[0][1]
    trace = WORK / f"vsock-trace-{os.getpid()}.json"
    argv = [sys.executable, __file__, "--child", str(trace), *argv[3:]]
    vm = GuestProcess(OURS, argv)
    try:
        vm.wait_for(READY, ns.timeout)
        streams = {"host_to_guest_MBps": suite._send(OURS), "guest_to_host_MBps": suite._receive(OURS)}
        client = []
        for _ in range(args.connects):
            t0 = now()
            s = suite._connect(OURS, timed=False)
            client.append((t0, now()))
            s.close()
        vm.finish(timeout=60)
    finally:
        vm.kill()
        suite.teardown()
    log = json.loads(trace.read_text())
    trace.unlink()
    print(f"streams: {streams}")
    for name, xs in steps(client, log).items():
        if xs:
            print(f"{name:26s} n={len(xs):3d} median {statistics.median(xs):8.3f}  p90 {percentile(xs, 90):8.3f}")
    return 0


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connects", type=int, default=100)
    return parent(p.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
