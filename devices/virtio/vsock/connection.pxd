# The stream's fields, typed, for the muxer and the device thread (compiled code reads
# them as C struct members; Python sees the same names as attributes).
cdef class Connection:
    cdef public int fd
    cdef public unsigned int local_port, peer_port
    cdef public object key  # stream_key(local_port, peer_port)
    cdef public object state
    cdef public unsigned int buf_alloc
    cdef public unsigned long long fwd_cnt, last_fwd_cnt_sent
    cdef public unsigned int rx_cnt, peer_buf_alloc, peer_fwd_cnt
    cdef public bytearray tx_buf
    cdef public int peer_shutdown
    cdef public bint host_eof, host_hup, shut_wr_pending
    cdef public bytes rx_prefix

    cpdef update_peer_credit(self, unsigned int buf_alloc, unsigned int fwd_cnt)
    cpdef long long peer_credit(self)
    cpdef Py_ssize_t unforwarded(self)
    cpdef bint send_to_host(self, list views)
    cpdef bint flush(self)
    cpdef close(self)
    cpdef bint wants_credit_update(self)


cpdef unsigned long long stream_key(unsigned int local_port, unsigned int peer_port)
