# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled split virtqueue: same API as `queue_py.SplitQueue`, descriptor walking in C.

The avail-ring read, the descriptor-chain walk (direct and indirect tables) and the
used-ring update run with the GIL released over the ring views taken at setup. Bounds
are explicit rather than Cython's: every guest index is checked against the queue or
table size, and chain length is capped at the table size (which also catches loops).
Buffers become views through GuestMemory.view() (with the GIL) so they lie in guest RAM.
Assumes a little-endian host (x86-64, like the VMM).
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

from .errors import ChainError, QueueCorrupt, QueueError
from .ring import Chain, QueueState, check_layout

cdef extern from *:
    """
    #include <stdint.h>
    static inline uint16_t mm_load16(const unsigned char *p) {
        uint16_t v; __atomic_load((const uint16_t *)p, &v, __ATOMIC_ACQUIRE); return v; }
    static inline void mm_store16(unsigned char *p, uint16_t v) {
        __atomic_store((uint16_t *)p, &v, __ATOMIC_RELEASE); }
    static inline void mm_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    """
    uint16_t mm_load16(const unsigned char *p) nogil
    void mm_store16(unsigned char *p, uint16_t v) nogil
    void mm_fence() nogil

DEF F_NEXT = 1
DEF F_WRITE = 2
DEF F_INDIRECT = 4
DEF AVAIL_NO_INTERRUPT = 1

# walk() results
DEF W_OK = 0
DEF W_INDIRECT = 1
DEF E_TOO_LONG = -1
DEF E_NEXT = -2
DEF E_INDIRECT_POS = -3
DEF E_NESTED = -4

_MESSAGES = {
    E_TOO_LONG: "is longer than its table or loops",
    E_NEXT: "has a next index beyond its table",
    E_INDIRECT_POS: "has an indirect descriptor that is not alone at the head",
    E_NESTED: "has a nested indirect descriptor",
}


def _bytes(v):
    """The view as unsigned bytes (a GuestMemory may hand out 'c'-format views)."""
    m = memoryview(v)
    return m if m.format == "B" else m.cast("B")


cdef int walk(const uint8_t *table, uint32_t n, uint32_t start, bint direct,
              uint64_t *addrs, uint32_t *lens, uint16_t *flags, uint32_t *count) noexcept nogil:
    """Follow a chain in a descriptor table of `n` entries starting at `start`."""
    cdef uint32_t idx = start, c = 0
    cdef uint64_t a
    cdef uint32_t ln
    cdef uint16_t fl, nx
    while True:
        if c >= n:
            count[0] = c
            return E_TOO_LONG
        memcpy(&a, table + 16 * idx, 8)
        memcpy(&ln, table + 16 * idx + 8, 4)
        memcpy(&fl, table + 16 * idx + 12, 2)
        memcpy(&nx, table + 16 * idx + 14, 2)
        if fl & F_INDIRECT:
            if not direct:
                return E_NESTED
            if c != 0 or fl & F_NEXT:
                return E_INDIRECT_POS
            addrs[0] = a
            lens[0] = ln
            count[0] = 1
            return W_INDIRECT
        addrs[c] = a
        lens[c] = ln
        flags[c] = fl
        c += 1
        if not fl & F_NEXT:
            count[0] = c
            return W_OK
        if nx >= n:
            return E_NEXT
        idx = nx


cdef class SplitQueue:
    """One split virtqueue over guest memory (device side). Attributes: _queue.pxd."""

    def __cinit__(self):
        self._addrs = NULL
        self._lens = NULL
        self._flags = NULL
        self._regions = NULL
        self._nregions = 0

    def __init__(self, memory, size, desc_addr, avail_addr, used_addr, *,
                 event_idx=False, indirect=False, next_avail=0, next_used=0, num_added=0):
        self._views = check_layout(memory, size, desc_addr, avail_addr, used_addr)
        self.memory = memory
        self.size = size
        self.desc_addr, self.avail_addr, self.used_addr = desc_addr, avail_addr, used_addr
        self._dmv, self._amv, self._umv = [_bytes(v) for v in self._views]
        self._desc = &self._dmv[0]
        self._avail = &self._amv[0]
        self._used = &self._umv[0]
        self.event_idx = event_idx
        self.indirect = indirect
        self._next_avail = next_avail & 0xFFFF
        self._next_used = next_used & 0xFFFF
        self.num_added = num_added
        self._addrs = <uint64_t *>malloc(size * sizeof(uint64_t))
        self._lens = <uint32_t *>malloc(size * sizeof(uint32_t))
        self._flags = <uint16_t *>malloc(size * sizeof(uint16_t))
        if not self._addrs or not self._lens or not self._flags:
            raise MemoryError()
        self._map_regions(memory)

    def _map_regions(self, memory):
        """Host pointers of guest RAM for translate(): one per region (a GuestMemory's
        `regions`, else one region of `memory.size`), each checked by host_address().
        A memory without host_address() (a test double of views only) maps nothing: every
        translate() fails, so fast paths hand every chain to pop()."""
        if not hasattr(memory, "host_address"):
            return
        regs = getattr(memory, "regions", None)
        table = [(r.gpa, r.size) for r in regs] if regs else [(0, memory.size)]
        self._regions = <MemRegion *>malloc(len(table) * sizeof(MemRegion))
        if not self._regions:
            raise MemoryError()
        for i, (gpa, size) in enumerate(table):
            self._regions[i].gpa = gpa
            self._regions[i].size = size
            self._regions[i].host = <uint8_t *><size_t>memory.host_address(gpa, size)
        self._nregions = len(table)

    def __dealloc__(self):
        free(self._addrs)
        free(self._lens)
        free(self._flags)
        free(self._regions)

    # -- the C-level face (see _queue.pxd) ---------------------------------------------
    cdef uint8_t *translate(self, uint64_t gpa, uint64_t length) noexcept nogil:
        """Host pointer of [gpa, gpa+length) if it lies inside one RAM region, else NULL."""
        cdef int i
        cdef uint64_t off
        for i in range(self._nregions):
            if gpa >= self._regions[i].gpa:
                off = gpa - self._regions[i].gpa
                if off < self._regions[i].size and length <= self._regions[i].size - off:
                    return self._regions[i].host + off
        return NULL

    cdef int peek(self, uint16_t *head, uint32_t *count) noexcept nogil:
        """Walk the next available chain into the descriptor arrays without consuming it.
        PEEK_SLOW for anything pop() must judge (corrupt index, malformed chain)."""
        return self.peek_at(0, head, count)

    cdef int peek_at(self, uint16_t ahead, uint16_t *head, uint32_t *count) noexcept nogil:
        """peek() of the chain `ahead` places after the next one (nothing is consumed)."""
        cdef uint16_t idx, n, h
        cdef int rc
        cdef uint8_t *table
        cdef uint32_t length
        if self.event_idx:
            mm_fence()  # as in pending(): our avail_event store before the idx load
        idx = mm_load16(self._avail + 2)
        n = <uint16_t>(idx - self._next_avail)
        if n > self.size:
            return PEEK_SLOW
        if n <= ahead:
            return PEEK_EMPTY
        memcpy(&h, self._avail + 4 + 2 * (<uint16_t>(self._next_avail + ahead) % self.size), 2)
        if h >= self.size:
            return PEEK_SLOW
        rc = walk(self._desc, self.size, h, True, self._addrs, self._lens, self._flags, count)
        if rc == W_INDIRECT:
            length = self._lens[0]
            if not self.indirect or length == 0 or length % 16 or length // 16 > self.size:
                return PEEK_SLOW
            table = self.translate(self._addrs[0], length)
            if table == NULL:
                return PEEK_SLOW
            rc = walk(table, length // 16, 0, False, self._addrs, self._lens, self._flags, count)
        if rc < 0:
            return PEEK_SLOW
        head[0] = h
        return PEEK_CHAIN

    cdef void consume(self) noexcept nogil:
        """Take the chain peek() returned."""
        self._next_avail += 1
        if self.event_idx:
            mm_store16(self._used + 4 + 8 * self.size, self._next_avail)

    cdef void put_used(self, uint16_t head, uint32_t length) noexcept nogil:
        """add_used() for a head the caller checked (< size)."""
        cdef uint32_t h = head
        memcpy(self._used + 4 + 8 * (self._next_used % self.size), &h, 4)
        memcpy(self._used + 8 + 8 * (self._next_used % self.size), &length, 4)
        self._next_used += 1
        mm_store16(self._used + 2, self._next_used)
        self.num_added += 1

    @property
    def next_avail(self):
        return self._next_avail

    @property
    def next_used(self):
        return self._next_used

    def pending(self):
        """How many chains the driver has made available and we have not popped."""
        if self.event_idx:
            mm_fence()  # our avail_event store must be visible before we re-read avail idx
        cdef uint16_t idx = mm_load16(self._avail + 2)
        cdef uint16_t n = <uint16_t>(idx - self._next_avail)
        if n > self.size:
            raise QueueCorrupt(f"avail idx {idx} is {n} ahead of {self._next_avail} (queue size {self.size})")
        return n

    def pop(self):
        """The next available chain, or None. Raises ChainError (request consumed) or QueueCorrupt."""
        cdef uint16_t head
        cdef uint32_t count = 0
        cdef int rc
        cdef uint8_t[::1] table
        cdef uint32_t tlen
        if not self.pending():
            return None
        with nogil:
            memcpy(&head, self._avail + 4 + 2 * (self._next_avail % self.size), 2)
            self._next_avail += 1
            if self.event_idx:
                mm_store16(self._used + 4 + 8 * self.size, self._next_avail)
            rc = W_OK
            if head < self.size:
                rc = walk(self._desc, self.size, head, True, self._addrs, self._lens, self._flags, &count)
        if head >= self.size:
            raise ChainError(f"head index {head} >= queue size {self.size}", head)
        if rc == W_INDIRECT:
            rc = self._indirect(head, &count)
        if rc < 0:
            raise ChainError(f"chain {head} {_MESSAGES[rc]}", head)
        try:
            return self._resolve(head, count)
        except ValueError as e:
            raise ChainError(f"chain {head}: {e}", head) from None

    cdef object _resolve(self, uint16_t head, uint32_t count):
        """Same as ring.resolve, without building the intermediate triples."""
        cdef list readable = [], writable = []
        cdef uint32_t i
        view = self.memory.view
        for i in range(count):
            if self._flags[i] & F_WRITE:
                if self._lens[i]:
                    writable.append(view(self._addrs[i], self._lens[i]))
            else:
                if writable:
                    raise ValueError("device-readable descriptor after a device-writable one")
                if self._lens[i]:
                    readable.append(view(self._addrs[i], self._lens[i]))
        return Chain(head, readable, writable)

    cdef int _indirect(self, uint16_t head, uint32_t *count) except -100:
        cdef uint64_t addr = self._addrs[0]
        cdef uint32_t length = self._lens[0]
        cdef uint8_t[::1] table
        cdef int rc
        if not self.indirect:
            raise ChainError(f"chain {head}: indirect descriptor without VIRTIO_F_INDIRECT_DESC", head)
        if length == 0 or length % 16 or length // 16 > self.size:
            raise ChainError(f"chain {head}: bad indirect table length {length}", head)
        try:
            table = _bytes(self.memory.view(addr, length))
        except ValueError as e:
            raise ChainError(f"chain {head}: indirect table outside guest memory: {e}", head) from None
        with nogil:
            rc = walk(&table[0], length // 16, 0, False, self._addrs, self._lens, self._flags, count)
        return rc

    def undo_pop(self, count=1):
        """Put the last `count` popped chains back (the device could not serve them yet)."""
        self._next_avail -= <uint16_t>count
        if self.event_idx:
            mm_store16(self._used + 4 + 8 * self.size, self._next_avail)

    def add_used(self, head, length):
        """Return chain `head` to the driver with `length` bytes written."""
        if not 0 <= head < self.size or not 0 <= length <= 0xFFFFFFFF:
            raise QueueError(f"add_used({head}, {length}) out of range for queue size {self.size}")
        cdef uint32_t h = head, ln = length
        with nogil:
            memcpy(self._used + 4 + 8 * (self._next_used % self.size), &h, 4)
            memcpy(self._used + 8 + 8 * (self._next_used % self.size), &ln, 4)
            self._next_used += 1
            mm_store16(self._used + 2, self._next_used)
        self.num_added += 1

    def needs_notification(self):
        """Whether the driver wants an interrupt for the used entries added since last asked."""
        cdef uint64_t added = self.num_added
        cdef uint16_t used_event, old
        self.num_added = 0
        if not added:
            return False
        mm_fence()
        if not self.event_idx:
            return not (mm_load16(self._avail) & AVAIL_NO_INTERRUPT)
        if added >= 0x10000:
            return True
        used_event = mm_load16(self._avail + 4 + 2 * self.size)
        old = <uint16_t>(self._next_used - added)
        return <uint16_t>(self._next_used - used_event - 1) < <uint16_t>(self._next_used - old)

    def state(self):
        return QueueState(self.size, True, self.desc_addr, self.avail_addr, self.used_addr,
                          self._next_avail, self._next_used, self.num_added)
