# cython: boundscheck=False, wraparound=False
"""The virtio-vsock device thread's loop, compiled: wait, hand what woke it to the muxer,
raise at most one interrupt per turn.

It waits (poll(2), GIL released) on the three queue eventfds (signalled by KVM's
ioeventfds), the device's wake eventfd, the host listener and every stream socket the
muxer has an interest in, so no vsock work happens on a vCPU thread or in the VMM's
event loop. Compiled because under the lab's emulated CPU every bytecode of a turn
sat between a host client's connect and the guest seeing its REQUEST.
"""
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.errno cimport errno, EINTR
from libc.stdint cimport uint64_t

from devices.virtio.vsock.connection cimport Connection
from devices.virtio.vsock.muxer cimport Muxer
from devices.virtio.vsock.wire cimport monotonic

from ..errors import QueueCorrupt
from . import RX_QUEUE, TX_QUEUE

cdef extern from "poll.h" nogil:
    cdef struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short C_POLLIN "POLLIN"

cdef extern from "unistd.h" nogil:
    ssize_t read(int fd, void *buf, size_t n)

# Longest a header-only tx completion waits for an rx interrupt to ride on (seconds).
TX_IRQ_DELAY = 0.005
# Longest a host close's SHUTDOWN waits for other work to ride along (seconds): a client
# that reconnects at once is back within it, even on the lab's emulated CPU.
CLOSE_IRQ_DELAY = 0.002
DEF NFIXED = 4  # the three queue eventfds and the wake eventfd come first in the poll set


cdef inline void _drain(int fd) noexcept nogil:
    """Consume an eventfd's counter (kicks coalesce: one read clears them all)."""
    cdef uint64_t value
    read(fd, &value, 8)


cdef class DeviceLoop:
    """One activation's device thread: `run()` until `stop()`. `dev` is the VsockDevice
    (its transport-reset flag and event queue), `act` the activation."""

    cdef object dev, act
    cdef Muxer mux
    cdef public bint stopping
    cdef double owed  # when a deferred tx interrupt is due (monotonic seconds), -1 for none
    # None, or a collections.Counter that gets each wake-up's cause ("kick1", "listener",
    # "stream", "kick1+listener", "timeout"...): benchmarks/virtio/vsock_profile.py --turns
    cdef public object wake_causes
    cdef pollfd *fds
    cdef unsigned long nfds, cap
    cdef bint listener_was_ready  # at the previous wake-up (Muxer.accept_burst)

    def __cinit__(self):
        self.fds = NULL
        self.nfds = self.cap = 0

    def __init__(self, dev, act):
        self.dev, self.act, self.mux = dev, act, dev.mux
        self.stopping = False
        self.owed = -1
        self.wake_causes = None
        self.listener_was_ready = False
        events = list(act.queue_events)
        if len(events) != 3:
            raise ValueError("virtio-vsock has three queues")
        self._grow(NFIXED)
        for i, fd in enumerate(events + [dev._wake]):
            self.fds[i].fd, self.fds[i].events = fd, C_POLLIN
        self.nfds = NFIXED

    def __dealloc__(self):
        PyMem_Free(self.fds)

    cdef _grow(self, unsigned long n):
        cdef pollfd *p
        if n <= self.cap:
            return
        p = <pollfd *>PyMem_Realloc(self.fds, n * sizeof(pollfd))
        if p == NULL:
            raise MemoryError()
        self.fds, self.cap = p, n

    @property
    def irq_owed(self):
        """When a deferred tx interrupt is due (monotonic seconds), or None."""
        return None if self.owed < 0 else self.owed

    @irq_owed.setter
    def irq_owed(self, value):
        self.owed = -1 if value is None else value

    def stop(self) -> None:
        """Make run() return at its next wake-up (the caller writes the wake eventfd)."""
        self.stopping = True

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> None:
        cdef int n
        cdef bint idle
        cdef double deadline
        cdef Muxer mux = self.mux
        while not self.stopping:
            self._update_poll()
            deadline = mux.next_deadline()
            idle = deadline < 0 and self.owed < 0  # the usual turn: no timeout to work out
            n = self._poll(-1 if idle else self.timeout_ms(deadline))
            self._dispatch(n)
            if self.stopping:
                return
            try:
                if not self.turn(deadline):
                    continue
                # At once, before the poll set is rebuilt: the guest's handler reads and
                # acks the interrupt status in C on the vCPU thread (devices/virtio/_mmio.pyx),
                # so it does not wait for this thread to let go of the GIL.
                self.act.signal_used(RX_QUEUE)
            except QueueCorrupt as e:
                self.act.fail(e)
                return

    cdef int _poll(self, int timeout) except -1:
        """poll(2) over the current set, the GIL let go; how many fds have events."""
        cdef int n
        with nogil:
            n = poll(self.fds, self.nfds, timeout)
            while n < 0 and errno == EINTR:
                n = poll(self.fds, self.nfds, timeout)
        if n < 0:
            raise OSError(errno, "poll() in the vsock device thread failed")
        return n

    cdef _dispatch(self, int n):
        """Hand what poll reported to the muxer: queue kicks set its flags, sockets go to on_ready()."""
        cdef unsigned long i
        cdef int fd
        cdef short ev
        cdef bint listener_ready = False
        cdef Muxer mux = self.mux
        if self.wake_causes is not None:
            self._count_causes(n)
        if n <= 0:
            self.listener_was_ready = False
            return
        for i in range(NFIXED):
            if self.fds[i].revents:
                _drain(self.fds[i].fd)
                if i == RX_QUEUE:
                    mux.rx_room = True
                elif i == TX_QUEUE:
                    mux.tx_pending = True
        for i in range(NFIXED, self.nfds):
            ev = self.fds[i].revents
            if ev:
                fd = self.fds[i].fd
                self.fds[i].revents = 0
                if fd == mux.listener_fd:
                    listener_ready = True
                    mux.accept_burst = self.listener_was_ready
                mux.on_ready(fd, ev)  # it ignores an fd it no longer has
        for i in range(NFIXED):
            self.fds[i].revents = 0
        self.listener_was_ready = listener_ready

    cdef _count_causes(self, int n):
        cdef unsigned long i
        causes = set()
        for i in range(self.nfds if n > 0 else 0):
            if self.fds[i].revents:
                fd = self.fds[i].fd
                causes.add(f"kick{i}" if i < 3 else "wake" if i == 3 else "listener" if fd == self.mux.listener_fd
                           else "client" if fd in self.mux.clients else "stream")
        self.wake_causes["+".join(sorted(causes)) or "timeout"] += 1

    cdef _update_poll(self):
        """The poll set after the muxer's current interest: the listener, clients waiting
        for their CONNECT line, and each stream with a mask (Muxer.poll_mask)."""
        cdef Muxer mux = self.mux
        cdef Connection c
        cdef unsigned long i = NFIXED + 1
        cdef int mask
        self._grow(NFIXED + 1 + len(mux.clients) + len(mux.by_fd))
        self.fds[NFIXED].fd, self.fds[NFIXED].events, self.fds[NFIXED].revents = mux.listener_fd, C_POLLIN, 0
        for fd in mux.clients:
            self.fds[i].fd, self.fds[i].events, self.fds[i].revents = fd, C_POLLIN, 0
            i += 1
        for c in mux.by_fd.values():
            mask = mux.poll_mask(c)
            if mask:
                self.fds[i].fd, self.fds[i].events, self.fds[i].revents = c.fd, mask, 0
                i += 1
        self.nfds = i

    cpdef bint turn(self, double deadline=-1) except? -1:
        """One round of work after a wake-up; True to raise one interrupt for all of it:
        virtio-mmio has one interrupt line and the driver's handler looks at every queue,
        and each interrupt costs the guest two register exits.

        Work the guest waits for (stream data either way, a reply it expects, a transport
        reset) raises the interrupt at once, together with any deferred one. Work it does
        not wait for defers it: completed tx packets that were only headers (RESPONSE, RST,
        CREDIT_UPDATE...) by up to TX_IRQ_DELAY, a host close's SHUTDOWN by up to
        CLOSE_IRQ_DELAY. The usual case for the latter is a client that connects right
        after closing its previous stream: the SHUTDOWN and the new REQUEST then reach the
        guest in one interrupt and its RST and RESPONSE come back in one kick, where each
        would otherwise cost a hand-off between the guest and this thread."""
        cdef Muxer mux = self.mux
        cdef bint notify = False, tx = False, reset = False, urgent
        cdef double due, now
        act = self.act
        if deadline >= 0:
            now = monotonic()
            if deadline <= now:
                mux.expire(now)
        if not mux.control:
            mux.rx_urgent = False  # else replies queued earlier still wait for rx buffers
        if self.dev._reset_event_pending:
            reset = self.dev._send_reset_event(act)
        if mux.tx_pending:
            tx = mux.process_tx(act)
        if mux.fresh:
            mux.retry_fresh()
        notify = mux.process_rx(act)
        urgent = reset or mux.tx_data or mux.rx_urgent
        if urgent and (notify or tx or reset or self.owed >= 0):
            self.owed = -1
            return True
        if notify or tx:
            due = monotonic() + (CLOSE_IRQ_DELAY if notify else TX_IRQ_DELAY)
            if self.owed < 0 or due < self.owed:
                self.owed = due
            return False
        if self.owed >= 0 and monotonic() >= self.owed:
            self.owed = -1
            return True
        return False

    cpdef int timeout_ms(self, double deadline=-1):
        """Poll timeout in ms: the next connect deadline (`deadline`, -1 for none) or a
        deferred interrupt, whichever comes first; -1 for neither."""
        cdef double due = deadline
        cdef int ms
        if self.owed >= 0 and (due < 0 or self.owed < due):
            due = self.owed
        if due < 0:
            return -1
        ms = <int>((due - monotonic()) * 1000) + 1
        return ms if ms > 0 else 0
