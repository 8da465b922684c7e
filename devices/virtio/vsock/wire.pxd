# The OK line and the clock in C (wire.pyx), for the muxer and the device loop.
cdef double monotonic() noexcept nogil
cdef int send_ok(int fd, unsigned int port) noexcept nogil
