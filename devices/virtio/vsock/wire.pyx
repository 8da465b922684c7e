"""The host side's bytes, built in C for the device thread: a stream packet's 44-byte
header (packet.HDR's layout), the host client's `OK <port>` line, and the monotonic
clock, each without a Python call (the lab's emulated CPU charges every page of code a
per-connect step runs, and struct.pack, printf or time.monotonic are many)."""
from libc.errno cimport errno, EINTR
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

DEF HDR_LEN = 44

cdef extern from "sys/socket.h" nogil:
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL


cdef double monotonic() noexcept nogil:
    """time.monotonic() without a Python call (the same clock)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef int send_ok(int fd, unsigned int port) noexcept nogil:
    """The host client's `OK <port>\n`, formatted and sent in C (once per connect: no
    bytes object or buffer view); 0, or -1 if the socket took none of it."""
    cdef char line[16]  # "OK " + at most 10 digits + "\n"
    cdef char digits[10]
    cdef int n = 0, k = 0
    cdef ssize_t r
    while True:  # the digits by hand: printf's machinery is many pages of code to run once
        digits[k] = 48 + port % 10
        k += 1
        port //= 10
        if port == 0:
            break
    line[0], line[1], line[2] = 79, 75, 32  # "OK "
    n = 3
    while k:
        k -= 1
        line[n] = digits[k]
        n += 1
    line[n] = 10
    n += 1
    r = send(fd, line, n, MSG_DONTWAIT | MSG_NOSIGNAL)
    while r < 0 and errno == EINTR:
        r = send(fd, line, n, MSG_DONTWAIT | MSG_NOSIGNAL)
    return 0 if r > 0 else -1


cdef bytes pack(uint64_t src_cid, uint64_t dst_cid, uint32_t src_port, uint32_t dst_port, uint32_t length,
                 uint16_t op, uint32_t flags, uint32_t buf_alloc, uint32_t fwd_cnt):
    """A stream packet's 44-byte header (packet.HDR's layout, little-endian as x86 is),
    built in C: the device makes one per control packet and per rx batch."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, HDR_LEN)
    pack_into(<uint8_t *>PyBytes_AS_STRING(out), src_cid, dst_cid, src_port, dst_port, length, op, flags,
               buf_alloc, fwd_cnt)
    return out


cdef void pack_into(uint8_t *p, uint64_t src_cid, uint64_t dst_cid, uint32_t src_port, uint32_t dst_port,
                     uint32_t length, uint16_t op, uint32_t flags, uint32_t buf_alloc, uint32_t fwd_cnt) noexcept nogil:
    cdef uint16_t type_ = 1  # TYPE_STREAM (a Python constant: not readable without the GIL)
    memcpy(p, &src_cid, 8)
    memcpy(p + 8, &dst_cid, 8)
    memcpy(p + 16, &src_port, 4)
    memcpy(p + 20, &dst_port, 4)
    memcpy(p + 24, &length, 4)
    memcpy(p + 28, &type_, 2)
    memcpy(p + 30, &op, 2)
    memcpy(p + 32, &flags, 4)
    memcpy(p + 36, &buf_alloc, 4)
    memcpy(p + 40, &fwd_cnt, 4)
# _tx_turn_fast() / _rx_fast() results
