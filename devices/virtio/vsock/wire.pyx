"""The host client's `OK <port>` line and the monotonic clock, in C for the device thread,
each without a Python call (the lab's emulated CPU charges every page of code a
per-connect step runs, and printf or time.monotonic are many). The wire header is
_fast.pyx's (pack, decode)."""
from libc.errno cimport errno, EINTR
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

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
