# What the muxer (muxer.pyx) takes from _fast.pyx at C level: the wire header (read and
# written), the tx chain walk, the rx stream loop and the stop reasons.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from devices.virtio._queue cimport SplitQueue

cdef extern from "sys/uio.h" nogil:
    cdef struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t readv(int fd, const iovec *iov, int iovcnt)

cdef struct Header:  # packet.Header's fields, in its order
    uint64_t src_cid, dst_cid
    uint32_t src_port, dst_port, len
    uint16_t type, op
    uint32_t flags, buf_alloc, fwd_cnt

cdef enum:
    S_EMPTY = 0    # no chain (rx: the guest must post buffers; tx: no packet)
    S_SLOW = 1     # the next chain / packet is for the Python path
    S_BLOCKED = 2  # rx: nothing to read now; tx: the socket takes no more (see `partial`)
    S_EOF = 3      # rx: the host end closed (the Python path sends SHUTDOWN)
    S_CREDIT = 4   # rx: the guest's credit is used up
    S_ERROR = 5    # the socket failed (the Python path resets the stream)
    S_DATA = 6     # the muxer's tx header loop: the next packet carries payload
    S_FULL = 7     # the muxer's tx header loop: took its limit of packets
    S_OK = 100     # _rx_chain / tx_packet: the chain is for C
    MAX_IOV = 256  # iovecs per readv/sendmsg (Linux's IOV_MAX is 1024)
    HDR_LEN = 44

cdef int tx_packet(SplitQueue q, uint16_t ahead, uint8_t *hdr, uint16_t *head, iovec *iov,
                   int *niov) noexcept nogil
cdef void decode(const uint8_t *hdr, Header *h) noexcept nogil
cdef bytes pack(uint64_t src_cid, uint64_t dst_cid, uint32_t src_port, uint32_t dst_port, uint32_t length,
                uint16_t op, uint32_t flags, uint32_t buf_alloc, uint32_t fwd_cnt)
cdef void pack_into(uint8_t *p, uint64_t src_cid, uint64_t dst_cid, uint32_t src_port, uint32_t dst_port,
                    uint32_t length, uint16_t op, uint32_t flags, uint32_t buf_alloc, uint32_t fwd_cnt) noexcept nogil
cdef int rx_stream_c(SplitQueue q, int fd, uint8_t *hdr, uint32_t credit, uint64_t *packets,
                     uint64_t *total) noexcept nogil
