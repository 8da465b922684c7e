# The muxer's state, typed, for the device thread (devices/virtio/vsock/device_loop.pyx).
from devices.virtio._queue cimport SplitQueue
from devices.virtio.vsock.connection cimport Connection
from devices.virtio.vsock.metrics cimport VsockMetrics
from devices.virtio.vsock.streams cimport StreamTable


cdef class Muxer(StreamTable):
    cdef public unsigned long long guest_cid
    cdef public str uds_path
    cdef public object listener
    cdef public int listener_fd
    cdef public dict clients
    cdef public list fresh
    cdef public object control
    cdef public bint rx_room, tx_pending, tx_data, rx_urgent, accept_burst
    cdef public object _tx_hint, _tx_skip

    cpdef expire(self, double now)
    cpdef int poll_mask(self, Connection c)
    cpdef on_ready(self, int fd, int events)
    cdef _accept(self)
    cpdef retry_fresh(self)
    cdef _read_connect_line(self, int fd)
    cdef _connect_client(self, int fd, long long port, bytes rest)
    cdef _reset(self, Connection c)
    cdef bytes _hdr(self, Connection c, int op, unsigned int length=*, unsigned int flags=*)
    cdef _rst_to(self, unsigned int src_port, unsigned int dst_port)
    cpdef bint process_tx(self, act) except? -1
    cdef int _tx_turn_fast(self, SplitQueue q) except -1
    cdef int _tx_headers(self, SplitQueue q, int limit, unsigned int *ports) except -1
    cdef bint _tx_fast(self, q) except? -1
    cdef _tx_packet(self, chain)
    cdef _tx_header(self, unsigned long long src_cid, unsigned long long dst_cid, unsigned int src_port,
                    unsigned int dst_port, unsigned int length, unsigned int type_, unsigned int op,
                    unsigned int flags, unsigned int buf_alloc, unsigned int fwd_cnt, chain)
    cdef _peer_credit(self, Connection c, unsigned int buf_alloc, unsigned int fwd_cnt)
    cdef _tx_op(self, Connection c, unsigned int op, unsigned int length, unsigned int flags, chain)
    cdef _credit_update(self, Connection c)
    cdef _guest_shutdown(self, Connection c, unsigned int flags)
    cdef _guest_connect(self, unsigned int src_port, unsigned int dst_port, unsigned int buf_alloc,
                        unsigned int fwd_cnt)
    cpdef bint process_rx(self, act) except? -1
    cdef int _rx_control(self, SplitQueue q) except -1
    cdef int _rx_fast(self, q) except -1
    cdef object _fill(self, chain)
    cpdef _host_eof(self, Connection c)
    cpdef close_streams(self)

