# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""virtio-net's hot path in C: frames between the TAP and the queues, GIL released.

`tx(queue, tap_fd)`: each tx chain (device-readable buffers, vnet header + frame) is one
writev to the TAP, straight from guest memory. `rx(queue, tap_fd, need)` (MRG_RXBUF):
gathers available rx chains until they hold `need` bytes (the largest frame the TAP may
hand us), reads one frame straight into all of them with one readv, returns the chains
the frame filled (num_buffers written into its header) and leaves the others available.
Every buffer is a host pointer from the queue's translate() (checked against guest RAM).
Whatever does not fit these shapes (readable rx buffers, too little room, malformed
chains) is left unconsumed for the Python path in device.py, which judges and counts it.
"""
from libc.errno cimport errno, EAGAIN, EINTR
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from devices.virtio._queue cimport PEEK_CHAIN, PEEK_EMPTY, SplitQueue

cdef extern from "sys/uio.h" nogil:
    cdef struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t readv(int fd, const iovec *iov, int iovcnt)
    ssize_t writev(int fd, const iovec *iov, int iovcnt)

DEF F_WRITE = 2
DEF HDR = 12
DEF NUM_BUFFERS = 10
DEF MAX_FRAME = 65562
DEF MAX_IOV = 256
DEF MAX_CHAINS = 128

# why tx() / rx() stopped
DEF S_EMPTY = 0     # no (more) chains
DEF S_SLOW = 1      # the next chain (or the room) is for the Python path
DEF S_BLOCKED = 2   # tx: the TAP would block; rx: the TAP has no frame (or failed: see errors)
STOP_EMPTY, STOP_SLOW, STOP_BLOCKED = S_EMPTY, S_SLOW, S_BLOCKED


def tx(SplitQueue q, int fd):
    """Returns (stop, packets, bytes, errors)."""
    cdef iovec iov[MAX_IOV]
    cdef uint16_t head
    cdef uint32_t count, i
    cdef uint64_t total, packets = 0, nbytes = 0, errors = 0
    cdef int rc, stop = S_EMPTY
    cdef ssize_t r
    cdef uint8_t *p
    with nogil:
        while True:
            rc = q.peek(&head, &count)
            if rc != PEEK_CHAIN:
                stop = S_EMPTY if rc == PEEK_EMPTY else S_SLOW
                break
            total = 0
            if count > MAX_IOV:
                stop = S_SLOW
                break
            for i in range(count):
                p = q.translate(q._addrs[i], q._lens[i])
                if p == NULL or q._flags[i] & F_WRITE:
                    break
                iov[i].iov_base = p
                iov[i].iov_len = q._lens[i]
                total += q._lens[i]
            else:
                i = count
            if i != count or total < HDR or total > MAX_FRAME:
                stop = S_SLOW
                break
            r = writev(fd, iov, count)
            while r < 0 and errno == EINTR:
                r = writev(fd, iov, count)
            if r < 0 and errno == EAGAIN:
                stop = S_BLOCKED
                break
            if r < 0:
                errors += 1  # e.g. the TAP is down: the frame is lost, as on a wire
            else:
                packets += 1
                nbytes += total - HDR
            q.consume()
            q.put_used(head, 0)
    return stop, packets, nbytes, errors


cdef int gather(SplitQueue q, uint32_t need, iovec *iov, int *niov, uint16_t *heads,
                uint32_t *rooms, int *nchains, int *stop) noexcept nogil:
    """Available writable chains into `iov` until they hold `need` bytes; the room found."""
    cdef uint16_t head
    cdef uint32_t count, i, room = 0, chain_room
    cdef int rc, k = 0, n = 0
    cdef uint8_t *p
    stop[0] = S_EMPTY
    while room < need and k < MAX_CHAINS:
        rc = q.peek_at(k, &head, &count)
        if rc != PEEK_CHAIN:
            stop[0] = S_EMPTY if rc == PEEK_EMPTY else S_SLOW
            break
        if n + count > MAX_IOV or (k == 0 and q._lens[0] < HDR):
            stop[0] = S_SLOW
            break
        chain_room = 0
        for i in range(count):
            p = q.translate(q._addrs[i], q._lens[i])
            if p == NULL or not q._flags[i] & F_WRITE:
                stop[0] = S_SLOW
                break
            iov[n + i].iov_base = p
            iov[n + i].iov_len = q._lens[i]
            chain_room += q._lens[i]
        if stop[0] == S_SLOW:
            break
        n += count
        heads[k] = head
        rooms[k] = chain_room
        room += chain_room
        k += 1
    niov[0] = n
    nchains[0] = k
    return room


def rx(SplitQueue q, int fd, uint32_t need):
    """Returns (stop, packets, bytes, errors)."""
    cdef iovec iov[MAX_IOV]
    cdef uint16_t heads[MAX_CHAINS]
    cdef uint32_t rooms[MAX_CHAINS]
    cdef uint32_t room, left, length
    cdef uint16_t used
    cdef int niov, nchains, stop = S_EMPTY, i
    cdef ssize_t r
    cdef uint64_t packets = 0, nbytes = 0, errors = 0
    with nogil:
        while True:
            room = gather(q, need, iov, &niov, heads, rooms, &nchains, &stop)
            if nchains == 0:
                break
            if room < need:
                stop = S_SLOW  # the Python path takes it from here (bounce buffer)
                break
            r = readv(fd, iov, niov)
            while r < 0 and errno == EINTR:
                r = readv(fd, iov, niov)
            if r < 0:
                errors += errno != EAGAIN
                stop = S_BLOCKED
                break
            left = <uint32_t>r
            used = 0
            while used == 0 or left > 0:
                used += 1
                left -= rooms[used - 1] if rooms[used - 1] < left else left
            memcpy(<uint8_t *>iov[0].iov_base + NUM_BUFFERS, &used, 2)
            left = <uint32_t>r
            for i in range(used):
                length = rooms[i] if rooms[i] < left else left
                left -= length
                q.consume()
                q.put_used(heads[i], length)
            packets += 1
            nbytes += <uint64_t>r - HDR if r > HDR else 0
    return stop, packets, nbytes, errors
