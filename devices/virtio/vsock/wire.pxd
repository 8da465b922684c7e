# The host side's bytes in C (wire.pyx), for the muxer and the device loop.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef double monotonic() noexcept nogil
cdef int send_ok(int fd, unsigned int port) noexcept nogil
cdef bytes pack(uint64_t src_cid, uint64_t dst_cid, uint32_t src_port, uint32_t dst_port, uint32_t length,
                uint16_t op, uint32_t flags, uint32_t buf_alloc, uint32_t fwd_cnt)
cdef void pack_into(uint8_t *p, uint64_t src_cid, uint64_t dst_cid, uint32_t src_port, uint32_t dst_port,
                    uint32_t length, uint16_t op, uint32_t flags, uint32_t buf_alloc, uint32_t fwd_cnt) noexcept nogil
