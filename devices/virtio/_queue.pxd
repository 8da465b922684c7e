# The compiled split queue's C-level face, for device fast paths (block/_fast.pyx) that
# serve common requests without Python objects: peek a chain into the descriptor arrays,
# translate guest addresses to host pointers (bounds-checked against guest RAM), consume
# it and return it as used. Everything a fast path cannot take it leaves unconsumed for
# the Python path (pop()), which also reports errors.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    PEEK_EMPTY = 0
    PEEK_CHAIN = 1
    PEEK_SLOW = -1     # malformed, corrupt, or otherwise for the Python path to judge

cdef struct MemRegion:
    uint64_t gpa
    uint64_t size
    uint8_t *host

cdef class SplitQueue:
    cdef readonly object memory
    cdef readonly uint32_t size
    cdef readonly uint64_t desc_addr, avail_addr, used_addr
    cdef public bint event_idx, indirect
    cdef uint16_t _next_avail, _next_used
    cdef public uint64_t num_added
    cdef object _views
    cdef uint8_t[::1] _dmv, _amv, _umv
    cdef uint8_t *_desc
    cdef uint8_t *_avail
    cdef uint8_t *_used
    cdef uint64_t *_addrs
    cdef uint32_t *_lens
    cdef uint16_t *_flags
    cdef MemRegion *_regions
    cdef int _nregions

    cdef object _resolve(self, uint16_t head, uint32_t count)
    cdef int _indirect(self, uint16_t head, uint32_t *count) except -100
    cdef uint8_t *translate(self, uint64_t gpa, uint64_t length) noexcept nogil
    cdef int peek(self, uint16_t *head, uint32_t *count) noexcept nogil
    cdef int peek_at(self, uint16_t ahead, uint16_t *head, uint32_t *count) noexcept nogil
    cdef void consume(self) noexcept nogil
    cdef void put_used(self, uint16_t head, uint32_t length) noexcept nogil
