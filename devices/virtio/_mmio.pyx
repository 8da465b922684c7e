# cython: boundscheck=False, wraparound=False, cdivision=True
"""The virtio-mmio registers a driver touches on every interrupt, served in C.

`MmioFastPath` owns the transport's InterruptStatus value (the ISR) and answers, on the
vCPU thread without the GIL:

- InterruptStatus reads (4 bytes at 0x60): the ISR, loaded with acquire order;
- InterruptACK writes (4 bytes at 0x64): the written bits cleared atomically;
- QueueNotify writes (4 bytes at 0x50) that KVM's ioeventfd did not catch (no ioeventfd
  registered, or a queue index with none): the queue's eventfd written from C, an
  out-of-range index ignored as devices.virtio.mmio does.

Every other access is handed back to the run loop (the handler returns 1) to be served by
the transport's Python `read`/`write`. Why: Linux's vm_interrupt() reads InterruptStatus
and writes InterruptACK for each interrupt, so every interrupt cost two exits that needed
the GIL, often held by the device's own I/O thread right then (vsock connect latency).

The ISR stays one value the Python side reads and writes (`isr`, `raise_bits`, `ack`), so
the transport's saved state is unchanged. Ordering: a device thread sets its bits with
`raise_bits()` (release) *before* it fires the irqfd; the guest's ISR read (acquire) then
sees them. A bit raised between the guest's read and its ack is cleared by that ack, but
the guest's handler looks at the rings after acking, and the second irqfd write delivers
another interrupt, so no used buffer is missed (the same window every virtio-mmio
implementation has).

The capsule protocol is vmm/_fast/runloop.pxd's, declared for devices/ in
devices/io_handler.pxd (devices/ depends on nothing in vmm/): a capsule named IO_HANDLER_CAPSULE holding {fn, ctx}; fn returns 0
(served), 1 (pass to the device's Python read/write) or -1 (stop the vCPU).
"""
from cpython.pycapsule cimport PyCapsule_New
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memset

cdef extern from "<unistd.h>" nogil:
    ssize_t c_write "write" (int fd, const void *buf, size_t n)

cdef extern from *:
    """
    static inline uint32_t mm_isr_load(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void mm_isr_store(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline uint32_t mm_isr_or(uint32_t *p, uint32_t v) { return __atomic_fetch_or(p, v, __ATOMIC_ACQ_REL); }
    static inline uint32_t mm_isr_and(uint32_t *p, uint32_t v) { return __atomic_fetch_and(p, v, __ATOMIC_ACQ_REL); }
    static inline void mm_count(uint64_t *p) { __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
    static inline uint64_t mm_counted(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline int mm_fd_load(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void mm_fd_store(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    uint32_t mm_isr_load(uint32_t *p) nogil
    void mm_isr_store(uint32_t *p, uint32_t v) nogil
    uint32_t mm_isr_or(uint32_t *p, uint32_t v) nogil
    uint32_t mm_isr_and(uint32_t *p, uint32_t v) nogil
    void mm_count(uint64_t *p) nogil
    uint64_t mm_counted(uint64_t *p) nogil
    int mm_fd_load(int *p) nogil
    void mm_fd_store(int *p, int v) nogil

from devices.io_handler cimport MM_IO_HANDLER_CAPSULE, io_fn_t, io_handler_t

IO_HANDLER_CAPSULE = (<bytes>MM_IO_HANDLER_CAPSULE).decode()

# Register offsets (devices.virtio.constants.Reg; checked by the unit tests).
DEF R_QUEUE_NOTIFY = 0x50
DEF R_INTERRUPT_STATUS = 0x60
DEF R_INTERRUPT_ACK = 0x64
DEF MAX_QUEUES = 16
MAX_NOTIFY_QUEUES = MAX_QUEUES
REG_QUEUE_NOTIFY = R_QUEUE_NOTIFY
REG_INTERRUPT_STATUS = R_INTERRUPT_STATUS
REG_INTERRUPT_ACK = R_INTERRUPT_ACK

cdef struct fast_t:
    uint32_t isr
    int nqueues
    int notify_fd[MAX_QUEUES]
    uint64_t isr_reads
    uint64_t acks
    uint64_t notifies


cdef inline uint32_t _load32(const uint8_t *p) noexcept nogil:
    return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


cdef int _mmio_io(void *ctx, uint64_t offset, uint8_t *data, uint32_t size,
                  bint is_write) noexcept nogil:
    cdef fast_t *st = <fast_t *>ctx
    cdef uint32_t v
    cdef uint64_t one = 1
    cdef int fd
    if size != 4:
        return 1
    if offset == R_INTERRUPT_STATUS and not is_write:
        v = mm_isr_load(&st.isr)
        data[0] = <uint8_t>v
        data[1] = <uint8_t>(v >> 8)
        data[2] = <uint8_t>(v >> 16)
        data[3] = <uint8_t>(v >> 24)
        mm_count(&st.isr_reads)
        return 0
    if offset == R_INTERRUPT_ACK and is_write:
        mm_isr_and(&st.isr, ~_load32(data))
        mm_count(&st.acks)
        return 0
    if offset == R_QUEUE_NOTIFY and is_write:
        v = _load32(data)
        if v < <uint32_t>st.nqueues:
            fd = mm_fd_load(&st.notify_fd[v])
            if fd >= 0:
                # An eventfd write of 1 cannot block short of 2^64-1 pending kicks.
                c_write(fd, &one, 8)
        mm_count(&st.notifies)
        return 0
    return 1


cdef class MmioFastPath:
    """The ISR and the per-interrupt registers of one virtio-mmio transport, in C.

        fast = MmioFastPath([eventfd per queue])
        bus.register(base, 0x1000, transport)  # transport.c_io_handler() -> fast's
        fast.raise_bits(INT_VRING); irq.trigger()
    """
    cdef io_handler_t handler
    cdef fast_t st

    def __cinit__(self, notify_fds=()):
        memset(&self.st, 0, sizeof(self.st))
        self.handler.fn = _mmio_io
        self.handler.ctx = <void *>&self.st
        fds = list(notify_fds)
        if len(fds) > MAX_QUEUES:
            raise ValueError(f"at most {MAX_QUEUES} queues, not {len(fds)}")
        self.st.nqueues = len(fds)
        for i in range(MAX_QUEUES):
            self.st.notify_fd[i] = -1
        for i, fd in enumerate(fds):
            self.st.notify_fd[i] = fd

    def c_io_handler(self):
        return PyCapsule_New(&self.handler, MM_IO_HANDLER_CAPSULE, NULL)

    @property
    def isr(self):
        """The InterruptStatus value the guest reads."""
        return mm_isr_load(&self.st.isr)

    @isr.setter
    def isr(self, uint32_t value):
        mm_isr_store(&self.st.isr, value)

    def raise_bits(self, uint32_t bits):
        """Set ISR bits (before firing the interrupt); returns the previous value."""
        return mm_isr_or(&self.st.isr, bits)

    def ack(self, uint32_t bits):
        """Clear ISR bits, as an InterruptACK write does; returns the previous value."""
        return mm_isr_and(&self.st.isr, ~bits)

    def forget_notify_fds(self):
        """Stop kicking queues from C (their eventfds are about to be closed)."""
        for i in range(MAX_QUEUES):
            mm_fd_store(&self.st.notify_fd[i], -1)

    def counters(self):
        """Accesses served in C: {'isr_reads', 'acks', 'notifies'}."""
        return {"isr_reads": mm_counted(&self.st.isr_reads), "acks": mm_counted(&self.st.acks),
                "notifies": mm_counted(&self.st.notifies)}

    def serve(self, uint64_t offset, uint32_t size, bint is_write, uint64_t value=0):
        """Run the C handler as the vCPU would (for tests): (rc, value read or 0)."""
        cdef uint8_t buf[8]
        cdef int rc
        cdef uint32_t i
        if size > 8:
            raise ValueError("size must be at most 8")
        for i in range(8):
            buf[i] = <uint8_t>(value >> (8 * i))
        rc = _mmio_io(&self.st, offset, buf, size, is_write)
        out = 0
        for i in range(0 if is_write else size):
            out |= (<uint64_t>buf[i]) << (8 * i)
        return rc, out


cdef class VringSignal:
    """`Activated.signal_used` for a transport whose interrupt line is a bare irqfd
    (InterruptLine.direct): the ISR's used-buffer bit raised and the irqfd written in C,
    so a device thread's interrupt runs no Python frame (the lab's emulated CPU made
    each one cost its guest). `fd` is the line's eventfd, open for the transport's life
    (the machine closes its lines after its transports)."""

    cdef MmioFastPath fast
    cdef int fd
    cdef uint32_t bits

    def __init__(self, MmioFastPath fast, int fd, uint32_t bits):
        if fd < 0:
            raise ValueError("VringSignal needs the line's eventfd")
        self.fast, self.fd, self.bits = fast, fd, bits

    def __call__(self, queue=None):
        cdef uint64_t one = 1
        mm_isr_or(&self.fast.st.isr, self.bits)  # before the irqfd: the guest's ISR read sees it
        c_write(self.fd, &one, 8)  # EAGAIN only at 2^64-1 pending: an interrupt is pending anyway

