"""One vsock stream between a guest port and a host Unix socket, with credit flow control.

Towards the guest we send at most the peer's advertised free space
(`buf_alloc - (rx_cnt - fwd_cnt)`, u32 arithmetic); from the guest we accept at most our
`CONN_BUF_ALLOC` unforwarded bytes, count what reaches the host socket in `fwd_cnt`
and tell the guest with CREDIT_UPDATE once its view of our free space (what it sent
minus the fwd_cnt we last told it) falls below half the buffer: a guest sending 64 KiB
packets into 256 KiB hears once per ~192 KiB, before it runs dry, and each update costs
the guest an interrupt.
"""
import enum

from posix.unistd cimport close as c_close

from . import CONN_BUF_ALLOC, _fast


class ConnState(enum.Enum):
    CONNECTING = "connecting"  # host-initiated, waiting for the guest's RESPONSE
    ESTABLISHED = "established"


cpdef unsigned long long stream_key(unsigned int local_port, unsigned int peer_port):
    """A stream's key in the muxer's tables: its two ports in one int (hashed and compared
    faster than a tuple, and made without one on every tx packet)."""
    return (<unsigned long long>local_port << 32) | peer_port


cdef class Connection:
    """A stream on host socket `fd` (a raw fd, owned: no socket object, whose creation
    costs a getsockname() per connect); `local_port` is the host-side port, `peer_port`
    the guest's, `key` the two in one int (stream_key; fixed for the stream's life). A compiled class: the
    device thread reads its fields several times per stream and turn (connection.pxd)."""

    def __init__(self, int fd, unsigned int local_port, unsigned int peer_port, state) -> None:
        self.fd = fd
        self.local_port, self.peer_port = local_port, peer_port
        self.key = stream_key(local_port, peer_port)
        self.state = state
        self.buf_alloc = CONN_BUF_ALLOC
        self.fwd_cnt = 0
        self.last_fwd_cnt_sent = 0
        self.rx_cnt = 0
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        self.tx_buf = bytearray()  # guest data the host socket has not taken yet
        self.peer_shutdown = 0
        self.host_eof = False
        self.host_hup = False  # the host peer closed its socket (POLLHUP), not just half-closed
        self.shut_wr_pending = False
        self.rx_prefix = b""  # host bytes read with the CONNECT line, for the guest before the socket's

    cpdef update_peer_credit(self, unsigned int buf_alloc, unsigned int fwd_cnt):
        self.peer_buf_alloc, self.peer_fwd_cnt = buf_alloc, fwd_cnt

    cpdef long long peer_credit(self):
        """Bytes we may still send to the guest."""
        cdef unsigned int in_flight = self.rx_cnt - self.peer_fwd_cnt  # u32 arithmetic
        cdef long long credit = <long long>self.peer_buf_alloc - in_flight
        return credit if credit > 0 else 0

    cpdef Py_ssize_t unforwarded(self):
        return len(self.tx_buf)

    cpdef bint send_to_host(self, list views):
        """Pass guest data on to the host socket, buffering what it cannot take now.
        Returns False if the host socket failed (the stream must be reset)."""
        cdef Py_ssize_t sent
        if self.tx_buf:
            for v in views:
                self.tx_buf += v
            return self.flush()
        try:
            sent = _fast.send_views(self.fd, views) if views else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        self.fwd_cnt += sent
        for v in views:
            if sent >= len(v):
                sent -= len(v)
                continue
            self.tx_buf += v[sent:]
            sent = 0
        return True

    cpdef bint flush(self):
        """Write buffered guest data to the host socket; False on a socket error."""
        cdef Py_ssize_t n
        if self.tx_buf:
            try:
                n = _fast.send_bytes(self.fd, self.tx_buf)
            except BlockingIOError:
                n = 0
            except OSError:
                return False
            del self.tx_buf[:n]
            self.fwd_cnt += n
        if not self.tx_buf and self.shut_wr_pending:
            self.shut_wr_pending = False
            _fast.shutdown_wr(self.fd)
        return True

    cpdef close(self):
        if self.fd >= 0:
            c_close(self.fd)  # in C: once per stream, and os.close's argument parsing is not free
            self.fd = -1

    cpdef bint wants_credit_update(self):
        cdef long long unacked
        if self.fwd_cnt == self.last_fwd_cnt_sent:
            return False  # nothing drained since the guest last heard
        unacked = <long long>(self.fwd_cnt - self.last_fwd_cnt_sent) + len(self.tx_buf)  # in the guest's eyes
        return <long long>self.buf_alloc - unacked < self.buf_alloc // 2
