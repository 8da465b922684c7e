"""The host side of virtio-vsock: Unix sockets multiplexed onto the rx/tx queues.

Runs entirely on the device's own thread (see `device.py`). Each loop turn: poll the
queue eventfds, the listener and every stream socket; take the guest's tx packets
(REQUEST, RESPONSE, RW, CREDIT_*, SHUTDOWN, RST); then fill the guest's rx buffers,
control packets first and stream data after, never beyond a stream's peer credit. A
socket is only polled for input while the guest has credit and rx buffers for it, so a
slow guest back-pressures the host peer instead of growing our memory.
"""
from __future__ import annotations

import collections
import itertools
import os
import select
import socket
import stat
import time

from .. import _queue
from ..device import pop_valid
from . import (
    CONN_BUF_ALLOC, FIRST_LOCAL_PORT, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE,
    OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, RX_QUEUE, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TX_QUEUE, TYPE_STREAM, VsockError,
)
from . import _fast
from .connection import Connection, ConnState
from .packet import HDR, HDR_SIZE, Header

POLLIN, POLLOUT = select.POLLIN, select.POLLOUT
MAX_STREAMS = 2048
MAX_PENDING_CONTROL = 4096  # stop reading tx while this many replies wait for rx buffers
# Seconds a host-initiated stream waits for the guest's RESPONSE. A guest without a
# listener answers RST at once; a busy one (100 connects at once in a loaded nested lab)
# took over 2 s, so the wait is generous.
CONNECT_TIMEOUT = 10.0


def open_listener(path: str) -> socket.socket:
    """Listen on `path`, replacing a stale socket file nobody listens on."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise VsockError(f"vsock socket {path} is in use by another process")
            except ConnectionRefusedError:
                os.unlink(path)
            finally:
                probe.close()
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        s.bind(path)
        s.listen(512)
    except OSError as e:
        s.close()
        raise VsockError(f"cannot listen on vsock socket {path}: {e.strerror}") from None
    return s


class Muxer:
    """Streams, pending host clients and queued control packets of one device."""

    def __init__(self, guest_cid: int, uds_path: str, listener: socket.socket, metrics) -> None:
        self.guest_cid, self.uds_path = guest_cid, uds_path
        self.listener = listener
        self.listener_fd = listener.fileno()
        self.metrics = metrics
        self.conns: dict[tuple[int, int], Connection] = {}
        self._local_ports: dict[int, int] = {}  # host port -> its streams (no O(n) scan)
        self.by_fd: dict[int, Connection] = {}
        self.clients: dict[int, bytes] = {}  # accepted fd -> its line so far, waiting for `CONNECT <port>\n`
        self.fresh: list[int] = []  # clients accepted this turn before their line came (see retry_fresh)
        self.control: collections.deque[bytes] = collections.deque()  # packed headers for the guest
        self.rx_ready: dict[tuple[int, int], Connection] = {}
        self.rx_room = True
        self.next_port = FIRST_LOCAL_PORT
        self.connecting: dict[tuple[int, int], float] = {}  # host-initiated stream -> deadline
        self._tx_hint: tuple[int, int] | None = None  # stream of the last RW packet (C path)
        self._tx_skip: tuple[tuple[int, int], int] | None = None  # bytes of the next packet sent
        self.tx_pending = True  # tx packets may wait without a kick (we stopped early)
        self.tx_data = False
        self.host_closed = False  # a host peer ended its stream in this turn (device._run looks again)

    def next_deadline(self) -> float | None:
        return min(self.connecting.values()) if self.connecting else None

    def expire(self, now: float) -> None:
        """Give up on host-initiated streams the guest never answered (no listener)."""
        for key, deadline in list(self.connecting.items()):
            if deadline <= now:
                self.metrics.connect_failures += 1
                self._reset(self.conns[key])

    # -- poll interest ---------------------------------------------------------------
    def interest(self) -> dict[int, int]:
        """fd -> poll mask for every socket that has one right now (the others: nothing to wait for)."""
        want = dict.fromkeys(self.clients, POLLIN)
        want[self.listener_fd] = POLLIN
        rx_room, rx_ready, established = self.rx_room, self.rx_ready, ConnState.ESTABLISHED
        for fd, c in self.by_fd.items():
            mask = 0
            if (rx_room and c.state is established and not c.host_eof
                    and c.key not in rx_ready and c.peer_credit() > 0):
                mask = POLLIN
            if c.tx_buf or c.shut_wr_pending:
                mask |= POLLOUT
            if mask:
                want[fd] = mask
        return want

    def on_ready(self, fd: int, events: int) -> None:
        if fd == self.listener_fd:
            self._accept()
        elif fd in self.clients:
            self._read_connect_line(fd)
        elif fd in self.by_fd:
            c = self.by_fd[fd]
            if events & select.POLLOUT:
                if not c.flush():
                    self._reset(c)
                    return
                if not c.tx_buf and c.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND:
                    self._reset(c)  # a guest that closed both ways: the last of its data is out
                    return
                # A guest that filled our buffer is out of credit and sends nothing until
                # told what drained: without this update both ends would wait forever.
                if c.wants_credit_update():
                    self._credit_update(c)
            if events & select.POLLHUP:
                c.host_hup = True
            if (events & (select.POLLIN | select.POLLHUP | select.POLLERR)
                    and c.state is ConnState.ESTABLISHED and not c.host_eof):
                self.rx_ready[c.key] = c

    # -- host side: new streams ------------------------------------------------------
    def _accept(self) -> None:
        # In C: every pending client accepted and, as a client usually sends `CONNECT
        # <port>` with its connect, its line read at once rather than a poll round later
        # (connect latency); hopeless clients are already closed there.
        clients, bad = _fast.accept_connects(self.listener_fd)
        self.metrics.connect_failures += bad
        for fd, port, rest in clients:
            if port == _fast.CONNECT_PENDING:
                self.clients[fd] = rest
                self.fresh.append(fd)
            else:
                self._connect_client(fd, port, rest)

    def retry_fresh(self) -> None:
        """Look once more, late in the turn, at clients accepted in it before their line
        came: a client writes it just after its connect, and the device thread often wakes
        in between. Found now, its REQUEST leaves with this turn's interrupt instead of
        costing a poll round of its own; still missing, poll reports it as usual."""
        fresh, self.fresh = self.fresh, []
        for fd in fresh:
            if fd in self.clients:
                self._read_connect_line(fd)

    def _read_connect_line(self, fd: int) -> None:
        """More of a pending client's line (poll said it is readable)."""
        port, rest = _fast.take_connect(fd, self.clients[fd])
        if port == _fast.CONNECT_PENDING:
            self.clients[fd] = rest
            return
        del self.clients[fd]
        if port < 0:
            if port == _fast.CONNECT_BAD:
                self.metrics.connect_failures += 1
            os.close(fd)
            return
        self._connect_client(fd, port, rest)

    def _connect_client(self, fd: int, port: int, rest: bytes) -> None:
        """Client `fd` asked for guest port `port`: REQUEST it (`rest`: stream bytes
        that came with the line, for the guest once it answers)."""
        if len(self.conns) >= MAX_STREAMS:
            self.metrics.connect_failures += 1
            os.close(fd)
            return
        c = Connection(fd, self._alloc_port(), port, ConnState.CONNECTING)
        c.rx_prefix = rest
        self.connecting[c.key] = time.monotonic() + CONNECT_TIMEOUT
        self._add(c)
        self.metrics.host_connects += 1
        self.control.append(self._hdr(c, OP_REQUEST))

    def _drop_client(self, fd: int) -> None:
        if self.clients.pop(fd, None) is not None:
            os.close(fd)

    def _alloc_port(self) -> int:
        while True:
            port = self.next_port
            self.next_port = FIRST_LOCAL_PORT if self.next_port >= 0xFFFFFFFF else self.next_port + 1
            if port not in self._local_ports:
                return port

    def _add(self, c: Connection) -> None:
        self.conns[c.key] = c
        self._local_ports[c.local_port] = self._local_ports.get(c.local_port, 0) + 1
        self.by_fd[c.fd] = c
        self.metrics.open_streams = len(self.conns)

    def _remove(self, c: Connection) -> None:
        if self.conns.pop(c.key, None) is not None:
            left = self._local_ports[c.local_port] - 1
            if left:
                self._local_ports[c.local_port] = left
            else:
                del self._local_ports[c.local_port]
        self.connecting.pop(c.key, None)
        self.by_fd.pop(c.fd, None)
        self.rx_ready.pop(c.key, None)
        c.close()
        self.metrics.open_streams = len(self.conns)

    def _reset(self, c: Connection) -> None:
        """Tear a stream down and tell the guest."""
        self.control.append(self._hdr(c, OP_RST))
        self.metrics.resets_sent += 1
        self._remove(c)

    def _hdr(self, c: Connection, op: int, length: int = 0, flags: int = 0) -> bytes:
        """A packed header of stream `c` (packed at once: the queue takes bytes)."""
        if op in (OP_CREDIT_UPDATE, OP_RW, OP_RESPONSE, OP_REQUEST):
            c.last_fwd_cnt_sent = c.fwd_cnt
        return HDR.pack(HOST_CID, self.guest_cid, c.local_port, c.peer_port, length, TYPE_STREAM, op, flags,
                        c.buf_alloc & 0xFFFFFFFF, c.fwd_cnt & 0xFFFFFFFF)

    def _rst_for(self, h: Header) -> None:
        self.metrics.resets_sent += 1
        self.control.append(HDR.pack(HOST_CID, self.guest_cid, h.dst_port, h.src_port, 0, TYPE_STREAM, OP_RST,
                                     0, CONN_BUF_ALLOC, 0))

    # -- guest → host (tx queue) -----------------------------------------------------
    def _count_invalid_packet(self) -> None:
        self.metrics.invalid_packets += 1

    def process_tx(self, act) -> bool:
        """Take the guest's tx packets. True if the driver wants an interrupt for them
        (the caller raises one for the whole turn: virtio-mmio has one line)."""
        q = act.queues[TX_QUEUE]
        if q is None:
            return False
        fast = isinstance(q, _queue.SplitQueue)
        self.tx_pending = False
        self.tx_data = False  # whether this call moved stream data (see device._turn)
        while True:
            if len(self.control) >= MAX_PENDING_CONTROL:
                self.tx_pending = True  # resumed once the guest has taken our replies
                break
            if fast:
                how = self._tx_turn_fast(q)
                if how == "again":
                    continue
                if how == "empty":
                    break
            chain = pop_valid(q, self._count_invalid_packet)
            if chain is None:
                break
            self._tx_packet(chain)
            q.add_used(chain.head, 0)
        return q.needs_notification()

    def _tx_turn_fast(self, q) -> str:
        """The C paths of one tx turn: "again" if packets were taken, "empty" if the queue
        is, "python" to leave the next packet to pop() (a partly sent packet's rest, a
        chain the C side does not take)."""
        if self._tx_fast(q):
            return "again"
        if self._tx_skip is not None:
            return "python"  # the rest of a packet the socket took in part: buffered there
        room = min(64, MAX_PENDING_CONTROL - len(self.control))
        stop, headers, ports = _fast.tx_headers(q, room)
        for fields in headers:
            self._tx_header(Header(*fields), None)
        if headers:
            # An empty queue after them needs no second look: its avail_event is already
            # published (consume), so the guest kicks for whatever it adds next.
            return "empty" if stop == _fast.STOP_EMPTY else "again"
        if stop == _fast.STOP_EMPTY:
            return "empty"
        if stop == _fast.STOP_DATA and self._tx_hint != (ports[1], ports[0]):
            self._tx_hint = (ports[1], ports[0])  # data of another stream: its C path
            if self._tx_fast(q):
                return "again"
        return "python"

    def _tx_fast(self, q) -> bool:
        """RW packets of the stream the last one belonged to, sent to its socket in C
        (_fast.tx_stream). True if any were consumed; False leaves the next packet to
        the Python path (another stream or op, a socket that took a packet in part)."""
        c = self.conns.get(self._tx_hint) if self._tx_hint is not None else None
        if c is None or c.state is not ConnState.ESTABLISHED or c.tx_buf or c.shut_wr_pending:
            return False
        stop, packets, nbytes, partial, buf_alloc, fwd_cnt = _fast.tx_stream(
            q, c.fd, self.guest_cid, c.peer_port, c.local_port, c.buf_alloc)
        if packets:
            self.tx_data = True
            self._peer_credit(c, buf_alloc, fwd_cnt)
            c.fwd_cnt += nbytes
            self.metrics.tx_packets += packets
            self.metrics.tx_bytes += nbytes
            if c.wants_credit_update():
                self._credit_update(c)
        if stop == _fast.STOP_BLOCKED:
            self._tx_skip = (c.key, partial)  # the Python path buffers the rest of that packet
            c.fwd_cnt += partial
            return False
        return packets > 0

    def _tx_packet(self, chain) -> None:
        if chain.readable_len < HDR_SIZE:
            self.metrics.invalid_packets += 1
            return
        h = Header.unpack(chain.read(0, HDR_SIZE))
        if h.len > chain.readable_len - HDR_SIZE:
            self.metrics.invalid_packets += 1
            if h.op != OP_RST:
                self._rst_for(h)
            return
        self._tx_header(h, chain)

    def _tx_header(self, h: Header, chain) -> None:
        """One tx packet; `chain` holds its payload (None: a header-only packet)."""
        if h.src_cid != self.guest_cid or h.dst_cid != HOST_CID or h.type != TYPE_STREAM:
            self.metrics.invalid_packets += 1
            if h.op != OP_RST:
                self._rst_for(h)
            return
        self.metrics.tx_packets += 1
        c = self.conns.get((h.dst_port, h.src_port))
        if h.op == OP_REQUEST:
            if c is not None:
                self._rst_for(h)
            else:
                self._guest_connect(h)
            return
        if c is None:
            if h.op != OP_RST:
                self._rst_for(h)
            return
        if h.op == OP_RST:
            self._remove(c)  # gone: its credit fields no longer matter
            return
        self._peer_credit(c, h.buf_alloc, h.fwd_cnt)
        self._tx_op(c, h, chain)

    def _peer_credit(self, c: Connection, buf_alloc: int, fwd_cnt: int) -> None:
        """The guest's credit fields; a stream that had run out reads its socket this very
        turn (it was left out of the poll set, so waiting for poll would cost a turn)."""
        starved = c.peer_credit() <= 0
        c.update_peer_credit(buf_alloc, fwd_cnt)
        if starved and c.state is ConnState.ESTABLISHED and not c.host_eof and c.peer_credit() > 0:
            self.rx_ready[c.key] = c

    def _tx_op(self, c: Connection, h: Header, chain) -> None:
        """Any op but REQUEST and RST (_tx_header took those) on existing stream `c`."""
        if h.op == OP_RESPONSE:
            if c.state is not ConnState.CONNECTING:
                self._reset(c)
                return
            c.state = ConnState.ESTABLISHED
            self.connecting.pop(c.key, None)
            try:
                _fast.send_bytes(c.fd, b"OK %d\n" % c.local_port)
            except OSError:
                self._reset(c)
                return
            if c.rx_prefix:
                self.rx_ready[c.key] = c  # what came with the CONNECT line goes first
        elif h.op == OP_RW:
            if c.state is not ConnState.ESTABLISHED or h.len > c.buf_alloc - c.unforwarded():
                self._reset(c)  # data before the handshake, or beyond the credit we gave
                return
            self.metrics.tx_bytes += h.len
            self.tx_data = True
            skip = 0
            if self._tx_skip is not None and self._tx_skip[0] == c.key:
                skip = min(self._tx_skip[1], h.len)  # sent by the C path already
            self._tx_skip = None
            self._tx_hint = c.key
            views = chain.readable_views(HDR_SIZE + skip, h.len - skip) if h.len else []
            if not c.send_to_host(views):
                self._reset(c)
                return
            if c.wants_credit_update():
                self._credit_update(c)
        elif h.op == OP_CREDIT_REQUEST:
            self._credit_update(c)
        elif h.op == OP_SHUTDOWN:
            self._guest_shutdown(c, h.flags)
        elif h.op != OP_CREDIT_UPDATE:
            self._reset(c)

    def _credit_update(self, c: Connection) -> None:
        self.metrics.credit_updates_sent += 1
        self.control.append(self._hdr(c, OP_CREDIT_UPDATE))

    def _guest_shutdown(self, c: Connection, flags: int) -> None:
        c.peer_shutdown |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND)
        if flags & SHUTDOWN_SEND:
            c.shut_wr_pending = True
            c.flush()
        if c.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND:
            if c.flush() and c.tx_buf:
                return  # its data is not all out yet: on_ready() resets once it is
            self._reset(c)  # the guest is done both ways: RST completes the close

    def _guest_connect(self, h: Header) -> None:
        if len(self.conns) >= MAX_STREAMS:
            self.metrics.connect_failures += 1
            self._rst_for(h)
            return
        try:
            fd = _fast.connect_unix(os.fsencode(f"{self.uds_path}_{h.dst_port}"))
        except OSError:
            self.metrics.connect_failures += 1
            self._rst_for(h)
            return
        c = Connection(fd, h.dst_port, h.src_port, ConnState.ESTABLISHED)
        c.update_peer_credit(h.buf_alloc, h.fwd_cnt)
        self._add(c)
        self.metrics.guest_connects += 1
        self.control.append(self._hdr(c, OP_RESPONSE))

    # -- host → guest (rx queue) -----------------------------------------------------
    def process_rx(self, act) -> bool:
        """Fill the guest's rx buffers: control packets, then stream data. True if the
        driver wants an interrupt for them."""
        q = act.queues[RX_QUEUE]
        if q is None or not (self.control or self.rx_ready):
            return False
        fast = isinstance(q, _queue.SplitQueue)
        while self.control or self.rx_ready:
            if fast and self.control:
                sent = _fast.rx_control(q, list(itertools.islice(self.control, 64)))
                for _ in range(sent):
                    self.control.popleft()
                self.metrics.rx_packets += sent
                if sent:
                    continue
            elif fast:
                how = self._rx_fast(q)
                if how == "no-room":
                    self.rx_room = False
                    break
                if how == "done":
                    continue
            chain = pop_valid(q, self._count_invalid_packet)
            if chain is None:
                self.rx_room = False
                break
            if chain.writable_len < HDR_SIZE:
                self.metrics.invalid_packets += 1
                q.add_used(chain.head, 0)
                continue
            used = self._fill(chain)
            if used is None:
                q.undo_pop()
                break
            q.add_used(chain.head, used)
            self.metrics.rx_packets += 1
        return q.needs_notification()

    def _rx_fast(self, q) -> str:
        """Stream data for the guest in C (_fast.rx_stream), stream by stream, within each
        stream's credit. "done": nothing more is ready; "no-room": the guest must post
        buffers; "python": the first ready stream needs the Python path (EOF, an error,
        a chain the C path does not take)."""
        for key, c in list(self.rx_ready.items()):
            credit = c.peer_credit()
            if credit <= 0:
                del self.rx_ready[key]
                continue
            if c.rx_prefix:
                return "python"  # bytes that came with the CONNECT line: _fill() sends them
            header = HDR.pack(HOST_CID, self.guest_cid, c.local_port, c.peer_port, 0, TYPE_STREAM, OP_RW, 0,
                              c.buf_alloc & 0xFFFFFFFF, c.fwd_cnt & 0xFFFFFFFF)
            stop, packets, got = _fast.rx_stream(q, c.fd, header, credit)
            if packets:
                c.last_fwd_cnt_sent = c.fwd_cnt  # the guest learnt our fwd_cnt from these
                c.rx_cnt = (c.rx_cnt + got) & 0xFFFFFFFF
                self.metrics.rx_bytes += got
                self.metrics.rx_packets += packets
            if stop == _fast.STOP_EMPTY:
                return "no-room"
            if stop in (_fast.STOP_BLOCKED, _fast.STOP_CREDIT):
                del self.rx_ready[key]
                continue
            if stop == _fast.STOP_EOF:
                self._host_eof(c)
                return "done"  # the SHUTDOWN waits in `control`
            if stop == _fast.STOP_ERROR:
                self._reset(c)
                return "done"
            return "python"
        return "done"

    def _fill(self, chain) -> int | None:
        """Write one packet into `chain`; None if nothing could be sent after all."""
        if self.control:
            chain.write(0, self.control.popleft())
            return HDR_SIZE
        space = chain.writable_len - HDR_SIZE
        if space <= 0:
            return None
        for key, c in list(self.rx_ready.items()):
            n = min(space, c.peer_credit())
            if n <= 0:
                del self.rx_ready[key]
                continue
            if c.rx_prefix:
                got = chain.write(HDR_SIZE, c.rx_prefix[:n])
                c.rx_prefix = c.rx_prefix[got:]
                c.rx_cnt = (c.rx_cnt + got) & 0xFFFFFFFF
                self.metrics.rx_bytes += got
                chain.write(0, self._hdr(c, OP_RW, got))
                return HDR_SIZE + got
            try:
                got = os.readv(c.fd, chain.writable_views(HDR_SIZE, n))
            except BlockingIOError:
                del self.rx_ready[key]
                continue
            except OSError:
                self._reset(c)
                return self._fill(chain) if self.control else None
            if got == 0:
                self._host_eof(c)
                chain.write(0, self.control.pop())
                return HDR_SIZE
            c.rx_cnt = (c.rx_cnt + got) & 0xFFFFFFFF
            self.metrics.rx_bytes += got
            chain.write(0, self._hdr(c, OP_RW, got))
            return HDR_SIZE + got
        return None

    def _host_eof(self, c: Connection) -> None:
        """The host end sends no more. If it only half-closed it may still read:
        SHUTDOWN(SEND). If it closed its socket (POLLHUP) it reads nothing either:
        SHUTDOWN(SEND|RCV), as a Linux host's own vsock close() sends, so the guest's
        kernel answers RST at once instead of waiting for its application to close and
        then for our RST (one round trip and one interrupt less per closed stream)."""
        self.rx_ready.pop(c.key, None)
        c.host_eof = True
        self.host_closed = True
        flags = SHUTDOWN_SEND | (SHUTDOWN_RCV if c.host_hup else 0)
        self.control.append(self._hdr(c, OP_SHUTDOWN, 0, flags))

    def close_streams(self) -> None:
        """Drop every stream and pending client (device reset)."""
        for c in list(self.conns.values()):
            self._remove(c)
        for fd in list(self.clients):
            self._drop_client(fd)
        self.fresh.clear()
        self.control.clear()
        self.rx_ready.clear()

