"""What the virtio-vsock device costs per packet and per connect, on this host, no lab.

    .venv/bin/python benchmarks/virtio/vsock_profile.py [--mib 32] [--connects 200] [--strace]

The device runs as in the VMM (its own thread, real queues over a memfd "guest RAM");
the guest is a forked child that shares that memory and the eventfds and behaves like
Linux 6.1's virtio-vsock driver: 128 rx buffers of header + 4 KiB (two descriptors),
refilled at half, a 256 KiB receive buffer with CREDIT_UPDATE when less than 64 KiB is
free, tx packets of up to 64 KiB (header + payload), answering REQUEST with RESPONSE at
once. Being another process, the guest never holds the device's GIL. Reported per
phase: wall time, the device thread's CPU time (from /proc) per MiB or per connect,
interrupts raised and kicks taken. `--strace` attaches `strace -c` to the device thread
and prints its syscall counts per phase; `--turns` counts the device thread's poll
wake-ups (loop turns) per phase and what woke them (the loop's `wake_causes`).
"""
from __future__ import annotations

import argparse
import collections
import faulthandler
import signal
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from devices.virtio.mmio import MmioTransport  # noqa: E402
from devices.virtio.ring import DESC_F_NEXT, DESC_F_WRITE  # noqa: E402
from devices.virtio.testing import Allocator, EventLoop, FakeGuestMemory, FakeInterrupt, MockDriver  # noqa: E402
from devices.virtio.vsock import (  # noqa: E402
    OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, TYPE_STREAM,
)
from devices.virtio.vsock.device import VsockDevice  # noqa: E402
from devices.virtio.vsock.packet import HDR, HDR_SIZE  # noqa: E402

CID = 3
PORT = 5000
RX_BUF = 4096
GUEST_BUF_ALLOC = 256 * 1024
TX_PKT = 64 * 1024
_DESC = struct.Struct("<QIHH")
TURNS = None  # with --turns: the device loop's Counter of wake-up causes


class Ring:
    """Driver side of one queue with reusable fixed buffers (no allocation per packet)."""

    def __init__(self, dq, mem, alloc, nbufs: int, size: int, writable: bool) -> None:
        self.dq, self.mem = dq, mem
        self.hdrs = [alloc.alloc(HDR_SIZE) for _ in range(nbufs)]
        self.bufs = [alloc.alloc(size) for _ in range(nbufs)]
        self.free = list(range(nbufs))  # buffer i uses descriptors 2i, 2i+1
        self.flag = DESC_F_WRITE if writable else 0
        self.size = size

    def post(self, i: int, length: int | None = None) -> None:
        d = self.dq
        d.write_desc(2 * i, self.hdrs[i], HDR_SIZE, self.flag | DESC_F_NEXT, 2 * i + 1)
        d.write_desc(2 * i + 1, self.bufs[i], self.size if length is None else length, self.flag, 0)
        d.memory.write(d.avail + 4 + 2 * (d.avail_idx % d.size), struct.pack("<H", 2 * i))
        d.avail_idx = (d.avail_idx + 1) & 0xFFFF

    def publish(self) -> bool:
        """Make the posted buffers visible; True if the device asked to be kicked
        (VIRTIO_F_EVENT_IDX: avail_event in the used ring)."""
        d = self.dq
        old = struct.unpack_from("<H", self.mem.buf, d.avail + 2)[0]
        struct.pack_into("<H", self.mem.buf, d.avail + 2, d.avail_idx)
        avail_event = struct.unpack_from("<H", self.mem.buf, d.used + 4 + 8 * d.size)[0]
        return (d.avail_idx - avail_event - 1) & 0xFFFF < (d.avail_idx - old) & 0xFFFF

    def used(self):
        """New used entries; then used_event asks for an interrupt on the next one, and
        the used index is read again (as virtqueue_enable_cb() does: an entry added in
        between would otherwise raise no interrupt and the guest would sleep on it)."""
        d, out = self.dq, []
        while True:
            idx = struct.unpack_from("<H", self.mem.buf, d.used + 2)[0]
            while d.last_used != idx:
                head, n = struct.unpack_from("<II", self.mem.buf, d.used + 4 + 8 * (d.last_used % d.size))
                out.append((head // 2, n))
                d.last_used = (d.last_used + 1) & 0xFFFF
            struct.pack_into("<H", self.mem.buf, d.avail + 4 + 2 * d.size, d.last_used)  # used_event
            if struct.unpack_from("<H", self.mem.buf, d.used + 2)[0] == d.last_used:
                return out


class LinuxLikeGuest:
    """The child process: answers REQUEST, counts RW and returns credit like 6.1 does;
    on a command from the parent (b"G" on `ctl`) connects to the host's PORT and sends
    `nbytes` in 64 KiB packets within the device's credit, then SHUTDOWN."""

    def __init__(self, drv, mem, alloc, irq, kicks, ctl: int, nbytes: int) -> None:
        self.mem, self.irq, self.kicks, self.ctl, self.nbytes = mem, irq, kicks, ctl, nbytes
        rxq, txq, _ = drv.queues
        self.rx = Ring(rxq, mem, alloc, 128, RX_BUF, True)
        self.tx = Ring(txq, mem, alloc, 128, TX_PKT, False)
        for i in range(128):
            self.rx.post(i)
        self.rx.free = []
        self.rx.publish()
        self.kick(0)
        self.kicks_sent = 0
        self.streams: dict[tuple[int, int], list] = {}  # (guest port, host port) -> [fwd, fwd_sent]
        self.out = None  # guest -> host: [guest port, sent, host buf_alloc, host fwd_cnt, established]

    def kick(self, q: int) -> None:
        os.eventfd_write(self.kicks[q], 1)

    def send(self, op, src, dst, payload=0, flags=0, fwd=0) -> bool:
        if not self.tx.free:
            self.tx.free += [i for i, _ in self.tx.used()]
            if not self.tx.free:
                return False
        i = self.tx.free.pop()
        self.mem.write(self.tx.hdrs[i], HDR.pack(CID, 2, src, dst, payload, TYPE_STREAM, op, flags,
                                                 GUEST_BUF_ALLOC, fwd & 0xFFFFFFFF))
        self.tx.post(i, max(payload, 1))
        if self.tx.publish():
            self.kick(1)
        return True

    def run(self) -> None:
        while True:
            r = select.select([self.irq.fd, self.ctl], [], [], 1.0)[0]
            if self.irq.fd in r:
                try:
                    os.eventfd_read(self.irq.fd)
                except BlockingIOError:
                    pass
            if self.ctl in r:
                cmd = os.read(self.ctl, 1)
                if not cmd:
                    return
                self.out = [40000 + len(self.streams), 0, 0, 0, False]
                self.send(OP_REQUEST, self.out[0], PORT)
            self.tx.free += [i for i, _ in self.tx.used()]
            for i, n in self.rx.used():
                self.on_packet(struct.unpack_from("<QQIIIHHIII", self.mem.buf, self.rx.hdrs[i]))
                self.rx.free.append(i)
            if len(self.rx.free) >= 64:
                for i in self.rx.free:
                    self.rx.post(i)
                self.rx.free = []
                if self.rx.publish():
                    self.kick(0)
            self.pump()

    def on_packet(self, h) -> None:
        _, _, sport, dport, length, _, op, flags, buf_alloc, fwd_cnt = h
        key = (dport, sport)
        if self.out is not None and key == (self.out[0], PORT):
            self.out[2], self.out[3] = buf_alloc, fwd_cnt
            if op == OP_RESPONSE:
                self.out[4] = True
            elif op in (OP_RST, OP_SHUTDOWN):
                self.out = None
            return
        if op == OP_REQUEST:
            self.streams[key] = [0, 0]
            self.send(OP_RESPONSE, dport, sport)
        elif op == OP_RW and key in self.streams:
            st = self.streams[key]
            st[0] += length
            if st[0] - st[1] > GUEST_BUF_ALLOC - 64 * 1024:
                st[1] = st[0]
                self.send(OP_CREDIT_UPDATE, dport, sport, fwd=st[0])
        elif op == OP_SHUTDOWN and key in self.streams:
            self.send(OP_RST, dport, sport)
            del self.streams[key]

    def pump(self) -> None:
        o = self.out
        if o is None or not o[4]:
            return
        while o[1] < self.nbytes:
            credit = o[2] - (o[1] - o[3])
            n = min(TX_PKT, self.nbytes - o[1], credit)
            if n <= 0 or not self.send(OP_RW, o[0], PORT, n):
                return
            o[1] += n
        if o[1] >= self.nbytes:
            self.send(OP_SHUTDOWN, o[0], PORT, flags=3)
            o[1] = -1 << 60  # done


def thread_user_sys(tid: int) -> tuple[float, float]:
    """User and system seconds of a thread (clock ticks: use over long phases)."""
    f = Path(f"/proc/{os.getpid()}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]) / os.sysconf("SC_CLK_TCK"), int(f[12]) / os.sysconf("SC_CLK_TCK")


def thread_cpu(tid: int) -> float:
    return int(Path(f"/proc/{os.getpid()}/task/{tid}/schedstat").read_text().split()[0]) / 1e9  # ns on CPU


def vsock_connect(uds: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(uds)
    s.sendall(f"CONNECT {PORT}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        line += s.recv(1)
    if not line.startswith(b"OK "):
        raise ConnectionError(line)
    return s


class Phase:
    """Times one phase: wall, device-thread CPU, interrupts, optional strace -c."""

    def __init__(self, name, tid, irq, dev, use_strace: bool) -> None:
        self.name, self.tid, self.irq, self.dev, self.use_strace = name, tid, irq, dev, use_strace

    def __enter__(self):
        self.strace = None
        if self.use_strace:
            self.out = tempfile.NamedTemporaryFile(suffix=".strace", delete=False).name
            self.strace = subprocess.Popen(["strace", "-c", "-o", self.out, "-p", str(self.tid)],
                                           stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        self.m0 = dict(self.dev.metrics.snapshot())
        self.t0, self.c0, self.i0 = time.perf_counter(), thread_cpu(self.tid), self.irq.count
        self.us0 = thread_user_sys(self.tid)
        self.turns0 = collections.Counter(TURNS) if TURNS is not None else None
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = thread_cpu(self.tid) - self.c0
        u, k = thread_user_sys(self.tid)
        self.user, self.sys = u - self.us0[0], k - self.us0[1]
        self.irqs = self.irq.count - self.i0
        m = self.dev.metrics.snapshot()
        self.delta = {k: m[k] - self.m0.get(k, 0) for k in ("rx_packets", "tx_packets", "credit_updates_sent")}
        self.turns = collections.Counter(TURNS) - self.turns0 if TURNS is not None else None
        if self.strace is not None:
            self.strace.send_signal(2)
            self.strace.wait()
            self.syscalls = Path(self.out).read_text()
            os.unlink(self.out)


def in_child(fn) -> None:
    """Run the host side of a phase in another process: a host client never shares the
    VMM's GIL (a thread of ours would, and the device would wait for it)."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def run_phase(name, uds, lst, ctl_w, connects, nbytes, dev) -> None:
    if name == "connect":
        in_child(lambda: [vsock_connect(uds).close() for _ in range(connects)])
    elif name == "host->guest":
        start = dev.metrics.rx_bytes

        def send():
            chunk = os.urandom(1 << 18)
            s = vsock_connect(uds)
            for _ in range(nbytes // len(chunk)):
                s.sendall(chunk)
            s.close()
        in_child(send)
        while dev.metrics.rx_bytes - start < nbytes:
            time.sleep(0.001)
    elif name == "guest->host":
        def receive():
            os.write(ctl_w, b"G")
            lst.settimeout(30)
            c, _ = lst.accept()
            buf = bytearray(1 << 18)
            while c.recv_into(buf) > 0:
                pass
            c.close()
        in_child(receive)
    else:
        raise SystemExit(f"unknown phase {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--connects", type=int, default=200)
    ap.add_argument("--strace", action="store_true")
    ap.add_argument("--turns", action="store_true")
    ap.add_argument("--phases", default="connect,host->guest,guest->host")
    a = ap.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    tmp = Path(tempfile.mkdtemp(prefix="mm-vsock-prof-"))
    uds = str(tmp / "v.sock")
    mem = FakeGuestMemory(64 << 20, memfd=True)
    irq = FakeInterrupt()
    dev = VsockDevice(CID, uds)
    t = MmioTransport(dev, mem, irq, EventLoop())
    alloc = Allocator(0x1000, mem.size)
    drv = MockDriver(t, mem, queue_size=256, alloc=alloc)
    global TURNS
    if a.turns:
        TURNS = dev._loop.wake_causes = collections.Counter()
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{uds}_{PORT}")
    lst.listen()
    ctl_r, ctl_w = os.pipe()
    nbytes = a.mib << 20
    pid = os.fork()
    if pid == 0:
        os.close(ctl_w)
        LinuxLikeGuest(drv, mem, alloc, irq, t.queue_events, ctl_r, nbytes).run()
        os._exit(0)
    os.close(ctl_r)
    tid = dev._thread.native_id  # the device's own poll thread
    phases = []
    try:
        for name in a.phases.split(","):
            unit, per = (a.connects, "connect") if name == "connect" else (a.mib, "MiB")
            with Phase(name, tid, irq, dev, a.strace) as p:
                run_phase(name, uds, lst, ctl_w, a.connects, nbytes, dev)
            p.unit, p.per = unit, per
            phases.append(p)
    finally:
        os.close(ctl_w)
        os.waitpid(pid, 0)
        t.close()
        lst.close()
    for p in phases:
        print(f"{p.name:12} wall {p.wall * 1e3 / p.unit:8.3f} ms/{p.per}  device CPU {p.cpu * 1e3 / p.unit:8.3f} "
              f"ms/{p.per} (user {p.user * 1e3 / p.unit:.3f}, sys {p.sys * 1e3 / p.unit:.3f})  "
              f"interrupts {p.irqs / p.unit:7.1f}/{p.per}  {p.delta}")
        if p.turns is not None:
            n = sum(p.turns.values())
            print(f"{'':12} turns {n / p.unit:.2f}/{p.per}: " +
                  ", ".join(f"{k} {v / p.unit:.2f}" for k, v in p.turns.most_common()))
        if a.strace:
            print(p.syscalls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
