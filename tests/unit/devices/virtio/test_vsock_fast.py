"""virtio-vsock's C paths (_fast.pyx) and the loop-turn rules around them, driven through
the compiled queue: the CONNECT line, data spread over many rx chains by one readv,
batched tx sends, header-only packets, hostile chains, credit updates, one interrupt
per turn, and a credit-starved stream read in the turn its credit arrives."""
from __future__ import annotations

import os
import select
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from devices.virtio import _queue
from devices.virtio.device import Activated
from devices.virtio.ring import DESC_F_WRITE
from devices.virtio.testing import Allocator, DriverQueue, EventLoop, FakeGuestMemory
from devices.virtio.vsock import (
    CONN_BUF_ALLOC, MAX_CONNECT_LINE, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RW, OP_SHUTDOWN, TYPE_STREAM,
    _fast,
)
from devices.virtio.vsock.connection import Connection, ConnState
from devices.virtio.vsock.device import VsockDevice
from devices.virtio.vsock.metrics import VsockMetrics
from devices.virtio.vsock.listener import open_listener
from devices.virtio.vsock.muxer import Muxer
from devices.virtio.vsock.packet import HDR_SIZE, Header

CID = 5


def test_connect_line_limit_matches_the_c_side():
    assert _fast.CONNECT_MAX_LINE == MAX_CONNECT_LINE


@pytest.mark.parametrize("line, want", [
    (b"CONNECT 5000\n", 5000),
    (b"CONNECT 0\n", 0),
    (b"  CONNECT 4294967295\r\n", 0xFFFFFFFF),
    (b"CONNECT 4294967296\n", _fast.CONNECT_BAD),
    (b"CONNECT  5\n", _fast.CONNECT_BAD),
    (b"CONNECT 5x\n", _fast.CONNECT_BAD),
    (b"CONNECT -5\n", _fast.CONNECT_BAD),
    (b"CONNECT\n", _fast.CONNECT_BAD),
    (b"connect 5\n", _fast.CONNECT_BAD),
    (b"HELLO\n", _fast.CONNECT_BAD),
    (b"CONNECT 5", _fast.CONNECT_PENDING),
    (b"CONNECT " + b"1" * 40, _fast.CONNECT_GONE),
])
def test_take_connect(line, want):
    a, b = socket.socketpair()
    try:
        b.sendall(line)
        assert _fast.take_connect(a.fileno())[0] == want
    finally:
        a.close()
        b.close()


def test_take_connect_returns_the_bytes_after_the_line():
    """One recv() takes the line and whatever came with it: the rest is stream data."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.sendall(b"CONNECT 7\nstream bytes")
    assert _fast.take_connect(a.fileno()) == (7, b"stream bytes")
    b.sendall(b"more")
    assert a.recv(100) == b"more"  # nothing of the line or its rest is left behind
    b.close()
    assert _fast.take_connect(a.fileno()) == (_fast.CONNECT_GONE, None)  # closed before a line
    a.close()


def test_take_connect_carries_a_line_that_arrives_in_pieces():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.sendall(b"CONN")
    port, part = _fast.take_connect(a.fileno())
    assert (port, part) == (_fast.CONNECT_PENDING, b"CONN")
    assert _fast.take_connect(a.fileno(), part) == (_fast.CONNECT_PENDING, b"CONN")  # nothing new yet
    b.sendall(b"ECT 42\nx")
    assert _fast.take_connect(a.fileno(), part) == (42, b"x")
    assert _fast.take_connect(a.fileno(), b"C" * MAX_CONNECT_LINE) == (_fast.CONNECT_GONE, None)
    b.sendall(b"CONNECT 1")  # closed with half a line
    b.close()
    port, part = _fast.take_connect(a.fileno())
    assert port == _fast.CONNECT_PENDING
    assert _fast.take_connect(a.fileno(), part) == (_fast.CONNECT_GONE, None)
    a.close()


def _reference_line(data: bytes):
    """What take_connect must make of a client that sent `data` and closed: (port or
    code, stream bytes after the line)."""
    nl = data.find(b"\n", 0, MAX_CONNECT_LINE)
    if nl < 0:
        return _fast.CONNECT_GONE, None
    line = data[:nl + 1].strip()
    digits = line[8:]
    if not line.startswith(b"CONNECT ") or not digits or not digits.isdigit() or not digits.isascii() \
            or int(digits) > 0xFFFFFFFF:
        return _fast.CONNECT_BAD, None
    return int(digits), data[nl + 1:]


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=48),
    st.builds(lambda p, tail, pad: pad + b"CONNECT %d\n" % p + tail, st.integers(0, 1 << 33),
              st.binary(max_size=40), st.sampled_from([b"", b" ", b"\t", b"\r", b"0"]))),
    cuts=st.lists(st.integers(1, 47), max_size=4))
def test_take_connect_on_any_bytes_in_any_pieces(data, cuts):
    """Whatever a host client sends, in whatever pieces: the answer the reference gives,
    the bytes after the line handed back whole (up to the MAX_CONNECT_LINE read), never
    more read than that."""
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        prior, result, rest = b"", None, b""
        pieces = [data[i:j] for i, j in zip([0, *sorted(set(cuts))], [*sorted(set(cuts)), len(data)]) if j > i]
        while pieces:
            b.sendall(pieces.pop(0))
            port, got = _fast.take_connect(a.fileno(), prior)
            if port != _fast.CONNECT_PENDING:
                result, rest = port, got
                break
            prior = got
            assert len(prior) < MAX_CONNECT_LINE
        for piece in pieces:  # the client goes on sending after its line
            b.sendall(piece)
        if result is None:
            b.shutdown(socket.SHUT_WR)
            result, rest = _fast.take_connect(a.fileno(), prior)
        want, want_rest = _reference_line(data)
        assert result == want
        if want >= 0:
            read = rest
            try:
                read += a.recv(1 << 16)
            except BlockingIOError:
                pass
            assert read == want_rest  # what came after the line: handed back or still in the socket
    finally:
        a.close()
        b.close()


def test_accept_connects_stops_at_its_limit(tmp_path):
    """A lone client is accepted without a second accept() that would fail (limit 1);
    the rest of a burst stays in the backlog for the next call."""
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    lst.bind(str(tmp_path / "l.sock"))
    lst.listen(8)
    clients = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    for i, c in enumerate(clients):
        c.connect(str(tmp_path / "l.sock"))
        c.sendall(b"CONNECT %d\n" % i)
    got, bad = _fast.accept_connects(lst.fileno(), 1)
    assert [port for _, port, _ in got] == [0] and bad == 0
    rest, _ = _fast.accept_connects(lst.fileno())
    assert [port for _, port, _ in rest] == [1, 2]
    for fd, _, _ in got + rest:
        os.close(fd)
    for c in clients:
        c.close()
    lst.close()


def test_accept_connects_takes_every_pending_connection(tmp_path):
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    lst.bind(str(tmp_path / "l.sock"))
    lst.listen(8)
    lines = [b"CONNECT 1\n", b"CONNECT 2\nhi", b"CONN", b"HELLO\n", b""]
    clients = [socket.socket(socket.AF_UNIX) for _ in lines]
    for c, line in zip(clients, lines):
        c.connect(str(tmp_path / "l.sock"))
        c.sendall(line)
    clients[-1].close()  # gone before its line
    got, bad = _fast.accept_connects(lst.fileno())
    assert [(port, rest) for _, port, rest in got] == [(1, b""), (2, b"hi"), (_fast.CONNECT_PENDING, b"CONN")]
    assert bad == 1 and _fast.accept_connects(lst.fileno()) == ([], 0)
    assert clients[3].recv(1) == b""  # the bad line was hung up on in C
    for fd, _, _ in got:
        assert os.get_blocking(fd) is False
        assert not os.get_inheritable(fd)
        os.close(fd)
    for c in clients:
        c.close()
    lst.close()


def test_raw_fd_socket_calls(tmp_path):
    """The muxer's own socket calls on raw fds: connect, send (no SIGPIPE), half-close."""
    path = tmp_path / "l.sock"
    with pytest.raises(OSError):
        _fast.connect_unix(bytes(path))  # nobody listens
    with pytest.raises(OSError):
        _fast.connect_unix(b"/" + b"x" * 200)  # longer than sun_path
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(str(path))
    lst.listen(1)
    fd = _fast.connect_unix(bytes(path))
    peer, _ = lst.accept()
    assert os.get_blocking(fd) is False and not os.get_inheritable(fd)
    assert _fast.send_bytes(fd, b"ab") == 2 and _fast.send_bytes(fd, bytearray(b"")) == 0
    assert _fast.send_views(fd, [memoryview(b"cd"), b"", bytearray(b"ef")]) == 4
    _fast.shutdown_wr(fd)
    assert peer.recv(10) == b"abcdef" and peer.recv(10) == b""
    peer.close()
    with pytest.raises(OSError):
        while True:
            _fast.send_bytes(fd, b"x" * 4096)  # EPIPE (or ECONNRESET), never a signal
    os.close(fd)
    lst.close()


# -- a muxer over compiled queues, no device thread ----------------------------------------
class Rig:
    def __init__(self, size=64, mem_size=4 << 20):
        self.mem = FakeGuestMemory(mem_size)
        alloc = Allocator(0x1000, self.mem.size)
        self.dqs = [DriverQueue(self.mem, size, alloc) for _ in range(3)]
        qs = [_queue.SplitQueue(self.mem, size, d.desc, d.avail, d.used, indirect=True) for d in self.dqs]
        self.failures: list = []
        self.signals: list = []
        self.act = Activated(self.mem, qs, [-1] * 3, EventLoop(), self.signals.append, self.failures.append)
        self.mux = Muxer(CID, "/nonexistent", socket.socket(socket.AF_UNIX), VsockMetrics())
        self.host, peer = socket.socketpair()
        peer.setblocking(False)
        self.conn = Connection(peer.detach(), 1 << 30, 900, ConnState.ESTABLISHED)
        self.conn.update_peer_credit(1 << 20, 0)
        self.mux._add(self.conn)

    def tx(self, op, length=0, payload=b"", split=(), fwd_cnt=0, buf_alloc=1 << 20, src_port=900,
           dst_port=1 << 30):
        h = Header(CID, 2, src_port, dst_port, length, TYPE_STREAM, op, 0, buf_alloc, fwd_cnt).pack()
        data = h + payload
        cuts = [0, *sorted(c for c in split if 0 < c < len(data)), len(data)]
        self.dqs[1].add([data[a:b] for a, b in zip(cuts, cuts[1:]) if b > a], [])

    def rx_packets(self):
        out = []
        for head, n in self.dqs[0].get_used():
            raw = self.dqs[0].written(head, n)
            out.append((Header.unpack(raw[:HDR_SIZE]), raw[HDR_SIZE:]))
        return out

    def close(self):
        self.mux.close_streams()
        self.mux.listener.close()
        self.host.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def test_one_readv_spreads_host_data_over_many_chains(rig):
    for size in (HDR_SIZE + 4096, HDR_SIZE + 1000, HDR_SIZE + 7):
        for _ in range(6):
            rig.dqs[0].add([], [size])
    for _ in range(6):  # header and payload in separate descriptors, as Linux 6.1 posts them
        rig.dqs[0].add([], [HDR_SIZE, 4096])
    data = os.urandom(40000)
    rig.host.sendall(data)
    rig.mux.rx_ready[rig.conn.key] = rig.conn
    assert rig.mux.process_rx(rig.act) is not None
    pkts = rig.rx_packets()
    assert all(h.op == OP_RW and h.len == len(p) and h.src_port == 1 << 30 and h.dst_port == 900 for h, p in pkts)
    assert b"".join(p for _, p in pkts) == data
    assert rig.conn.rx_cnt == len(data) and rig.mux.metrics.rx_bytes == len(data)


def test_rx_respects_the_guest_credit_across_chains(rig):
    rig.conn.update_peer_credit(10000, 0)
    for _ in range(8):
        rig.dqs[0].add([], [HDR_SIZE + 4096])
    rig.host.sendall(b"q" * 30000)
    rig.mux.rx_ready[rig.conn.key] = rig.conn
    rig.mux.process_rx(rig.act)
    assert sum(h.len for h, _ in rig.rx_packets()) == 10000
    assert rig.conn.peer_credit() == 0


def test_host_eof_in_the_c_path_becomes_one_shutdown(rig):
    for _ in range(4):
        rig.dqs[0].add([], [HDR_SIZE + 4096])
    rig.host.sendall(b"last words")
    rig.host.shutdown(socket.SHUT_WR)
    rig.mux.rx_ready[rig.conn.key] = rig.conn
    rig.mux.process_rx(rig.act)
    rig.mux.rx_ready[rig.conn.key] = rig.conn  # poll would report the EOF again
    rig.mux.process_rx(rig.act)
    (rw, data), (sd, _) = rig.rx_packets()
    assert data == b"last words" and sd.op == OP_SHUTDOWN and sd.flags == 2 and rig.conn.host_eof


def test_host_close_becomes_a_shutdown_both_ways(rig):
    """A host peer that closed its socket (POLLHUP) reads nothing more either: the guest
    hears SHUTDOWN(RCV|SEND) after the last data, as from a Linux host's close()."""
    import select

    for _ in range(4):
        rig.dqs[0].add([], [HDR_SIZE + 4096])
    rig.host.sendall(b"bye")
    rig.host.close()
    fd = rig.conn.fd
    p = select.poll()
    p.register(fd, select.POLLIN)
    (_, events), = p.poll(1000)
    assert events & select.POLLHUP
    rig.mux.on_ready(fd, events)
    rig.mux.process_rx(rig.act)
    rig.mux.on_ready(fd, events)  # poll would report the EOF again
    rig.mux.process_rx(rig.act)
    (rw, data), (sd, _) = rig.rx_packets()
    assert data == b"bye" and sd.op == OP_SHUTDOWN and sd.flags == 3 and rig.conn.host_eof


def test_batched_tx_keeps_order_across_split_chains():
    rig = Rig(size=128)
    sent = b""
    for i in range(20):
        payload = bytes([i]) * (500 + 37 * i)
        rig.tx(OP_RW, len(payload), payload, split=(HDR_SIZE, HDR_SIZE + 3, 100))
        sent += payload
    rig.mux._tx_hint = None
    rig.mux.process_tx(rig.act)
    assert len(rig.dqs[1].get_used()) == 20
    got = b""
    while len(got) < len(sent):
        got += rig.host.recv(1 << 16)
    assert got == sent and rig.conn.fwd_cnt == len(sent)
    rig.close()


def test_header_only_packets_are_taken_in_c(rig):
    rig.tx(OP_CREDIT_UPDATE, fwd_cnt=77, buf_alloc=4096)
    rig.tx(OP_SHUTDOWN, fwd_cnt=77, buf_alloc=4096)  # flags 0: nothing changes
    rig.mux.process_tx(rig.act)
    assert len(rig.dqs[1].get_used()) == 2
    assert rig.conn.peer_buf_alloc == 4096 and rig.conn.peer_fwd_cnt == 77
    assert rig.mux.metrics.tx_packets == 2 and not rig.mux.control


def test_a_credit_starved_stream_is_read_in_the_turn_its_credit_arrives(rig):
    rig.conn.update_peer_credit(4096, 0)
    rig.conn.rx_cnt = 4096  # the guest holds all it may
    for _ in range(4):
        rig.dqs[0].add([], [HDR_SIZE + 4096])
    rig.host.sendall(b"w" * 5000)
    assert not rig.mux.poll_mask(rig.conn) & select.POLLIN  # out of credit: not polled
    rig.tx(OP_CREDIT_UPDATE, fwd_cnt=4096, buf_alloc=4096)
    rig.mux.process_tx(rig.act)
    rig.mux.process_rx(rig.act)  # no poll round in between
    assert sum(h.len for h, _ in rig.rx_packets() if h.op == OP_RW) == 4096


def test_credit_update_when_the_guest_sees_less_than_half_free():
    c = Connection(-1, 1, 2, ConnState.ESTABLISHED)
    assert not c.wants_credit_update()  # nothing drained
    c.fwd_cnt = CONN_BUF_ALLOC // 2  # forwarded half: the guest still sees half free
    assert not c.wants_credit_update()
    c.fwd_cnt += 1
    assert c.wants_credit_update()
    c.last_fwd_cnt_sent = c.fwd_cnt
    assert not c.wants_credit_update()
    c.fwd_cnt += 100
    c.tx_buf += bytes(CONN_BUF_ALLOC // 2)  # received but still buffered counts as sent by the guest
    assert c.wants_credit_update()


class ScriptedMuxer(Muxer):
    """A muxer whose process_tx / process_rx report what the test sets in `tx` / `rx`
    (whether the driver wants an interrupt), and whose rx work is something the guest
    waits for when `urgent` is set, for the device loop's interrupt policy."""

    tx = rx = urgent = False

    def process_tx(self, act):
        return self.tx

    def process_rx(self, act):
        self.rx_urgent = self.urgent
        return self.rx


def scripted_loop(tmp_path):
    from devices.virtio.vsock.device_loop import DeviceLoop

    dev = VsockDevice(CID, str(tmp_path / "v.sock"))
    dev.mux = ScriptedMuxer(CID, dev.uds_path, dev.mux.listener, dev.metrics)
    act = Activated(None, [None, None, None], [-1, -1, -1], EventLoop(), None, lambda e: None)
    return dev, DeviceLoop(dev, act)


def test_one_interrupt_per_turn(tmp_path):
    dev, loop = scripted_loop(tmp_path)
    signals: list = []
    dev.mux.tx = dev.mux.rx = dev.mux.urgent = True
    dev.mux.tx_pending = dev.mux.tx_data = True
    signals += [1] if loop.turn() else []
    assert len(signals) == 1
    dev.mux.tx = dev.mux.rx = False
    signals += [1] if loop.turn() else []
    assert len(signals) == 1
    dev.close()


def test_header_only_tx_completions_ride_on_the_next_rx_interrupt(tmp_path):
    from devices.virtio.vsock import device_loop

    dev, loop = scripted_loop(tmp_path)
    mux = dev.mux
    signals: list = []
    mux.tx, mux.rx = True, False
    mux.tx_pending, mux.tx_data = True, False  # a RESPONSE, say
    signals += [1] if loop.turn() else []
    assert not signals and loop.irq_owed is not None and loop.timeout_ms() <= device_loop.TX_IRQ_DELAY * 1000 + 1
    mux.rx = mux.urgent = True  # the next turn has stream data for the guest: one interrupt for both
    mux.tx_pending = True
    signals += [1] if loop.turn() else []
    assert len(signals) == 1 and loop.irq_owed is None
    mux.rx = mux.urgent = False
    mux.tx_pending = True
    loop.turn()  # deferred again...
    assert len(signals) == 1
    mux.tx = False
    loop.irq_owed -= 1  # ...until its time is up: a turn with nothing else raises it
    signals += [1] if loop.turn() else []
    assert len(signals) == 2 and loop.irq_owed is None
    mux.tx_data = True  # tx that moved stream data is never deferred
    mux.tx = mux.tx_pending = True
    signals += [1] if loop.turn() else []
    assert len(signals) == 3
    dev.close()


def test_a_host_close_waits_a_moment_for_a_reconnect(tmp_path):
    """A SHUTDOWN from a host close is all a turn has for the guest: its interrupt waits
    up to CLOSE_IRQ_DELAY; a reply the guest waits for (a reconnect's REQUEST) in that
    time takes it along at once; without one it is raised when the time is up."""
    from devices.virtio.vsock import device_loop

    dev, loop = scripted_loop(tmp_path)
    mux = dev.mux
    mux.rx, mux.tx_data = True, False  # used rx buffers, none urgent: the SHUTDOWN
    assert not loop.turn() and loop.timeout_ms() <= device_loop.CLOSE_IRQ_DELAY * 1000 + 1
    mux.rx = False  # the REQUEST's buffer needs no interrupt of its own (EVENT_IDX)...
    mux.urgent = True  # ...but the guest waits for it: the owed interrupt goes now
    assert loop.turn() and loop.irq_owed is None
    mux.rx, mux.urgent = True, False  # another lone close
    assert not loop.turn()
    loop.irq_owed -= 1
    mux.rx = False
    assert loop.turn() and loop.irq_owed is None
    dev.close()


# -- hostile chains through the C paths -------------------------------------------------------
SETTINGS = settings(max_examples=int(os.environ.get("MM_FUZZ_EXAMPLES", "200")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@SETTINGS
@given(packets=st.lists(st.tuples(st.sampled_from([OP_RW, OP_RW, OP_CREDIT_UPDATE, OP_RESPONSE, 9]),
                                  st.integers(0, 3000), st.integers(0, 3000),
                                  st.lists(st.integers(0, 3100), max_size=4),
                                  st.sampled_from([900, 901])), max_size=12),
       rx=st.lists(st.lists(st.integers(0, 5000), min_size=1, max_size=3), max_size=10),
       host=st.integers(0, 20000))
def test_hostile_chains(packets, rx, host):
    """Header lengths that lie, odd splits, other streams' ports, rx chains of any shape:
    the C paths never raise or fail the device, never send more than the valid payloads,
    and never write past a chain's writable length."""
    r = Rig(size=128)
    try:
        valid = b""
        for op, claimed, actual, split, port in packets:
            payload = os.urandom(actual)
            r.tx(op, claimed, payload, split=split, src_port=port)
            if op == OP_RW and port == 900 and claimed <= actual and claimed <= CONN_BUF_ALLOC:
                valid += payload[:claimed]
        for sizes in rx:
            r.dqs[0].add([], sizes)
        if host:
            r.host.sendall(os.urandom(host))
            r.mux.rx_ready[r.conn.key] = r.conn
        r.mux.process_tx(r.act)
        r.mux.process_rx(r.act)
        assert not r.failures
        for head, n in r.dqs[0].get_used():
            assert n <= sum(size for _, size, flags in r.dqs[0].completed[head] if flags & DESC_F_WRITE)
        r.host.setblocking(False)
        got = b""
        try:
            while chunk := r.host.recv(1 << 16):
                got += chunk
        except (BlockingIOError, ConnectionResetError):  # reset streams close with data unread
            pass
        if r.conn.key in r.mux.conns:
            assert got == valid
    finally:
        r.close()


def test_local_port_allocation_skips_ports_in_use(rig):
    taken = Connection(socket.socket(socket.AF_UNIX).detach(), (1 << 30) + 1, 77, ConnState.ESTABLISHED)
    rig.mux._add(taken)  # a guest stream to host port 2^30+1, beside rig.conn on 2^30
    assert rig.mux._alloc_port() == (1 << 30) + 2
    rig.mux._remove(taken)
    rig.mux.next_port = (1 << 30) + 1
    assert rig.mux._alloc_port() == (1 << 30) + 1


def test_a_line_that_comes_just_after_the_accept_is_taken_in_the_same_turn(tmp_path):
    """The device thread often accepts between a client's connect and its write of the
    line: the turn looks once more (retry_fresh) before it fills rx, so the REQUEST
    leaves with that turn's interrupt rather than a poll round later."""
    path = str(tmp_path / "v.sock")
    mux = Muxer(CID, path, open_listener(path), VsockMetrics())
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    mux.on_ready(mux.listener_fd, select.POLLIN)
    assert list(mux.clients) == mux.fresh and not mux.control  # accepted, no line yet
    client.sendall(b"CONNECT 77\n")
    mux.retry_fresh()
    assert not mux.clients and not mux.fresh
    (req,) = map(Header.unpack, mux.control)
    assert req.op == OP_REQUEST and req.dst_port == 77
    mux.retry_fresh()  # once only: a client still silent waits for poll
    mux.close_streams()
    mux.listener.close()
    client.close()
