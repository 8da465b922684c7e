# The C I/O handler protocol that the vCPU run loop (vmm/_fast/runloop.pxd) calls for a
# device served in C: a PyCapsule named MM_IO_HANDLER_CAPSULE whose pointer is an
# io_handler_t, valid as long as the capsule's owner lives. fn returns 0 (served), -1
# (error: the vCPU stops with HANDLER_ERROR) or 1 (not served in C: the device's Python
# read/write takes the access). Declared once here for the devices served in C
# (devices/legacy/_serial.pyx, devices/virtio/_mmio.pyx): devices/ depends on nothing in vmm/.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from *:
    """
    #define MM_IO_HANDLER_CAPSULE "vmm._fast.runloop.io_handler"
    """
    const char *MM_IO_HANDLER_CAPSULE

ctypedef int (*io_fn_t)(void *ctx, uint64_t offset, uint8_t *data, uint32_t size,
                        bint is_write) noexcept nogil

ctypedef struct io_handler_t:
    io_fn_t fn
    void *ctx
