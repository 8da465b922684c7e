# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""virtio-blk's hot path in C: IN, OUT and FLUSH requests served with the GIL released.

`serve(queue, fd, capacity, read_only)` takes requests off the compiled queue while they
are the plain kind: a 16-byte header at the start of the first (device-readable)
descriptor, data buffers all readable (OUT) or all writable (IN), and one status byte at
the end of the last descriptor. Each guest buffer is a host pointer from the queue's
translate() (checked against guest RAM), the sector range is checked against the
capacity, and preadv/pwritev go straight between the file and guest memory. Anything
else (other request types, odd layouts, malformed chains) is left unconsumed for the
Python path (`request.py`), which judges and counts it. Returns the counts of what it did.
"""
from libc.errno cimport errno
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from posix.unistd cimport fdatasync

from devices.virtio._queue cimport PEEK_CHAIN, PEEK_EMPTY, SplitQueue

cdef extern from "sys/uio.h" nogil:
    cdef struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t preadv(int fd, const iovec *iov, int iovcnt, long offset)
    ssize_t pwritev(int fd, const iovec *iov, int iovcnt, long offset)

DEF F_WRITE = 2
DEF T_IN = 0
DEF T_OUT = 1
DEF T_FLUSH = 4
DEF S_OK = 0
DEF S_IOERR = 1
DEF SECTOR = 512
DEF HDR = 16
DEF MAX_IOV = 260

# serve() stops for one of these
STOP_EMPTY = 0
STOP_SLOW = 1


cdef struct Counts:
    uint64_t reads, writes, read_bytes, write_bytes, flushes, io_errors


cdef int build(SplitQueue q, uint32_t count, iovec *iov, int *niov, uint8_t **status,
               uint8_t *header, bint *writable) noexcept nogil:
    """For the plain layout Linux uses (a 16-byte readable header buffer, data buffers of
    one direction, a 1-byte writable status buffer): copy the header out, the data
    buffers into `iov`, the status byte's pointer. -1: not that layout."""
    cdef uint32_t i, last = count - 1
    cdef uint8_t *p
    cdef uint16_t direction
    if count < 2 or count > MAX_IOV or q._flags[0] & F_WRITE or q._lens[0] != HDR:
        return -1
    if not q._flags[last] & F_WRITE or q._lens[last] != 1:
        return -1
    p = q.translate(q._addrs[0], HDR)
    status[0] = q.translate(q._addrs[last], 1)
    if p == NULL or status[0] == NULL:
        return -1
    memcpy(header, p, HDR)
    direction = q._flags[1] & F_WRITE if count > 2 else 0
    for i in range(1, last):
        p = q.translate(q._addrs[i], q._lens[i])
        if p == NULL or (q._flags[i] & F_WRITE) != direction:
            return -1
        iov[i - 1].iov_base = p
        iov[i - 1].iov_len = q._lens[i]
    niov[0] = last - 1
    writable[0] = direction != 0
    return 0


cdef int do_io(int fd, iovec *iov, int niov, uint64_t offset, bint write) noexcept nogil:
    """The whole transfer (short transfers continued); 0, or -1 on an I/O error. Reads past
    the end of a file shorter than a sector multiple give zeros."""
    cdef ssize_t r
    cdef int i = 0
    while i < niov:
        if write:
            r = pwritev(fd, iov + i, niov - i, offset)
        else:
            r = preadv(fd, iov + i, niov - i, offset)
        if r < 0:
            if errno == 4:  # EINTR
                continue
            return -1
        if r == 0:
            if write:
                return -1
            while i < niov:
                memset(iov[i].iov_base, 0, iov[i].iov_len)
                i += 1
            return 0
        offset += r
        while i < niov and <size_t>r >= iov[i].iov_len:
            r -= iov[i].iov_len
            i += 1
        if i < niov and r:
            iov[i].iov_base = <uint8_t *>iov[i].iov_base + r
            iov[i].iov_len -= r
    return 0


cdef uint32_t one(SplitQueue q, uint32_t count, int fd, uint64_t capacity, bint read_only,
                  Counts *c) noexcept nogil:
    """Serve the peeked chain; returns used length + 1, or 0 if it is not for the fast path."""
    cdef iovec iov[MAX_IOV]
    cdef int niov = 0, i
    cdef uint8_t *status = NULL
    cdef uint8_t header[HDR]
    cdef bint writable = 0
    cdef uint32_t rtype
    cdef uint64_t sector, nbytes = 0
    cdef uint8_t st = S_OK
    if build(q, count, iov, &niov, &status, header, &writable) < 0:
        return 0
    memcpy(&rtype, header, 4)
    memcpy(&sector, header + 8, 8)
    for i in range(niov):
        nbytes += iov[i].iov_len
    if rtype == T_FLUSH:
        c.flushes += 1
        if not read_only and fdatasync(fd) != 0:
            st = S_IOERR
        status[0] = st
        return 2
    if (rtype == T_IN) != (writable != 0) or (rtype != T_IN and rtype != T_OUT):
        return 0  # other types, or data buffers of the wrong kind: the Python path judges
    if nbytes % SECTOR or sector > capacity or nbytes // SECTOR > capacity - sector:
        st = S_IOERR
    elif rtype == T_OUT and read_only:
        st = S_IOERR
    elif do_io(fd, iov, niov, sector * SECTOR, rtype == T_OUT) < 0:
        st = S_IOERR
    if st != S_OK:
        c.io_errors += 1
        status[0] = st
        return 2
    status[0] = S_OK
    if rtype == T_IN:
        c.reads += 1
        c.read_bytes += nbytes
        return <uint32_t>nbytes + 2
    c.writes += 1
    c.write_bytes += nbytes
    return 2


def serve(SplitQueue q, int fd, uint64_t capacity, bint read_only):
    """Serve plain requests until the queue is empty or the next needs the Python path.
    Returns (stop, served, reads, writes, read_bytes, write_bytes, flushes, io_errors)."""
    cdef Counts c
    cdef uint16_t head
    cdef uint32_t count, used
    cdef int rc
    cdef uint64_t served = 0
    memset(&c, 0, sizeof(c))
    with nogil:
        while True:
            rc = q.peek(&head, &count)
            if rc != PEEK_CHAIN:
                break
            used = one(q, count, fd, capacity, read_only, &c)
            if used == 0:
                rc = -1
                break
            q.consume()
            q.put_used(head, used - 1)
            served += 1
    stop = STOP_EMPTY if rc == PEEK_EMPTY else STOP_SLOW
    return stop, served, c.reads, c.writes, c.read_bytes, c.write_bytes, c.flushes, c.io_errors
