# The C interface of the run loop, for other Cython modules (e.g. a device that serves
# its port/MMIO accesses in C, without the GIL).
#
# A device served in C exposes `c_io_handler()` returning a PyCapsule named
# IO_HANDLER_CAPSULE whose pointer is an `io_handler_t` that stays valid as long as the
# device object lives. The bus keeps a reference to the device.
#   fn(ctx, offset, data, size, is_write) -> 0 on success, -1 to stop the vCPU with
#   RunExit.HANDLER_ERROR, 1 to have the device's Python read/write serve this access
#   (with the GIL; a device serving only its hot registers in C, e.g. virtio-mmio's
#   InterruptStatus/ACK). For a read, fn fills data[0:size] (little endian).
from libc.stdint cimport uint8_t, uint32_t, uint64_t

ctypedef int (*io_fn_t)(void *ctx, uint64_t offset, uint8_t *data, uint32_t size,
                        bint is_write) noexcept nogil

ctypedef struct io_handler_t:
    io_fn_t fn
    void *ctx

ctypedef struct bus_range_t:
    uint64_t base
    uint64_t size
    int kind            # KIND_PYTHON / KIND_C / KIND_CONST
    void *obj           # PyObject* of the device (KIND_PYTHON; KIND_C when fn returns 1)
    io_fn_t fn          # KIND_C
    void *ctx           # KIND_C
    uint64_t value      # KIND_CONST: what reads return

ctypedef struct bus_table_t:
    int n
    bus_range_t *ranges  # sorted by base, non-overlapping
