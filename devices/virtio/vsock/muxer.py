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
import errno
import os
import select
import socket
import stat
import time

from ..device import pop_valid
from . import (
    CONN_BUF_ALLOC, FIRST_LOCAL_PORT, HOST_CID, MAX_CONNECT_LINE, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE,
    OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, RX_QUEUE, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TX_QUEUE, TYPE_STREAM, VsockError,
)
from .connection import Connection, ConnState
from .packet import HDR_SIZE, Header

MAX_STREAMS = 2048
MAX_PENDING_CONTROL = 4096  # stop reading tx while this many replies wait for rx buffers
CONNECT_TIMEOUT = 2.0  # seconds a host-initiated stream waits for the guest's RESPONSE


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
        self.metrics = metrics
        self.conns: dict[tuple[int, int], Connection] = {}
        self.by_fd: dict[int, Connection] = {}
        self.clients: dict[int, socket.socket] = {}  # accepted, waiting for `CONNECT <port>`
        self.control: collections.deque[Header] = collections.deque()
        self.rx_ready: dict[tuple[int, int], Connection] = {}
        self.rx_room = True
        self.next_port = FIRST_LOCAL_PORT
        self.connecting: dict[tuple[int, int], float] = {}  # host-initiated stream -> deadline

    def next_deadline(self) -> float | None:
        return min(self.connecting.values(), default=None)

    def expire(self, now: float) -> None:
        """Give up on host-initiated streams the guest never answered (no listener)."""
        for key, deadline in list(self.connecting.items()):
            if deadline <= now:
                self.metrics.connect_failures += 1
                self._reset(self.conns[key])

    # -- poll interest ---------------------------------------------------------------
    def interest(self) -> dict[int, int]:
        """fd -> poll mask for every socket right now."""
        want = {self.listener.fileno(): select.POLLIN}
        for fd in self.clients:
            want[fd] = select.POLLIN
        for fd, c in self.by_fd.items():
            mask = 0
            if (c.state is ConnState.ESTABLISHED and not c.host_eof and self.rx_room
                    and c.key not in self.rx_ready and c.peer_credit() > 0):
                mask |= select.POLLIN
            if c.tx_buf or c.shut_wr_pending:
                mask |= select.POLLOUT
            want[fd] = mask
        return want

    def on_ready(self, fd: int, events: int) -> None:
        if fd == self.listener.fileno():
            self._accept()
        elif fd in self.clients:
            self._read_connect_line(self.clients[fd])
        elif fd in self.by_fd:
            c = self.by_fd[fd]
            if events & select.POLLOUT and not c.flush():
                self._reset(c)
                return
            if (events & (select.POLLIN | select.POLLHUP | select.POLLERR)
                    and c.state is ConnState.ESTABLISHED and not c.host_eof):
                self.rx_ready[c.key] = c

    # -- host side: new streams ------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                s, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            s.setblocking(False)
            self.clients[s.fileno()] = s

    def _read_connect_line(self, s: socket.socket) -> None:
        try:
            peek = s.recv(MAX_CONNECT_LINE, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            peek = b""
        nl = peek.find(b"\n")
        if nl < 0:
            if not peek or len(peek) >= MAX_CONNECT_LINE:
                self._drop_client(s)
            return
        line = s.recv(nl + 1)
        port = _parse_connect(line)
        if port is None or len(self.conns) >= MAX_STREAMS:
            self.metrics.connect_failures += 1
            self._drop_client(s)
            return
        del self.clients[s.fileno()]
        local = self._alloc_port()
        c = Connection(s, local, port, ConnState.CONNECTING)
        self.connecting[c.key] = time.monotonic() + CONNECT_TIMEOUT
        self._add(c)
        self.metrics.host_connects += 1
        self.control.append(self._hdr(c, OP_REQUEST))

    def _drop_client(self, s: socket.socket) -> None:
        self.clients.pop(s.fileno(), None)
        s.close()

    def _alloc_port(self) -> int:
        while True:
            port = self.next_port
            self.next_port = FIRST_LOCAL_PORT if self.next_port >= 0xFFFFFFFF else self.next_port + 1
            if not any(k[0] == port for k in self.conns):
                return port

    def _add(self, c: Connection) -> None:
        self.conns[c.key] = c
        self.by_fd[c.sock.fileno()] = c
        self.metrics.open_streams = len(self.conns)

    def _remove(self, c: Connection) -> None:
        self.conns.pop(c.key, None)
        self.connecting.pop(c.key, None)
        self.by_fd.pop(c.sock.fileno(), None)
        self.rx_ready.pop(c.key, None)
        c.sock.close()
        self.metrics.open_streams = len(self.conns)

    def _reset(self, c: Connection) -> None:
        """Tear a stream down and tell the guest."""
        self.control.append(self._hdr(c, OP_RST))
        self.metrics.resets_sent += 1
        self._remove(c)

    def _hdr(self, c: Connection, op: int, length: int = 0, flags: int = 0) -> Header:
        if op in (OP_CREDIT_UPDATE, OP_RW, OP_RESPONSE, OP_REQUEST):
            c.last_fwd_cnt_sent = c.fwd_cnt
        return Header(HOST_CID, self.guest_cid, c.local_port, c.peer_port, length, TYPE_STREAM, op, flags,
                      c.buf_alloc, c.fwd_cnt)

    def _rst_for(self, h: Header) -> None:
        self.metrics.resets_sent += 1
        self.control.append(Header(HOST_CID, self.guest_cid, h.dst_port, h.src_port, 0, TYPE_STREAM, OP_RST,
                                   0, CONN_BUF_ALLOC, 0))

    # -- guest → host (tx queue) -----------------------------------------------------
    def _count_invalid_packet(self) -> None:
        self.metrics.invalid_packets += 1

    def process_tx(self, act) -> None:
        q = act.queues[TX_QUEUE]
        if q is None:
            return
        while len(self.control) < MAX_PENDING_CONTROL:
            chain = pop_valid(q, self._count_invalid_packet)
            if chain is None:
                break
            self._tx_packet(chain)
            q.add_used(chain.head, 0)
        if q.needs_notification():
            act.signal_used(TX_QUEUE)

    def _tx_packet(self, chain) -> None:
        if chain.readable_len < HDR_SIZE:
            self.metrics.invalid_packets += 1
            return
        h = Header.unpack(chain.read(0, HDR_SIZE))
        if h.len > chain.readable_len - HDR_SIZE or h.src_cid != self.guest_cid or h.dst_cid != HOST_CID \
                or h.type != TYPE_STREAM:
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
        c.update_peer_credit(h.buf_alloc, h.fwd_cnt)
        self._tx_op(c, h, chain)

    def _tx_op(self, c: Connection, h: Header, chain) -> None:
        if h.op == OP_RST:
            self._remove(c)
        elif h.op == OP_RESPONSE:
            if c.state is not ConnState.CONNECTING:
                self._reset(c)
                return
            c.state = ConnState.ESTABLISHED
            self.connecting.pop(c.key, None)
            try:
                c.sock.send(f"OK {c.local_port}\n".encode())
            except OSError:
                self._reset(c)
        elif h.op == OP_RW:
            if c.state is not ConnState.ESTABLISHED or h.len > c.buf_alloc - c.unforwarded():
                self._reset(c)  # data before the handshake, or beyond the credit we gave
                return
            self.metrics.tx_bytes += h.len
            if not c.send_to_host(chain.readable_views(HDR_SIZE, h.len)):
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
            c.flush()
            self._reset(c)  # the guest is done both ways: RST completes the close

    def _guest_connect(self, h: Header) -> None:
        if len(self.conns) >= MAX_STREAMS:
            self.metrics.connect_failures += 1
            self._rst_for(h)
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            s.connect(f"{self.uds_path}_{h.dst_port}")
        except OSError as e:
            s.close()
            if e.errno != errno.EINPROGRESS:
                self.metrics.connect_failures += 1
                self._rst_for(h)
                return
        c = Connection(s, h.dst_port, h.src_port, ConnState.ESTABLISHED)
        c.update_peer_credit(h.buf_alloc, h.fwd_cnt)
        self._add(c)
        self.metrics.guest_connects += 1
        self.control.append(self._hdr(c, OP_RESPONSE))

    # -- host → guest (rx queue) -----------------------------------------------------
    def process_rx(self, act) -> None:
        q = act.queues[RX_QUEUE]
        if q is None or not (self.control or self.rx_ready):
            return
        while self.control or self.rx_ready:
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
        if q.needs_notification():
            act.signal_used(RX_QUEUE)

    def _fill(self, chain) -> int | None:
        """Write one packet into `chain`; None if nothing could be sent after all."""
        if self.control:
            chain.write(0, self.control.popleft().pack())
            return HDR_SIZE
        space = chain.writable_len - HDR_SIZE
        if space <= 0:
            return None
        for key, c in list(self.rx_ready.items()):
            n = min(space, c.peer_credit())
            if n <= 0:
                del self.rx_ready[key]
                continue
            try:
                got = c.sock.recvmsg_into(chain.writable_views(HDR_SIZE, n))[0]
            except BlockingIOError:
                del self.rx_ready[key]
                continue
            except OSError:
                self._reset(c)
                return self._fill(chain) if self.control else None
            if got == 0:  # host EOF: it sends no more but may still read (half-close)
                del self.rx_ready[key]
                c.host_eof = True
                chain.write(0, self._hdr(c, OP_SHUTDOWN, 0, SHUTDOWN_SEND).pack())
                return HDR_SIZE
            c.rx_cnt = (c.rx_cnt + got) & 0xFFFFFFFF
            self.metrics.rx_bytes += got
            chain.write(0, self._hdr(c, OP_RW, got).pack())
            return HDR_SIZE + got
        return None

    def close_streams(self) -> None:
        """Drop every stream and pending client (device reset)."""
        for c in list(self.conns.values()):
            self._remove(c)
        for s in list(self.clients.values()):
            self._drop_client(s)
        self.control.clear()
        self.rx_ready.clear()


def _parse_connect(line: bytes) -> int | None:
    parts = line.strip().split(b" ")
    if len(parts) != 2 or parts[0] != b"CONNECT" or not parts[1].isdigit():
        return None
    port = int(parts[1])
    return port if port <= 0xFFFFFFFF else None
