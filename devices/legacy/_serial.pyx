# cython: boundscheck=False, wraparound=False, cdivision=True
"""The 8250/16550A UART served in C: `FastSerial`, the same device as
devices.legacy.serial.Serial (its pure-Python twin, same API and unit tests), whose
port accesses the vCPU run loop serves without the GIL.

    uart = FastSerial(interrupt, out=console_write)  # out(bytes) receives TX, in batches
    bus.register(0x3F8, 8, uart)                     # served through c_io_handler()

Why: Linux writes its console one byte at a time, each byte an LSR read and a THR write,
so a Python device made every byte two GIL round trips plus an `out` call (~5x QEMU's
cost per byte when a guest prints a lot). Here every register access is C under a
mutex; transmitted bytes collect in a buffer that goes to `out` (with the GIL) when:

- a newline is written (the console log and attached clients see whole lines at once),
- the buffer is full (TX_BUFFER bytes),
- its oldest byte has waited TX_MAX_AGE_NS while the guest keeps transmitting,
- the guest touches any register but THR, LSR and IIR: Linux's console write and its
  tty transmitter both end a burst by writing IER, so a prompt without a newline is
  seen at once;
- the host calls `flush()` (vmm.machine does when the VM has ended; `save()` does).

The interrupt is raised by writing the line's eventfd from C (`interrupt.fileno()`), or
by calling `interrupt.trigger()` with the GIL when it has none. If `out` raises, the
access fails (the vCPU stops with RunExit.HANDLER_ERROR) and `error` holds the exception.

The capsule protocol is vmm/_fast/runloop.pxd's, declared for devices/ in
devices/io_handler.pxd (devices/ depends on nothing in vmm/): a capsule named IO_HANDLER_CAPSULE holding {fn, ctx}.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.pycapsule cimport PyCapsule_New
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from devices.legacy.serial import SerialState

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    enum:
        CLOCK_MONOTONIC

cdef extern from "<unistd.h>" nogil:
    ssize_t c_write "write" (int fd, const void *buf, size_t n)

from devices.io_handler cimport MM_IO_HANDLER_CAPSULE, io_fn_t, io_handler_t

IO_HANDLER_CAPSULE = (<bytes>MM_IO_HANDLER_CAPSULE).decode()

DEF RX_FIFO = 64
DEF TX_BUF = 4096
TX_BUFFER = TX_BUF
TX_MAX_AGE_NS = 2000000  # 2 ms
cdef uint64_t _MAX_AGE = 2000000

# Register offsets and bits, as in devices.legacy.serial (the twin's names).
DEF R_DATA = 0
DEF R_IER = 1
DEF R_IIR = 2
DEF R_LCR = 3
DEF R_MCR = 4
DEF R_LSR = 5
DEF R_MSR = 6
DEF R_SCR = 7
DEF IER_RDA = 0x01
DEF IER_THRE = 0x02
DEF IER_MASK = 0x0F
DEF IIR_NONE = 0x01
DEF IIR_THRE = 0x02
DEF IIR_RDA = 0x04
DEF IIR_FIFO_ENABLED = 0xC0
DEF FCR_ENABLE = 0x01
DEF FCR_CLEAR_RX = 0x02
DEF LCR_DLAB = 0x80
DEF MCR_DTR = 0x01
DEF MCR_RTS = 0x02
DEF MCR_OUT1 = 0x04
DEF MCR_OUT2 = 0x08
DEF MCR_LOOP = 0x10
DEF LSR_DR = 0x01
DEF LSR_THRE = 0x20
DEF LSR_TEMT = 0x40
DEF MSR_CTS = 0x10
DEF MSR_DSR = 0x20
DEF MSR_RI = 0x40
DEF MSR_DCD = 0x80

# What an access asks of the caller once the mutex is released.
DEF A_FIRE = 1
DEF A_FLUSH = 2


cdef struct uart_t:
    uint8_t dll, dlm, ier, lcr, mcr, fcr, scr
    bint thre_pending
    uint8_t rx[RX_FIFO]
    int rx_head, rx_len
    uint8_t tx[TX_BUF]
    int tx_len
    uint64_t tx_since     # CLOCK_MONOTONIC ns of the oldest buffered byte
    uint64_t tx_bytes     # every byte transmitted (metrics)
    uint64_t flushes      # `out` calls (metrics)


cdef inline uint64_t _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline int _iir(uart_t *u) noexcept nogil:
    if u.ier & IER_RDA and u.rx_len:
        return IIR_RDA
    if u.ier & IER_THRE and u.thre_pending:
        return IIR_THRE
    return IIR_NONE


cdef inline void _rx_push(uart_t *u, uint8_t b) noexcept nogil:
    if u.rx_len < RX_FIFO:
        u.rx[(u.rx_head + u.rx_len) % RX_FIFO] = b
        u.rx_len += 1


cdef inline uint8_t _rx_pop(uart_t *u) noexcept nogil:
    cdef uint8_t b
    if not u.rx_len:
        return 0
    b = u.rx[u.rx_head]
    u.rx_head = (u.rx_head + 1) % RX_FIFO
    u.rx_len -= 1
    return b


cdef uint8_t _read(uart_t *u, uint64_t offset) noexcept nogil:
    cdef int dlab = u.lcr & LCR_DLAB
    cdef int iir
    cdef uint8_t m
    if offset == R_DATA:
        return u.dll if dlab else _rx_pop(u)
    if offset == R_IER:
        return u.dlm if dlab else u.ier
    if offset == R_IIR:
        iir = _iir(u)
        if iir == IIR_THRE:
            u.thre_pending = False  # reading IIR acknowledges THR empty
        return iir | (IIR_FIFO_ENABLED if u.fcr & FCR_ENABLE else 0)
    if offset == R_LCR:
        return u.lcr
    if offset == R_MCR:
        return u.mcr
    if offset == R_LSR:
        return LSR_THRE | LSR_TEMT | (LSR_DR if u.rx_len else 0)
    if offset == R_MSR:
        if u.mcr & MCR_LOOP:
            m = u.mcr
            return ((MSR_CTS if m & MCR_RTS else 0) | (MSR_DSR if m & MCR_DTR else 0)
                    | (MSR_RI if m & MCR_OUT1 else 0) | (MSR_DCD if m & MCR_OUT2 else 0))
        return MSR_DCD | MSR_DSR | MSR_CTS
    if offset == R_SCR:
        return u.scr
    return 0xFF


cdef int _write(uart_t *u, uint64_t offset, uint8_t value) noexcept nogil:
    """Apply a register write; A_FLUSH when the TX buffer should go out now."""
    cdef int dlab = u.lcr & LCR_DLAB
    cdef uint64_t now
    if offset == R_DATA:
        if dlab:
            u.dll = value
            return 0
        u.thre_pending = True  # sent at once: THR is empty again, itself an interrupt condition
        if u.mcr & MCR_LOOP:
            _rx_push(u, value)
            return 0
        u.tx_bytes += 1
        if u.tx_len == 0:
            u.tx_since = _now()
            u.tx[0] = value
            u.tx_len = 1
            return A_FLUSH if value == 10 else 0
        u.tx[u.tx_len] = value
        u.tx_len += 1
        if value == 10 or u.tx_len == TX_BUF:
            return A_FLUSH
        now = _now()
        return A_FLUSH if now - u.tx_since >= _MAX_AGE else 0
    if offset == R_IER:
        if dlab:
            u.dlm = value
        else:
            if value & IER_THRE and not u.ier & IER_THRE:
                u.thre_pending = True   # THR is empty: enabling ETBEI raises it at once
            u.ier = value & IER_MASK
    elif offset == R_IIR:
        u.fcr = value & 0xC9
        if value & FCR_CLEAR_RX:
            u.rx_len = 0
            u.rx_head = 0
    elif offset == R_LCR:
        u.lcr = value
    elif offset == R_MCR:
        u.mcr = value & 0x1F
    elif offset == R_SCR:
        u.scr = value
    return A_FLUSH if u.tx_len else 0


cdef struct serial_c_t:
    uart_t u
    pthread_mutex_t lock       # the registers and buffers (vCPU threads, host input)
    pthread_mutex_t out_lock   # one `out` call at a time, in order; never taken with the GIL
    int irq_fd                 # the interrupt's eventfd, or -1: call interrupt.trigger()
    PyObject *owner            # the FastSerial holding this struct (borrowed)


cdef void _trigger(serial_c_t *c) noexcept nogil:
    cdef uint64_t one = 1
    if c.irq_fd >= 0:
        c_write(c.irq_fd, &one, 8)  # EAGAIN: the counter is saturated, an interrupt is pending
    else:
        with gil:
            (<FastSerial>c.owner)._call_trigger()


cdef int _flush(serial_c_t *c) noexcept nogil:
    """Hand the buffered TX bytes to `out`; -1 if it raised. Never called with the GIL."""
    cdef uint8_t buf[TX_BUF]
    cdef int n, rc = 0
    pthread_mutex_lock(&c.out_lock)
    pthread_mutex_lock(&c.lock)
    n = c.u.tx_len
    if n:
        memcpy(buf, c.u.tx, n)
        c.u.tx_len = 0
        c.u.flushes += 1
    pthread_mutex_unlock(&c.lock)
    if n:
        with gil:
            rc = (<FastSerial>c.owner)._call_out(PyBytes_FromStringAndSize(<char *>buf, n))
    pthread_mutex_unlock(&c.out_lock)
    return rc


cdef int _access(serial_c_t *c, uint64_t offset, uint8_t *data, uint32_t size,
                 bint is_write) noexcept nogil:
    cdef int before, after, actions = 0
    pthread_mutex_lock(&c.lock)
    before = _iir(&c.u)
    if is_write:
        actions = _write(&c.u, offset, data[0])
    else:
        memset(data, 0, size)
        data[0] = _read(&c.u, offset)
        if offset != R_LSR and offset != R_IIR and c.u.tx_len:
            actions = A_FLUSH
    after = _iir(&c.u)
    pthread_mutex_unlock(&c.lock)
    if before == IIR_NONE and after != IIR_NONE:
        _trigger(c)
    if actions & A_FLUSH:
        return _flush(c)
    return 0


cdef int _serial_io(void *ctx, uint64_t offset, uint8_t *data, uint32_t size,
                    bint is_write) noexcept nogil:
    return _access(<serial_c_t *>ctx, offset, data, size, is_write)


cdef class FastSerial:
    """A 16550A with an RX FIFO, served in C; `out` gets TX bytes in batches."""
    cdef serial_c_t c
    cdef io_handler_t handler
    cdef object interrupt
    cdef object out
    cdef public object error

    def __cinit__(self):
        memset(&self.c, 0, sizeof(self.c))
        pthread_mutex_init(&self.c.lock, NULL)
        pthread_mutex_init(&self.c.out_lock, NULL)
        self.c.owner = <PyObject *>self
        self.c.irq_fd = -1
        self.handler.fn = _serial_io
        self.handler.ctx = <void *>&self.c

    def __init__(self, interrupt, out=None, state=None):
        s = state or SerialState()
        self.interrupt = interrupt
        self.out = out or (lambda data: None)
        self.error = None
        fileno = getattr(interrupt, "fileno", None)
        self.c.irq_fd = fileno() if fileno is not None else -1
        u = &self.c.u
        u.dll, u.dlm, u.ier, u.lcr = s.dll, s.dlm, s.ier, s.lcr
        u.mcr, u.fcr, u.scr = s.mcr, s.fcr, s.scr
        u.thre_pending = bool(s.thre_pending)
        for b in s.rx[:RX_FIFO]:
            _rx_push(u, <uint8_t>b)

    def __dealloc__(self):
        pthread_mutex_destroy(&self.c.lock)
        pthread_mutex_destroy(&self.c.out_lock)

    cdef int _call_out(self, bytes data):
        try:
            self.out(data)
            return 0
        except BaseException as exc:
            self.error = exc
            return -1

    cdef void _call_trigger(self):
        try:
            self.interrupt.trigger()
        except BaseException as exc:
            self.error = exc

    def c_io_handler(self):
        return PyCapsule_New(&self.handler, MM_IO_HANDLER_CAPSULE, NULL)

    # -- BusDevice (the twin's API; tests and Python callers) -----------------------------
    def read(self, offset, size):
        cdef uint8_t data[8]
        cdef uint64_t off = offset
        cdef uint32_t n = min(max(int(size), 1), 8)
        cdef int rc
        with nogil:
            rc = _access(&self.c, off, data, n, False)
        self._raise(rc)
        return data[0]

    def write(self, offset, size, value):
        cdef uint8_t data[8]
        cdef uint64_t off = offset
        cdef int rc
        data[0] = <uint8_t>(value & 0xFF)
        with nogil:
            rc = _access(&self.c, off, data, 1, True)
        self._raise(rc)

    def _raise(self, int rc):
        if rc < 0:
            err, self.error = self.error, None
            raise err

    # -- host side ------------------------------------------------------------------------
    def flush(self):
        """Send what the guest transmitted and is still buffered to `out` now."""
        cdef int rc
        with nogil:
            rc = _flush(&self.c)
        self._raise(rc)

    def enqueue_input(self, data):
        """Queue host bytes for the guest; returns how many fit in the FIFO."""
        cdef bytes raw = bytes(data)
        cdef const uint8_t *p = raw
        cdef int i, before, taken, n = len(raw)
        cdef bint fire
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            taken = min(RX_FIFO - self.c.u.rx_len, n)
            before = _iir(&self.c.u)
            for i in range(taken):
                _rx_push(&self.c.u, p[i])
            fire = taken > 0 and before == IIR_NONE and _iir(&self.c.u) != IIR_NONE
            pthread_mutex_unlock(&self.c.lock)
            if fire:
                _trigger(&self.c)
        return taken

    def rx_room(self):
        cdef int room
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            room = RX_FIFO - self.c.u.rx_len
            pthread_mutex_unlock(&self.c.lock)
        return room

    @property
    def metrics(self):
        """Bytes transmitted and `out` calls made so far."""
        return {"tx_bytes": self.c.u.tx_bytes, "flushes": self.c.u.flushes}

    # -- persistence ----------------------------------------------------------------------
    def save(self):
        """The twin's SerialState as a dict (buffered TX is flushed first)."""
        cdef uart_t u
        cdef int i
        self.flush()
        with nogil:
            pthread_mutex_lock(&self.c.lock)
            memcpy(&u, &self.c.u, sizeof(uart_t))
            pthread_mutex_unlock(&self.c.lock)
        rx = [u.rx[(u.rx_head + i) % RX_FIFO] for i in range(u.rx_len)]
        return SerialState(dll=u.dll, dlm=u.dlm, ier=u.ier, lcr=u.lcr, mcr=u.mcr, fcr=u.fcr,
                           scr=u.scr, thre_pending=bool(u.thre_pending), rx=rx).asdict()

    @classmethod
    def restore(cls, data, interrupt, out=None):
        return cls(interrupt, out, SerialState(**data))
