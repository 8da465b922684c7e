# cython: boundscheck=False, wraparound=False, cdivision=True
"""The vCPU run loop: KVM_RUN with the GIL released, exits decoded in C.

`RunLoop(vcpu, pio_bus, mmio_bus).run()` re-enters the guest after every PIO/MMIO exit
(looked up on a `FastBus`, the C side of vmm.bus.Bus) and returns a `RunExit` for
everything Python must decide about: HLT, SHUTDOWN (triple fault), POWEROFF / RESET /
CRASH (KVM_EXIT_SYSTEM_EVENT), INTERNAL_ERROR, FAIL_ENTRY, PAUSED, and errors. Python
devices are called with the GIL re-acquired only for their own accesses; C devices
(see runloop.pxd) and constant ranges are served without it; a C device may pass an
access it does not serve back to its own Python read/write.

Pausing: `request_pause()` sets a flag and kvm_run.immediate_exit, and the caller sends
KICK_SIGNAL to the vCPU thread (`install_kick_signal()` installs a no-op handler without
SA_RESTART), so KVM_RUN returns EINTR promptly wherever the vCPU is.
"""
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid, PyCapsule_New
from cpython.ref cimport PyObject
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from posix.signal cimport sigaction, sigaction_t, sigemptyset

import enum

IO_HANDLER_CAPSULE = "vmm._fast.runloop.io_handler"
cdef const char *_CAPSULE_NAME = "vmm._fast.runloop.io_handler"

cdef extern from "sys/ioctl.h" nogil:
    int ioctl(int fd, unsigned long request, ...)

cdef extern from "linux/kvm.h" nogil:
    enum:
        KVM_RUN
        KVM_EXIT_IO
        KVM_EXIT_MMIO
        KVM_EXIT_HLT
        KVM_EXIT_SHUTDOWN
        KVM_EXIT_FAIL_ENTRY
        KVM_EXIT_INTR
        KVM_EXIT_INTERNAL_ERROR
        KVM_EXIT_SYSTEM_EVENT
        KVM_EXIT_IO_OUT
        KVM_SYSTEM_EVENT_SHUTDOWN
        KVM_SYSTEM_EVENT_RESET
        KVM_SYSTEM_EVENT_CRASH
    # Members of the anonymous exit union; only their fields are used.
    struct _kvm_run_io "kvm_run_io_":
        uint8_t direction
        uint8_t size
        uint16_t port
        uint32_t count
        uint64_t data_offset
    struct _kvm_run_mmio "kvm_run_mmio_":
        uint64_t phys_addr
        uint8_t data[8]
        uint32_t len
        uint8_t is_write
    struct _kvm_run_sysev "kvm_run_sysev_":
        uint32_t type
    struct kvm_run:
        uint8_t immediate_exit
        uint32_t exit_reason
        _kvm_run_io io
        _kvm_run_mmio mmio
        _kvm_run_sysev system_event


KIND_PYTHON = 0
KIND_C = 1
KIND_CONST = 2
DEF _KIND_PYTHON = 0
DEF _KIND_C = 1
DEF _KIND_CONST = 2


class RunExit(enum.IntEnum):
    """Why RunLoop.run() returned."""
    PAUSED = 1          # request_pause() took effect
    HLT = 2             # the guest halted (no in-kernel irqchip, or all vCPUs idle)
    SHUTDOWN = 3        # triple fault
    POWEROFF = 4        # KVM_SYSTEM_EVENT_SHUTDOWN (e.g. PSCI/ACPI poweroff)
    RESET = 5           # KVM_SYSTEM_EVENT_RESET
    CRASH = 6           # KVM_SYSTEM_EVENT_CRASH
    SYSTEM_EVENT = 7    # another system event type (see kvm_run.system_event.type)
    INTERNAL_ERROR = 8  # KVM could not emulate something (kvm_run.internal)
    FAIL_ENTRY = 9      # VM entry failed (kvm_run.fail_entry)
    UNHANDLED = 10      # an exit reason we do not handle (kvm_run.exit_reason)
    RUN_ERROR = 11      # KVM_RUN itself failed (RunLoop.last_errno)
    HANDLER_ERROR = 12  # a device handler raised (RunLoop.error)


cdef enum:
    R_PAUSED = 1
    R_HLT = 2
    R_SHUTDOWN = 3
    R_POWEROFF = 4
    R_RESET = 5
    R_CRASH = 6
    R_SYSEV = 7
    R_INTERNAL = 8
    R_FAIL_ENTRY = 9
    R_UNHANDLED = 10
    R_RUN_ERROR = 11
    R_HANDLER_ERROR = 12


cdef void _noop_handler(int signo) noexcept nogil:
    pass


def install_kick_signal(int signo):
    """Install a no-op handler for `signo` without SA_RESTART, so a signal sent to a
    vCPU thread interrupts KVM_RUN (EINTR) instead of being swallowed."""
    cdef sigaction_t sa
    memset(&sa, 0, sizeof(sa))
    sa.sa_handler = _noop_handler
    sigemptyset(&sa.sa_mask)
    sa.sa_flags = 0
    if sigaction(signo, &sa, NULL) != 0:
        raise OSError(errno, "sigaction failed")


cdef inline uint64_t _load_le(const uint8_t *p, uint32_t size) noexcept nogil:
    cdef uint64_t v = 0
    cdef uint32_t i
    for i in range(size):
        v |= (<uint64_t>p[i]) << (8 * i)
    return v


cdef inline void _store_le(uint8_t *p, uint32_t size, uint64_t v) noexcept nogil:
    cdef uint32_t i
    for i in range(size):
        p[i] = <uint8_t>(v >> (8 * i))


cdef struct retired_t:
    bus_table_t *table
    retired_t *next


cdef class FastBus:
    """The C side of a PIO or MMIO bus: an immutable sorted table swapped on change.

    Old tables are retired (freed with the bus), so a vCPU thread looking up while
    another thread registers a device never reads freed memory. The retired list is C
    (not a Python list): the cyclic GC may clear a FastBus's Python attributes before
    __dealloc__ runs (a device often refers back to the machine owning the bus), and the
    tables must still be freed then."""
    cdef bus_table_t *table
    cdef retired_t *retired
    cdef dict _keep     # every object any table (old or new) points at, by id
    cdef public uint64_t unhandled

    def __cinit__(self):
        self.table = <bus_table_t *>malloc(sizeof(bus_table_t))
        if self.table == NULL:
            raise MemoryError()
        self.table.n = 0
        self.table.ranges = NULL
        self.retired = NULL
        self._keep = {}
        self.unhandled = 0

    def __dealloc__(self):
        cdef retired_t *r = self.retired
        cdef retired_t *nxt
        self._free(self.table)
        while r != NULL:
            nxt = r.next
            self._free(r.table)
            free(r)
            r = nxt

    cdef void _free(self, bus_table_t *t) noexcept:
        if t != NULL:
            free(t.ranges)
            free(t)

    def set_ranges(self, list ranges):
        """ranges: sorted, non-overlapping (base, size, device, const_value) tuples;
        device None means a constant range; a device with c_io_handler() is served in C."""
        cdef int n = len(ranges)
        cdef bus_table_t *t = <bus_table_t *>malloc(sizeof(bus_table_t))
        cdef retired_t *node = <retired_t *>malloc(sizeof(retired_t))
        cdef io_handler_t *h
        if t == NULL or node == NULL:
            free(t)
            free(node)
            raise MemoryError()
        t.n = n
        t.ranges = <bus_range_t *>malloc(sizeof(bus_range_t) * (n if n else 1))
        try:
            if t.ranges == NULL:
                raise MemoryError()
            for i, (base, size, device, value) in enumerate(ranges):
                t.ranges[i].base = base
                t.ranges[i].size = size
                t.ranges[i].value = value
                t.ranges[i].obj = NULL
                t.ranges[i].fn = NULL
                t.ranges[i].ctx = NULL
                if device is None:
                    t.ranges[i].kind = _KIND_CONST
                elif hasattr(device, "c_io_handler"):
                    cap = device.c_io_handler()
                    if not PyCapsule_IsValid(cap, _CAPSULE_NAME):
                        raise TypeError(f"{device!r}.c_io_handler() must return a {IO_HANDLER_CAPSULE} capsule")
                    h = <io_handler_t *>PyCapsule_GetPointer(cap, _CAPSULE_NAME)
                    t.ranges[i].kind = _KIND_C
                    t.ranges[i].fn = h.fn
                    t.ranges[i].ctx = h.ctx
                    t.ranges[i].obj = <void *>device  # for accesses fn passes back (rc 1)
                    self._keep[id(cap)] = cap
                else:
                    t.ranges[i].kind = _KIND_PYTHON
                    t.ranges[i].obj = <void *>device
                self._keep[id(device)] = device
        except BaseException:
            self._free(t)
            free(node)
            raise
        node.table = self.table
        node.next = self.retired
        self.retired = node
        self.table = t          # one pointer store: readers see the old or the new table

    cdef bus_range_t *find(self, uint64_t addr, uint32_t size) noexcept nogil:
        cdef bus_table_t *t = self.table
        cdef int lo = 0, hi = t.n - 1, mid
        cdef bus_range_t *r
        while lo <= hi:
            mid = (lo + hi) >> 1
            r = &t.ranges[mid]
            if addr < r.base:
                hi = mid - 1
            elif addr - r.base >= r.size:
                lo = mid + 1
            else:
                # The whole access must fit in the range.
                if addr - r.base + size > r.size:
                    return NULL
                return r
        return NULL

    def lookup(self, uint64_t addr, uint32_t size=1):
        """(base, kind) of the range holding [addr, addr+size), or None (for tests)."""
        cdef bus_range_t *r = self.find(addr, size)
        if r == NULL:
            return None
        return (r.base, r.kind)


cdef struct scratch_t:
    uint64_t value
    uint64_t writes
    uint64_t reads


cdef int _scratch_io(void *ctx, uint64_t offset, uint8_t *data, uint32_t size,
                     bint is_write) noexcept nogil:
    cdef scratch_t *st = <scratch_t *>ctx
    if is_write:
        st.value = _load_le(data, size)
        st.writes += 1
    else:
        _store_le(data, size, st.value)
        st.reads += 1
    return 0


cdef class ScratchPort:
    """A device served entirely in C: writes store the value and count; reads return the
    last value written. Used by tests and the PIO round-trip benchmark."""
    cdef io_handler_t handler
    cdef scratch_t st

    def __cinit__(self):
        memset(&self.st, 0, sizeof(self.st))
        self.handler.fn = _scratch_io
        self.handler.ctx = <void *>&self.st

    @property
    def value(self):
        return self.st.value

    @property
    def writes(self):
        return self.st.writes

    @property
    def reads(self):
        return self.st.reads

    def c_io_handler(self):
        return PyCapsule_New(&self.handler, _CAPSULE_NAME, NULL)

    # BusDevice, for the pure-Python twin.
    def read(self, offset, size):
        self.st.reads += 1
        return self.st.value & ((1 << (8 * size)) - 1)

    def write(self, offset, size, value):
        self.st.value = value
        self.st.writes += 1


cdef class RunLoop:
    """Runs one vCPU: `run()` returns a RunExit; call it from that vCPU's thread."""
    cdef int fd
    cdef kvm_run *kvm_run
    cdef FastBus pio
    cdef FastBus mmio
    cdef volatile int pause_requested
    cdef object vcpu
    cdef public object error
    cdef public int last_errno
    cdef public uint64_t exits
    cdef public uint64_t io_exits
    cdef public uint64_t mmio_exits

    def __init__(self, vcpu, FastBus pio not None, FastBus mmio not None):
        self.vcpu = vcpu
        self.fd = vcpu.fd
        self.kvm_run = <kvm_run *><size_t>vcpu.run_address
        self.pio = pio
        self.mmio = mmio
        self.pause_requested = 0
        self.error = None
        self.last_errno = 0

    def request_pause(self):
        """Make the next (or current) KVM_RUN return; send the kick signal after this."""
        self.pause_requested = 1
        self.kvm_run.immediate_exit = 1

    def clear_pause(self):
        self.pause_requested = 0
        self.kvm_run.immediate_exit = 0

    @property
    def pausing(self):
        return bool(self.pause_requested)

    def run(self):
        cdef int r
        self.error = None
        with nogil:
            r = self._loop()
        return RunExit(r)

    cdef int _loop(self) noexcept nogil:
        cdef int ret
        cdef uint32_t reason, t
        while True:
            # No early return on pause_requested: with immediate_exit set, KVM_RUN first
            # completes a pending IN/MMIO read into the registers and then returns EINTR,
            # so a paused vCPU's state is consistent for a snapshot.
            ret = ioctl(self.fd, KVM_RUN, 0)
            if ret < 0:
                if errno == EINTR or errno == EAGAIN:
                    if self.pause_requested:
                        return R_PAUSED
                    continue
                self.last_errno = errno
                return R_RUN_ERROR
            self.exits += 1
            reason = self.kvm_run.exit_reason
            if reason == KVM_EXIT_IO:
                self.io_exits += 1
                if self._do_io() < 0:
                    return R_HANDLER_ERROR
            elif reason == KVM_EXIT_MMIO:
                self.mmio_exits += 1
                if self._do_mmio() < 0:
                    return R_HANDLER_ERROR
            elif reason == KVM_EXIT_INTR:
                if self.pause_requested:
                    return R_PAUSED
            elif reason == KVM_EXIT_HLT:
                return R_HLT
            elif reason == KVM_EXIT_SHUTDOWN:
                return R_SHUTDOWN
            elif reason == KVM_EXIT_SYSTEM_EVENT:
                t = self.kvm_run.system_event.type
                if t == KVM_SYSTEM_EVENT_SHUTDOWN:
                    return R_POWEROFF
                if t == KVM_SYSTEM_EVENT_RESET:
                    return R_RESET
                if t == KVM_SYSTEM_EVENT_CRASH:
                    return R_CRASH
                return R_SYSEV
            elif reason == KVM_EXIT_INTERNAL_ERROR:
                return R_INTERNAL
            elif reason == KVM_EXIT_FAIL_ENTRY:
                return R_FAIL_ENTRY
            else:
                return R_UNHANDLED

    cdef int _do_io(self) noexcept nogil:
        cdef uint8_t *data = (<uint8_t *>self.kvm_run) + self.kvm_run.io.data_offset
        cdef uint32_t size = self.kvm_run.io.size
        cdef uint32_t i
        cdef bint is_write = self.kvm_run.io.direction == KVM_EXIT_IO_OUT
        cdef uint64_t port = self.kvm_run.io.port
        if size == 0 or size > 8:
            return 0
        for i in range(self.kvm_run.io.count):
            if self._dispatch(self.pio, port, data + i * size, size, is_write) < 0:
                return -1
        return 0

    cdef int _do_mmio(self) noexcept nogil:
        cdef uint32_t size = self.kvm_run.mmio.len
        if size == 0 or size > 8:
            return 0
        return self._dispatch(self.mmio, self.kvm_run.mmio.phys_addr, self.kvm_run.mmio.data,
                              size, self.kvm_run.mmio.is_write)

    cdef int _dispatch(self, FastBus bus, uint64_t addr, uint8_t *data, uint32_t size,
                       bint is_write) noexcept nogil:
        cdef bus_range_t *r = bus.find(addr, size)
        cdef int rc
        if r == NULL:
            # Nothing there: reads float high like an empty ISA bus, writes vanish.
            bus.unhandled += 1
            if not is_write:
                memset(data, 0xFF, size)
            return 0
        if r.kind == _KIND_C:
            rc = r.fn(r.ctx, addr - r.base, data, size, is_write)
            if rc <= 0:
                return rc
            # The C side serves only its hot registers; the device's Python does the rest.
            return self._python_io(<object>r.obj, addr - r.base, data, size, is_write)
        if r.kind == _KIND_CONST:
            if not is_write:
                _store_le(data, size, r.value)
            return 0
        return self._python_io(<object>r.obj, addr - r.base, data, size, is_write)

    cdef int _python_io(self, object dev, uint64_t offset, uint8_t *data, uint32_t size,
                        bint is_write) noexcept with gil:
        cdef uint64_t value
        try:
            if is_write:
                dev.write(offset, size, _load_le(data, size))
            else:
                value = (<uint64_t>dev.read(offset, size)) & (0xFFFFFFFFFFFFFFFF >> (64 - 8 * size))
                _store_le(data, size, value)
            return 0
        except BaseException as e:
            self.error = e
            return -1
