"""virtio-vsock through the mock driver: host→guest stream throughput and host-initiated
connect latency (CONNECT line → guest REQUEST → RESPONSE → `OK` line), with the mock
guest answering on the benchmark thread and the device on its own thread. Run:
    .venv/bin/python -m pytest benchmarks/virtio --benchmark-only -p no:cacheprovider
"""
from __future__ import annotations

import os
import select
import socket
import threading

import pytest

from devices.virtio.constants import F_EVENT_IDX, bit
from devices.virtio.mmio import MmioTransport
from devices.virtio.testing import EventLoop, FakeGuestMemory, FakeInterrupt, MockDriver
from devices.virtio.vsock import OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RW, TYPE_STREAM
from devices.virtio.vsock.device import VsockDevice
from devices.virtio.vsock.packet import HDR_SIZE, Header

CID = 3
BUF = 4096
STREAM_BYTES = 8 << 20


class MiniGuest:
    """Waits for the device's interrupt like a guest would (a busy-polling mock would
    measure GIL hand-offs instead of the device)."""

    def __init__(self, d, irq):
        self.d, self.irq = d, irq
        self.rx, self.tx, _ = d.queues
        self.bufs = {}
        for _ in range(64):
            self.rx.add([], [HDR_SIZE + BUF])
        d.kick(0)

    def packets(self):
        used = self.rx.get_used()
        if not used:
            select.select([self.irq.fd], [], [], 0.01)
            try:
                os.eventfd_read(self.irq.fd)
            except BlockingIOError:
                pass
            used = self.rx.get_used()
        out = []
        for head, n in used:
            raw = self.rx.written(head, n)
            out.append((Header.unpack(raw[:HDR_SIZE]), n - HDR_SIZE))
            self.rx.add([], [HDR_SIZE + BUF])
        if used:
            self.d.kick(0)
        return out

    def send(self, op, src, dst, fwd_cnt=0):
        self.tx.get_used()
        self.tx.add([Header(CID, 2, src, dst, 0, TYPE_STREAM, op, 0, 1 << 20, fwd_cnt).pack()], [])
        self.d.kick(1)


@pytest.fixture
def guest(tmp_path):
    mem = FakeGuestMemory(256 << 20)
    path = str(tmp_path / "v.sock")
    irq = FakeInterrupt()
    t = MmioTransport(VsockDevice(CID, path), mem, irq, EventLoop())
    no_event_idx = t.device.avail_features & ~bit(F_EVENT_IDX)  # interrupt on every batch
    # each round allocates fresh rx buffers from the mock's bump allocator: plenty of room
    yield MiniGuest(MockDriver(t, mem, features=no_event_idx, queue_size=256), irq), path
    t.close()


def connect(g, path, port=1000):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(f"CONNECT {port}\n".encode())
    while True:
        reqs = [h for h, _ in g.packets() if h.op == OP_REQUEST]
        if reqs:
            break
    g.send(OP_RESPONSE, port, reqs[0].src_port)
    line = b""
    while not line.endswith(b"\n"):
        line += s.recv(1)
    return s, reqs[0].src_port


def test_vsock_connect_latency(benchmark, guest):
    g, path = guest
    socks = []
    benchmark.pedantic(lambda: socks.append(connect(g, path)[0]), rounds=50, iterations=1)
    for s in socks:
        s.close()


def test_vsock_host_to_guest_throughput(benchmark, guest):
    g, path = guest
    s, hport = connect(g, path)
    chunk = b"x" * (256 * 1024)

    def run():
        sender = threading.Thread(target=lambda: [s.sendall(chunk) for _ in range(STREAM_BYTES // len(chunk))])
        sender.start()
        got = 0
        while got < STREAM_BYTES:
            for h, n in g.packets():
                if h.op == OP_RW:
                    got += n
            g.tx.get_used()
            if got - run.acked >= 64 * 1024 and g.tx.free:
                run.fwd += got - run.acked
                run.acked = got
                g.send(OP_CREDIT_UPDATE, 1000, hport, fwd_cnt=run.fwd & 0xFFFFFFFF)
        sender.join()
        run.fwd += got - run.acked  # the guest consumed everything: return all credit
        run.acked = 0
        g.send(OP_CREDIT_UPDATE, 1000, hport, fwd_cnt=run.fwd & 0xFFFFFFFF)

    run.fwd = run.acked = 0
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["MB_per_s"] = round(STREAM_BYTES / benchmark.stats.stats.mean / 1e6, 1)
    s.close()
