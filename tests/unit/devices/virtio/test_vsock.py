"""virtio-vsock end to end: host Unix-socket clients ↔ a mock guest driver over the queues."""
from __future__ import annotations

import socket
import struct
import time

import pytest

from devices.virtio.mmio import MmioTransport
from devices.virtio.testing import FakeGuestMemory, MockDriver
from devices.virtio.vsock import (
    OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, TYPE_STREAM, VsockError,
)
from devices.virtio.vsock.device import VsockDevice
from devices.virtio.vsock.packet import HDR_SIZE, Header

CID = 42


class Guest:
    """A tiny guest vsock stack on top of the mock driver's queues."""

    def __init__(self, driver: MockDriver, rx_buffers: int = 32):
        self.d = driver
        self.rx, self.tx, self.ev = driver.queues
        for _ in range(rx_buffers):
            self.rx.add([], [HDR_SIZE + 4096])
        self.ev.add([], [8])
        driver.kick(0)
        driver.kick(2)
        self.backlog: list = []

    def send(self, op, src_port, dst_port, data=b"", flags=0, buf_alloc=1 << 20, fwd_cnt=0, src_cid=CID):
        self.tx.get_used()
        h = Header(src_cid, 2, src_port, dst_port, len(data), TYPE_STREAM, op, flags, buf_alloc, fwd_cnt)
        self.tx.add([h.pack() + data], [])
        self.d.kick(1)

    def poll(self) -> list[tuple[Header, bytes]]:
        """Everything the device has delivered so far, without waiting."""
        self.recv(0, timeout=0)
        out, self.backlog = self.backlog, []
        return out

    def recv(self, count=1, timeout=10.0, match=None) -> list[tuple[Header, bytes]]:
        deadline = time.monotonic() + timeout
        out = []
        while True:
            keep = []
            for h, data in self.backlog:
                (out if (match is None or match(h)) and len(out) < count else keep).append((h, data))
            self.backlog = keep
            used = self.rx.get_used()
            for head, n in used:
                raw = self.rx.written(head, n)
                self.backlog.append((Header.unpack(raw[:HDR_SIZE]), raw[HDR_SIZE:]))
                self.rx.add([], [HDR_SIZE + 4096])
            if used:
                self.d.kick(0)
                continue
            if len(out) >= count:
                return out
            elif time.monotonic() > deadline:
                raise TimeoutError(f"got {len(out)} of {count} packets")
            else:
                time.sleep(0.001)


@pytest.fixture
def vsock(tmp_path, interrupt, loop, queue_cls):
    mem = FakeGuestMemory(64 << 20)
    path = str(tmp_path / "v.sock")
    dev = VsockDevice(CID, path)
    t = MmioTransport(dev, mem, interrupt, loop)
    g = Guest(MockDriver(t, mem, queue_size=256))
    yield dev, g, path
    t.close()


def host_connect(path, port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(f"CONNECT {port}\n".encode())
    return s


def read_line(s):
    buf = b""
    while not buf.endswith(b"\n"):
        buf += s.recv(1)
    return buf


def test_config_is_cid(vsock):
    dev, g, _ = vsock
    assert g.d.config(0, 8) == CID


def test_host_connects_to_guest_port(vsock):
    dev, g, path = vsock
    s = host_connect(path, 1234)
    (req, _), = g.recv()
    assert req.op == OP_REQUEST and req.dst_port == 1234 and req.dst_cid == CID and req.src_cid == 2
    g.send(OP_RESPONSE, 1234, req.src_port)
    assert read_line(s) == f"OK {req.src_port}\n".encode()
    s.sendall(b"hello guest")
    (rw, data), = g.recv()
    assert rw.op == OP_RW and data == b"hello guest"
    g.send(OP_RW, 1234, req.src_port, b"hello host")
    assert s.recv(100) == b"hello host"
    g.send(OP_SHUTDOWN, 1234, req.src_port, flags=3)
    (rst, _), = g.recv()
    assert rst.op == OP_RST
    assert s.recv(100) == b""
    s.close()


def test_bytes_sent_with_the_connect_line_reach_the_guest_first(vsock):
    """A client that does not wait for OK: what it wrote after the line (read with the
    line in one recv) is the stream's first data, ahead of what follows, within credit."""
    dev, g, path = vsock
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(b"CONNECT 1234\nearly")
    (req, _), = g.recv()
    assert req.op == OP_REQUEST and req.dst_port == 1234
    s.sendall(b" and later")
    time.sleep(0.05)
    assert not g.poll()  # nothing before the guest answers
    g.send(OP_RESPONSE, 1234, req.src_port, buf_alloc=3)  # room for 3 bytes only
    assert read_line(s) == f"OK {req.src_port}\n".encode()
    (rw, data), = g.recv()
    assert rw.op == OP_RW and data == b"ear"
    g.send(OP_CREDIT_UPDATE, 1234, req.src_port, buf_alloc=1 << 20, fwd_cnt=3)
    got = b""
    while len(got) < len(b"ly and later"):
        got += b"".join(d for h, d in g.recv() if h.op == OP_RW)
    assert got == b"ly and later"
    s.close()


def test_guest_connects_to_host_listener(vsock):
    dev, g, path = vsock
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{path}_5000")
    lst.listen()
    lst.settimeout(10)
    g.send(OP_REQUEST, 777, 5000)
    conn, _ = lst.accept()
    (resp, _), = g.recv()
    assert resp.op == OP_RESPONSE and resp.src_port == 5000 and resp.dst_port == 777
    g.send(OP_RW, 777, 5000, b"ping")
    conn.settimeout(10)
    assert conn.recv(10) == b"ping"
    conn.sendall(b"pong")
    (rw, data), = g.recv()
    assert data == b"pong"
    conn.shutdown(socket.SHUT_WR)  # host half-closes: the guest sees EOF, can still send
    (sd, _), = g.recv()
    assert sd.op == OP_SHUTDOWN and sd.flags == 2
    g.send(OP_RW, 777, 5000, b"after eof")
    assert conn.recv(20) == b"after eof"
    conn.close()
    g.send(OP_SHUTDOWN, 777, 5000, flags=3)
    (rst, _), = g.recv()
    assert rst.op == OP_RST and not dev.mux.conns
    lst.close()


def test_guest_connect_without_listener_is_reset(vsock):
    dev, g, _ = vsock
    g.send(OP_REQUEST, 777, 6000)
    (rst, _), = g.recv()
    assert rst.op == OP_RST and rst.dst_port == 777
    assert dev.metrics.connect_failures == 1


def test_bad_packets_get_rst(vsock):
    dev, g, _ = vsock
    g.send(OP_RW, 1, 2, b"x")  # unknown stream
    g.send(OP_REQUEST, 1, 2, src_cid=99)  # spoofed source CID
    pkts = g.recv(2)
    assert [h.op for h, _ in pkts] == [OP_RST, OP_RST]
    assert dev.metrics.invalid_packets == 1


def test_bad_connect_line(vsock):
    _, g, path = vsock
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(b"HELLO there\n")
    assert s.recv(10) == b""


def test_credit_limits_host_to_guest(vsock):
    dev, g, path = vsock
    s = host_connect(path, 80)
    (req, _), = g.recv()
    g.send(OP_RESPONSE, 80, req.src_port, buf_alloc=100)
    read_line(s)
    s.sendall(b"a" * 1000)
    got = b"".join(d for _, d in g.recv(1))
    time.sleep(0.2)
    got += b"".join(d for _, d in g.poll())
    assert len(got) == 100
    g.send(OP_CREDIT_UPDATE, 80, req.src_port, buf_alloc=100, fwd_cnt=100)
    more = b""
    while len(more) < 100:
        more += b"".join(d for _, d in g.recv(1))
    assert len(more) == 100
    s.close()


def test_guest_exceeding_credit_is_reset(vsock):
    dev, g, path = vsock
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{path}_81")
    lst.listen()
    g.send(OP_REQUEST, 9, 81)
    conn, _ = lst.accept()  # never reads: everything the guest sends stays buffered
    g.recv()
    chunk = b"z" * 4000
    for _ in range(300):  # 1.2 MB > the stream's 256 KiB buffer plus the socket's own
        g.send(OP_RW, 9, 81, chunk)
        while len(g.tx.free) < 2:
            g.tx.get_used()
    (rst, _), = g.recv(match=lambda h: h.op == OP_RST)
    assert rst.dst_port == 9
    conn.close()
    lst.close()


def test_hundreds_of_streams(vsock):
    dev, g, path = vsock
    n = 200
    socks = [host_connect(path, 3000) for _ in range(n)]
    reqs = [h for h, _ in g.recv(n, match=lambda h: h.op == OP_REQUEST)]
    for h in reqs:
        g.send(OP_RESPONSE, 3000, h.src_port)
    for s in socks:
        assert read_line(s).startswith(b"OK ")
    for i, s in enumerate(socks):
        s.sendall(f"msg{i}".encode())
    for h, data in g.recv(n, match=lambda h: h.op == OP_RW):
        g.send(OP_RW, 3000, h.src_port, data.upper())
    for i, s in enumerate(socks):
        assert s.recv(100) == f"MSG{i}".encode()
        s.close()
    assert dev.metrics.host_connects == n


def test_reserved_cid():
    with pytest.raises(VsockError):
        VsockDevice(2, "/tmp/never.sock")


def test_socket_in_use(vsock):
    _, _, path = vsock
    with pytest.raises(VsockError):
        VsockDevice(CID, path)


def test_save_restore_sends_transport_reset(vsock, interrupt, loop):
    dev, g, path = vsock
    state, tstate = dev.save(), g.d.t.save()
    g.d.t.close()
    dev2 = VsockDevice.restore(state)
    t2 = MmioTransport(dev2, g.d.memory, interrupt, loop)
    t2.restore(tstate)
    g.d.t = t2
    try:
        assert dev2.save() == state
        dev2.send_transport_reset()
        (head, n), = g.ev.wait_used()
        assert n == 4 and g.ev.written(head, 4) == struct.pack("<I", 0)
        s = host_connect(path, 1)
        (req, _), = g.recv()
        assert req.op == OP_REQUEST
        s.close()
    finally:
        t2.close()


def test_hundred_guest_initiated_streams(vsock):
    dev, g, path = vsock
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{path}_7000")
    lst.listen(200)
    lst.settimeout(10)
    n = 100
    for i in range(n):
        g.send(OP_REQUEST, 40000 + i, 7000)
        while len(g.tx.free) < 2:
            g.tx.get_used()
    conns = [lst.accept()[0] for _ in range(n)]
    resps = g.recv(n, match=lambda h: h.op == OP_RESPONSE)
    assert sorted(h.dst_port for h, _ in resps) == list(range(40000, 40000 + n))
    for c in conns:
        c.settimeout(10)
        c.sendall(b"hi")
    rws = g.recv(n, match=lambda h: h.op == OP_RW)
    assert all(data == b"hi" for _, data in rws)
    for h, _ in rws:
        g.send(OP_RW, h.dst_port, 7000, b"yo")
        while len(g.tx.free) < 2:
            g.tx.get_used()
    assert all(c.recv(10) == b"yo" for c in conns)
    for c in conns:
        c.close()
    lst.close()


def test_unanswered_host_connect_times_out(vsock, monkeypatch):
    from devices.virtio.vsock import muxer
    monkeypatch.setattr(muxer, "CONNECT_TIMEOUT", 0.2)
    dev, g, path = vsock
    s = host_connect(path, 4321)
    (req, _), = g.recv()
    assert req.op == OP_REQUEST
    assert s.recv(10) == b""  # the device hung up after the timeout
    (rst, _), = g.recv()
    assert rst.op == OP_RST and rst.src_port == req.src_port
    assert dev.metrics.connect_failures == 1


def test_guest_stream_into_a_full_host_socket_keeps_every_byte_in_order(vsock):
    """More guest data than the host socket holds while the host does not read: packets
    the socket takes only in part (C path) are finished from the device's buffer, in order."""
    dev, g, path = vsock
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{path}_5001")
    lst.listen()
    lst.settimeout(10)
    g.send(OP_REQUEST, 778, 5001)
    conn, _ = lst.accept()
    (resp, _), = g.recv()
    assert resp.op == OP_RESPONSE
    payload = bytes(range(256)) * 16 * 60 + b"end"  # ~240 KiB: more than a Unix socket buffers
    sent = 0
    for off in range(0, len(payload), 4096):
        g.send(OP_RW, 778, 5001, payload[off:off + 4096])
        sent += 1
        g.tx.wait_used(timeout=10)
    conn.settimeout(10)
    got = b""
    while len(got) < len(payload):
        chunk = conn.recv(1 << 16)
        assert chunk, f"EOF after {len(got)} bytes"
        got += chunk
    assert got == payload
    assert dev.metrics.tx_bytes == len(payload) and dev.metrics.resets_sent == 0
    conn.close()
    lst.close()


def test_guest_close_with_data_still_buffered_loses_nothing(vsock):
    """A guest that sends more than the host socket holds and then closes both ways
    (SHUTDOWN 3): the device's buffered rest still reaches the host, then EOF, then the
    RST that completes the guest's close (seen in the lab: 94 KB lost of 64 MiB)."""
    dev, g, path = vsock
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(f"{path}_5002")
    lst.listen()
    lst.settimeout(10)
    g.send(OP_REQUEST, 779, 5002)
    conn, _ = lst.accept()
    (resp, _), = g.recv()
    assert resp.op == OP_RESPONSE
    payload = bytes(range(256)) * 16 * 60  # ~240 KiB: more than a Unix socket buffers
    for off in range(0, len(payload), 4096):
        g.send(OP_RW, 779, 5002, payload[off:off + 4096])
        g.tx.wait_used(timeout=10)
    g.send(OP_SHUTDOWN, 779, 5002, flags=3)
    g.tx.wait_used(timeout=10)
    time.sleep(0.2)
    assert not [h for h, _ in g.poll() if h.op == OP_RST]  # no RST while data waits for the host
    conn.settimeout(10)
    got = b""
    while chunk := conn.recv(1 << 16):
        got += chunk
    assert got == payload
    (rst, _), = g.recv(match=lambda h: h.op == OP_RST)
    assert rst.dst_port == 779 and not dev.mux.conns
    conn.close()
    lst.close()


def test_draining_a_full_host_socket_returns_credit_to_the_guest():
    """A guest out of credit sends nothing more: when the host socket drains our buffer,
    the device must say so (CREDIT_UPDATE) or both ends wait forever."""
    import select

    from devices.virtio.vsock.connection import Connection, ConnState
    from devices.virtio.vsock.metrics import VsockMetrics
    from devices.virtio.vsock.muxer import Muxer

    a, b = socket.socketpair()
    a.setblocking(False)
    mux = Muxer(CID, "/nonexistent", socket.socket(socket.AF_UNIX), VsockMetrics())
    c = Connection(a.detach(), 1 << 30, 777, ConnState.ESTABLISHED)
    mux._add(c)
    c.tx_buf += bytes(200 << 10)  # what the host socket could not take while the guest sent
    mux.on_ready(c.fd, select.POLLOUT)
    assert not c.tx_buf and c.fwd_cnt == 200 << 10
    updates = [h for h in map(Header.unpack, mux.control) if h.op == OP_CREDIT_UPDATE]
    assert updates and updates[-1].fwd_cnt == 200 << 10 and updates[-1].dst_port == 777
    mux.listener.close()
    c.close()
    b.close()


def test_a_connect_during_a_close_rides_on_its_interrupt(tmp_path, interrupt, loop, queue_cls):
    """A client that connects while the device thread is busy with its previous stream's
    close: the SHUTDOWN and the new REQUEST are both in the rx queue when the interrupt
    for them is raised (one hand-off to the guest, not two)."""
    from devices.virtio.vsock.muxer import Muxer

    path = str(tmp_path / "v.sock")
    clients = []

    class RacingMuxer(Muxer):
        def _host_eof(self, c):
            super()._host_eof(c)
            if not clients:  # the next client arrives while this turn runs
                clients.append(host_connect(path, 1235))

    dev = VsockDevice(CID, path)
    dev.mux = RacingMuxer(CID, path, dev.mux.listener, dev.metrics)
    mem = FakeGuestMemory(64 << 20)
    t = MmioTransport(dev, mem, interrupt, loop)
    g = Guest(MockDriver(t, mem, queue_size=256))
    s = host_connect(path, 1234)
    (req, _), = g.recv()
    g.send(OP_RESPONSE, 1234, req.src_port)
    assert read_line(s) == f"OK {req.src_port}\n".encode()
    delivered_at_signal = []  # rx packets the device had delivered at each interrupt
    signal_used = dev.active.signal_used
    dev.active.signal_used = lambda q: (delivered_at_signal.append(dev.metrics.rx_packets), signal_used(q))
    before = dev.metrics.rx_packets
    g.rx.set_used_event(g.rx.used_idx())  # EVENT_IDX: the driver wants an interrupt for the next used buffer
    s.close()
    got = g.recv(2)
    assert [h.op for h, _ in got] == [OP_SHUTDOWN, OP_REQUEST] and got[1][0].dst_port == 1235
    deadline = time.monotonic() + 5  # the used ring fills before the interrupt is raised
    while not delivered_at_signal and time.monotonic() < deadline:
        time.sleep(0.001)
    assert delivered_at_signal[0] == before + 2
    clients[0].close()
    t.close()
