"""The host side of virtio-vsock: Unix sockets multiplexed onto the rx/tx queues.

Runs entirely on the device's own thread (device_loop.pyx). Each loop turn: poll the
queue eventfds, the listener and every stream socket; take the guest's tx packets
(REQUEST, RESPONSE, RW, CREDIT_*, SHUTDOWN, RST); then fill the guest's rx buffers,
control packets first and stream data after, never beyond a stream's peer credit. A
socket is only polled for input while the guest has credit and rx buffers for it, so a
slow guest back-pressures the host peer instead of growing our memory.

Compiled (muxer.pxd types its state), and the per-connect steps avoid Python calls:
under the lab's emulated CPU every page of code and data a turn touches costs, and a
host client's connect waits for two such turns.
"""

import collections
import os
import select

from ..device import pop_valid
from . import (
    CONN_BUF_ALLOC, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE,
    OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, RX_QUEUE, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TX_QUEUE, TYPE_STREAM,
)
from . import _fast
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from devices.virtio._queue cimport PEEK_CHAIN, SplitQueue
from devices.virtio.vsock._fast cimport (
    HDR_LEN, MAX_IOV, S_BLOCKED, S_CREDIT, S_DATA, S_EMPTY, S_EOF, S_ERROR, S_FULL, S_OK, Header as WireHeader,
    decode, iovec, pack as _pack, pack_into as _pack_into, rx_stream_c, tx_packet,
)
from devices.virtio.vsock.connection cimport Connection, stream_key
from devices.virtio.vsock.metrics cimport VsockMetrics
from devices.virtio.vsock.streams cimport StreamTable
from devices.virtio.vsock.wire cimport monotonic, send_ok as _send_ok

from .connection import ConnState
from .packet import HDR_SIZE, Header

cdef int POLLIN = select.POLLIN, POLLOUT = select.POLLOUT, POLLHUP = select.POLLHUP, POLLERR = select.POLLERR
MAX_STREAMS = 2048
MAX_PENDING_CONTROL = 4096  # stop reading tx while this many replies wait for rx buffers
# Seconds a host-initiated stream waits for the guest's RESPONSE. A guest without a
# listener answers RST at once; a busy one (100 connects at once in a loaded nested lab)
# took over 2 s, so the wait is generous.
CONNECT_TIMEOUT = 10.0


cdef object ESTABLISHED = ConnState.ESTABLISHED, CONNECTING = ConnState.CONNECTING
cdef int CONNECT_PENDING = _fast.CONNECT_PENDING, CONNECT_BAD = _fast.CONNECT_BAD
cdef int F_WRITE = 2  # VIRTQ_DESC_F_WRITE

# _tx_turn_fast() / _rx_fast() results
cdef enum:
    T_AGAIN = 0   # packets were taken: go on
    T_EMPTY = 1   # the queue is empty
    T_PYTHON = 2  # the next chain is for the generic path (pop())
    R_DONE = 0    # nothing more is ready
    R_NO_ROOM = 1  # the guest must post rx buffers
    R_PYTHON = 2


cdef class Muxer(StreamTable):
    """Streams (the StreamTable it is), pending host clients and queued control packets
    of one device."""

    def __init__(self, guest_cid: int, uds_path: str, listener, metrics) -> None:
        # listener: the device's listening socket.socket (listener.open_listener)
        self.guest_cid, self.uds_path = guest_cid, uds_path
        self.listener = listener
        self.listener_fd = listener.fileno()
        StreamTable.__init__(self, metrics)
        self.clients = {}  # accepted fd -> its line so far, waiting for `CONNECT <port>\n`
        self.fresh = []  # clients accepted this turn before their line came (see retry_fresh)
        self.control = collections.deque()  # packed headers for the guest
        self.rx_room = True
        self._tx_hint = None  # stream of the last RW packet (C path)
        self._tx_skip = None  # (stream, bytes of the next packet sent)
        self.tx_pending = True  # tx packets may wait without a kick (we stopped early)
        self.tx_data = False
        # This turn queued something the guest waits for: a reply (REQUEST, RESPONSE, RST,
        # CREDIT_UPDATE) or stream data. A host close's SHUTDOWN alone is not: its
        # interrupt may wait a moment for a reconnect to ride along (device_loop.turn).
        self.rx_urgent = False
        # Accept every pending client (until EAGAIN) when the listener is ready, or only
        # one. The device loop asks for one unless the listener was ready at its previous
        # wake-up too: a lone client (the usual connect) then costs no accept() that
        # fails with EAGAIN, and a burst is taken whole from its second wake-up on.
        self.accept_burst = True

    cpdef expire(self, double now):
        """Give up on host-initiated streams the guest never answered (no listener)."""
        for key, deadline in list(self.connecting.items()):
            if deadline <= now:
                self.metrics.connect_failures += 1
                self._reset(self.conns[key])

    # -- poll interest ---------------------------------------------------------------
    cpdef int poll_mask(self, Connection c):
        """What to poll stream `c`'s socket for (the device loop polls the listener and
        the clients waiting for their line too): input while the guest has rx buffers and
        credit for it (and it is not queued for reading already), output while guest data
        or a half-close waits for the socket."""
        cdef int mask = 0
        if (self.rx_room and c.state is ESTABLISHED and not c.host_eof and c.peer_credit() > 0
                and c.key not in self.rx_ready):
            mask = POLLIN
        if c.tx_buf or c.shut_wr_pending:
            mask |= POLLOUT
        return mask

    cpdef on_ready(self, int fd, int events):
        cdef Connection c
        if fd == self.listener_fd:
            self._accept()
        elif fd in self.clients:
            self._read_connect_line(fd)
        elif fd in self.by_fd:
            c = self.by_fd[fd]
            if events & POLLOUT:
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
            if events & POLLHUP:
                c.host_hup = True
            if events & (POLLIN | POLLHUP | POLLERR) and c.state is ESTABLISHED and not c.host_eof:
                self.rx_ready[c.key] = c

    # -- host side: new streams ------------------------------------------------------
    cdef _accept(self):
        # In C: the pending clients accepted and, as a client usually sends `CONNECT
        # <port>` with its connect, each one's line read at once rather than a poll round
        # later (connect latency); hopeless clients are already closed there.
        clients, bad = _fast.accept_connects(self.listener_fd, -1 if self.accept_burst else 1)
        if bad:
            self.metrics.connect_failures += bad
        for fd, port, rest in clients:
            if port == CONNECT_PENDING:
                self.clients[fd] = rest
                self.fresh.append(fd)
            else:
                self._connect_client(fd, port, rest)

    cpdef retry_fresh(self):
        """Look once more, late in the turn, at clients accepted in it before their line
        came: a client writes it just after its connect, and the device thread often wakes
        in between. Found now, its REQUEST leaves with this turn's interrupt instead of
        costing a poll round of its own; still missing, poll reports it as usual."""
        fresh, self.fresh = self.fresh, []
        for fd in fresh:
            if fd in self.clients:
                self._read_connect_line(fd)

    cdef _read_connect_line(self, int fd):
        """More of a pending client's line (poll said it is readable)."""
        port, rest = _fast.take_connect(fd, self.clients[fd])
        if port == CONNECT_PENDING:
            self.clients[fd] = rest
            return
        del self.clients[fd]
        if port < 0:
            if port == CONNECT_BAD:
                self.metrics.connect_failures += 1
            os.close(fd)
            return
        self._connect_client(fd, port, rest)

    cdef _connect_client(self, int fd, long long port, bytes rest):
        """Client `fd` asked for guest port `port`: REQUEST it (`rest`: stream bytes
        that came with the line, for the guest once it answers)."""
        cdef Connection c
        if len(self.conns) >= MAX_STREAMS:
            self.metrics.connect_failures += 1
            os.close(fd)
            return
        c = Connection(fd, self._alloc_port(), port, CONNECTING)
        c.rx_prefix = rest
        self.connecting[c.key] = monotonic() + CONNECT_TIMEOUT
        self._add(c)
        self.metrics.host_connects += 1
        self.control.append(self._hdr(c, OP_REQUEST))
        self.rx_urgent = True

    def _drop_client(self, fd: int) -> None:
        if self.clients.pop(fd, None) is not None:
            os.close(fd)

    cdef _reset(self, Connection c):
        """Tear a stream down and tell the guest."""
        self.control.append(self._hdr(c, OP_RST))
        self.rx_urgent = True
        self.metrics.resets_sent += 1
        self._remove(c)

    cdef bytes _hdr(self, Connection c, int op, unsigned int length=0, unsigned int flags=0):
        """A packed header of stream `c` (packed at once: the queue takes bytes)."""
        if op == OP_CREDIT_UPDATE or op == OP_RW or op == OP_RESPONSE or op == OP_REQUEST:
            c.last_fwd_cnt_sent = c.fwd_cnt
        return _pack(HOST_CID, self.guest_cid, c.local_port, c.peer_port, length, op, flags, c.buf_alloc,
                     <uint32_t>c.fwd_cnt)

    cdef _rst_to(self, unsigned int src_port, unsigned int dst_port):
        """RST for a packet from guest port `src_port` to host port `dst_port` that has no stream."""
        self.metrics.resets_sent += 1
        self.control.append(_pack(HOST_CID, self.guest_cid, dst_port, src_port, 0, OP_RST, 0, CONN_BUF_ALLOC, 0))
        self.rx_urgent = True

    # -- guest → host (tx queue) -----------------------------------------------------
    def _count_invalid_packet(self) -> None:
        self.metrics.invalid_packets += 1

    cpdef bint process_tx(self, act) except? -1:
        """Take the guest's tx packets. True if the driver wants an interrupt for them
        (the caller raises one for the whole turn: virtio-mmio has one line)."""
        cdef int how
        q = act.queues[TX_QUEUE]
        if q is None:
            return False
        cdef bint fast = isinstance(q, SplitQueue)
        self.tx_pending = False
        self.tx_data = False  # whether this call moved stream data (see device_loop)
        while True:
            if len(self.control) >= MAX_PENDING_CONTROL:
                self.tx_pending = True  # resumed once the guest has taken our replies
                break
            if fast:
                how = self._tx_turn_fast(q)
                if how == T_AGAIN:
                    continue
                if how == T_EMPTY:
                    break
            chain = pop_valid(q, self._count_invalid_packet)
            if chain is None:
                break
            self._tx_packet(chain)
            q.add_used(chain.head, 0)
        return q.needs_notification()

    cdef int _tx_turn_fast(self, SplitQueue q) except -1:
        """The C paths of one tx turn: T_AGAIN if packets were taken, T_EMPTY if the queue
        is, T_PYTHON to leave the next packet to pop() (a partly sent packet's rest, a
        chain the C side does not take)."""
        cdef unsigned int ports[2]
        cdef int stop
        if self._tx_fast(q):
            return T_AGAIN
        if self._tx_skip is not None:
            return T_PYTHON  # the rest of a packet the socket took in part: buffered there
        stop = self._tx_headers(q, min(64, MAX_PENDING_CONTROL - len(self.control)), ports)
        if stop == S_FULL:
            return T_AGAIN
        if stop == S_EMPTY:
            # An empty queue after header-only packets needs no second look: its
            # avail_event is already published (consume), so the guest kicks for whatever
            # it adds next.
            return T_EMPTY
        if stop == S_DATA and self._tx_hint != stream_key(ports[1], ports[0]):
            self._tx_hint = stream_key(ports[1], ports[0])  # data of another stream: its C path
            if self._tx_fast(q):
                return T_AGAIN
        return T_PYTHON

    cdef int _tx_headers(self, SplitQueue q, int limit, unsigned int *ports) except -1:
        """Take and handle up to `limit` header-only tx packets (REQUEST, RESPONSE, SHUTDOWN,
        CREDIT_*, RST) straight from the ring, no Python object per packet. Returns S_FULL
        (took `limit`), S_EMPTY, S_DATA (the next packet has payload: `ports` gets its
        src and dst port) or S_SLOW (the next chain is for pop())."""
        cdef iovec iov[MAX_IOV]
        cdef uint8_t hdr[HDR_LEN]
        cdef uint16_t head
        cdef WireHeader h
        cdef int niov, rc, taken = 0
        while taken < limit:
            niov = 0
            rc = tx_packet(q, 0, hdr, &head, iov, &niov)
            if rc != S_OK:
                return rc
            decode(hdr, &h)
            if h.len:
                ports[0], ports[1] = h.src_port, h.dst_port
                return S_DATA
            q.consume()
            q.put_used(head, 0)
            taken += 1
            self._tx_header(h.src_cid, h.dst_cid, h.src_port, h.dst_port, h.len, h.type, h.op, h.flags,
                            h.buf_alloc, h.fwd_cnt, None)
        return S_FULL

    cdef bint _tx_fast(self, q) except? -1:
        """RW packets of the stream the last one belonged to, sent to its socket in C
        (_fast.tx_stream). True if any were consumed; False leaves the next packet to
        the Python path (another stream or op, a socket that took a packet in part)."""
        cdef Connection c
        if self._tx_hint is None:
            return False
        c = self.conns.get(self._tx_hint)
        if c is None or c.state is not ESTABLISHED or c.tx_buf or c.shut_wr_pending:
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
        if stop == S_BLOCKED:
            self._tx_skip = (c.key, partial)  # the Python path buffers the rest of that packet
            c.fwd_cnt += partial
            return False
        return packets > 0

    cdef _tx_packet(self, chain):
        if chain.readable_len < HDR_SIZE:
            self.metrics.invalid_packets += 1
            return
        h = Header.unpack(chain.read(0, HDR_SIZE))
        if h.len > chain.readable_len - HDR_SIZE:
            self.metrics.invalid_packets += 1
            if h.op != OP_RST:
                self._rst_to(h.src_port, h.dst_port)
            return
        self._tx_header(h.src_cid, h.dst_cid, h.src_port, h.dst_port, h.len, h.type, h.op, h.flags,
                        h.buf_alloc, h.fwd_cnt, chain)

    cdef _tx_header(self, unsigned long long src_cid, unsigned long long dst_cid, unsigned int src_port,
                    unsigned int dst_port, unsigned int length, unsigned int type_, unsigned int op,
                    unsigned int flags, unsigned int buf_alloc, unsigned int fwd_cnt, chain):
        """One tx packet's header fields; `chain` holds its payload (None: a header-only packet)."""
        cdef Connection c
        if src_cid != self.guest_cid or dst_cid != HOST_CID or type_ != TYPE_STREAM:
            self.metrics.invalid_packets += 1
            if op != OP_RST:
                self._rst_to(src_port, dst_port)
            return
        self.metrics.tx_packets += 1
        c = self.conns.get(stream_key(dst_port, src_port))
        if op == OP_REQUEST:
            if c is not None:
                self._rst_to(src_port, dst_port)
            else:
                self._guest_connect(src_port, dst_port, buf_alloc, fwd_cnt)
            return
        if c is None:
            if op != OP_RST:
                self._rst_to(src_port, dst_port)
            return
        if op == OP_RST:
            self._remove(c)  # gone: its credit fields no longer matter
            return
        self._peer_credit(c, buf_alloc, fwd_cnt)
        self._tx_op(c, op, length, flags, chain)

    cdef _peer_credit(self, Connection c, unsigned int buf_alloc, unsigned int fwd_cnt):
        """The guest's credit fields; a stream that had run out reads its socket this very
        turn (it was left out of the poll set, so waiting for poll would cost a turn)."""
        cdef bint starved = c.peer_credit() <= 0
        c.update_peer_credit(buf_alloc, fwd_cnt)
        if starved and c.state is ESTABLISHED and not c.host_eof and c.peer_credit() > 0:
            self.rx_ready[c.key] = c

    cdef _tx_op(self, Connection c, unsigned int op, unsigned int length, unsigned int flags, chain):
        """Any op but REQUEST and RST (_tx_header took those) on existing stream `c`."""
        cdef unsigned int skip
        if op == OP_RESPONSE:
            if c.state is not CONNECTING:
                self._reset(c)
                return
            c.state = ESTABLISHED
            self.connecting.pop(c.key, None)
            if _send_ok(c.fd, c.local_port) < 0:
                self._reset(c)
                return
            if c.rx_prefix:
                self.rx_ready[c.key] = c  # what came with the CONNECT line goes first
        elif op == OP_RW:
            if c.state is not ESTABLISHED or length > c.buf_alloc - c.unforwarded():
                self._reset(c)  # data before the handshake, or beyond the credit we gave
                return
            self.metrics.tx_bytes += length
            self.tx_data = True
            skip = 0
            if self._tx_skip is not None and self._tx_skip[0] == c.key:
                skip = min(self._tx_skip[1], length)  # sent by the C path already
            self._tx_skip = None
            self._tx_hint = c.key
            views = chain.readable_views(HDR_SIZE + skip, length - skip) if length else []
            if not c.send_to_host(views):
                self._reset(c)
                return
            if c.wants_credit_update():
                self._credit_update(c)
        elif op == OP_CREDIT_REQUEST:
            self._credit_update(c)
        elif op == OP_SHUTDOWN:
            self._guest_shutdown(c, flags)
        elif op != OP_CREDIT_UPDATE:
            self._reset(c)

    cdef _credit_update(self, Connection c):
        self.metrics.credit_updates_sent += 1
        self.control.append(self._hdr(c, OP_CREDIT_UPDATE))
        self.rx_urgent = True

    cdef _guest_shutdown(self, Connection c, unsigned int flags):
        c.peer_shutdown |= flags & (SHUTDOWN_RCV | SHUTDOWN_SEND)
        if flags & SHUTDOWN_SEND:
            c.shut_wr_pending = True
            c.flush()
        if c.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND:
            if c.flush() and c.tx_buf:
                return  # its data is not all out yet: on_ready() resets once it is
            self._reset(c)  # the guest is done both ways: RST completes the close

    cdef _guest_connect(self, unsigned int src_port, unsigned int dst_port, unsigned int buf_alloc,
                        unsigned int fwd_cnt):
        cdef Connection c
        cdef int fd
        if len(self.conns) >= MAX_STREAMS:
            self.metrics.connect_failures += 1
            self._rst_to(src_port, dst_port)
            return
        try:
            fd = _fast.connect_unix(os.fsencode(f"{self.uds_path}_{dst_port}"))
        except OSError:
            self.metrics.connect_failures += 1
            self._rst_to(src_port, dst_port)
            return
        c = Connection(fd, dst_port, src_port, ESTABLISHED)
        c.update_peer_credit(buf_alloc, fwd_cnt)
        self._add(c)
        self.metrics.guest_connects += 1
        self.control.append(self._hdr(c, OP_RESPONSE))
        self.rx_urgent = True

    # -- host → guest (rx queue) -----------------------------------------------------
    cpdef bint process_rx(self, act) except? -1:
        """Fill the guest's rx buffers: control packets, then stream data. True if the
        driver wants an interrupt for them."""
        cdef int how, sent
        q = act.queues[RX_QUEUE]
        if q is None or not (self.control or self.rx_ready):
            return False
        cdef bint fast = isinstance(q, SplitQueue)
        while self.control or self.rx_ready:
            if fast and self.control:
                if self._rx_control(q):
                    continue
            elif fast:
                how = self._rx_fast(q)
                if how == R_NO_ROOM:
                    self.rx_room = False
                    break
                if how == R_DONE:
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

    cdef int _rx_control(self, SplitQueue q) except -1:
        """Queued control packets (44-byte headers) into the next rx chains, in order; how
        many went (0: no fitting chain, the generic path or more buffers are needed)."""
        cdef uint16_t head
        cdef uint32_t count
        cdef uint8_t *p
        cdef int done = 0
        cdef bytes h
        while self.control:
            if q.peek(&head, &count) != PEEK_CHAIN or q._lens[0] < HDR_LEN or not q._flags[0] & F_WRITE:
                break
            p = q.translate(q._addrs[0], q._lens[0])
            if p == NULL:
                break
            h = self.control.popleft()
            memcpy(p, <const char *>h, HDR_LEN)
            q.consume()
            q.put_used(head, HDR_LEN)
            done += 1
        self.metrics.rx_packets += done
        return done

    cdef int _rx_fast(self, q) except -1:
        """Stream data for the guest in C (_fast.rx_stream_c), stream by stream, within each
        stream's credit. R_DONE: nothing more is ready; R_NO_ROOM: the guest must post
        buffers; R_PYTHON: the first ready stream needs the generic path (EOF, an error,
        a chain the C path does not take)."""
        cdef Connection c
        cdef long long credit
        cdef uint8_t hdr[HDR_LEN]
        cdef uint64_t packets, got
        cdef int stop
        cdef SplitQueue sq = q
        for key, c in list(self.rx_ready.items()):
            credit = c.peer_credit()
            if credit <= 0:
                del self.rx_ready[key]
                continue
            if c.rx_prefix:
                return R_PYTHON  # bytes that came with the CONNECT line: _fill() sends them
            _pack_into(hdr, HOST_CID, self.guest_cid, c.local_port, c.peer_port, 0, OP_RW, 0, c.buf_alloc,
                       <uint32_t>c.fwd_cnt)
            packets = got = 0
            if credit > 0xFFFFFFFF:
                credit = 0xFFFFFFFF
            with nogil:  # a copy of stream data: worth letting the GIL go for
                stop = rx_stream_c(sq, c.fd, hdr, <uint32_t>credit, &packets, &got)
            if packets:
                self.rx_urgent = True
                c.last_fwd_cnt_sent = c.fwd_cnt  # the guest learnt our fwd_cnt from these
                c.rx_cnt = (c.rx_cnt + got) & 0xFFFFFFFF
                self.metrics.rx_bytes += got
                self.metrics.rx_packets += packets
            if stop == S_EMPTY:
                return R_NO_ROOM
            if stop == S_BLOCKED or stop == S_CREDIT:
                del self.rx_ready[key]
                continue
            if stop == S_EOF:
                self._host_eof(c)
                return R_DONE  # the SHUTDOWN waits in `control`
            if stop == S_ERROR:
                self._reset(c)
                return R_DONE
            return R_PYTHON
        return R_DONE

    cdef object _fill(self, chain):
        """Write one packet into `chain`; None if nothing could be sent after all."""
        cdef Connection c
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
                self.rx_urgent = True
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
            self.rx_urgent = True
            chain.write(0, self._hdr(c, OP_RW, got))
            return HDR_SIZE + got
        return None

    cpdef _host_eof(self, Connection c):
        """The host end sends no more. If it only half-closed it may still read:
        SHUTDOWN(SEND). If it closed its socket (POLLHUP) it reads nothing either:
        SHUTDOWN(SEND|RCV), as a Linux host's own vsock close() sends, so the guest's
        kernel answers RST at once instead of waiting for its application to close and
        then for our RST (one round trip and one interrupt less per closed stream)."""
        self.rx_ready.pop(c.key, None)
        c.host_eof = True
        flags = SHUTDOWN_SEND | (SHUTDOWN_RCV if c.host_hup else 0)
        self.control.append(self._hdr(c, OP_SHUTDOWN, 0, flags))

    cpdef close_streams(self):
        """Drop every stream and pending client (device reset)."""
        for c in list(self.conns.values()):
            self._remove(c)
        for fd in list(self.clients):
            self._drop_client(fd)
        self.fresh.clear()
        self.control.clear()
        self.rx_ready.clear()
