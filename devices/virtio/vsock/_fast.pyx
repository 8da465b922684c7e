# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""virtio-vsock's per-packet work in C, GIL released: no Python object per packet.

`rx_stream_c(queue, fd, header, credit, ...)` (C level, _fast.pxd): host → guest for one
established stream, one readv() into up to MAX_CHAINS rx chains.

`tx_stream(queue, fd, guest_cid, src_port, dst_port, limit)`: guest → host for one
established stream: consecutive well-formed RW packets of that stream are sent with one
sendmsg() per batch, payload straight from guest memory. A packet the socket takes only
in part is left unconsumed with how much was sent, so the Python path buffers the rest.

`tx_packet()`, `decode()`, `pack()` / `pack_into()` (C level, _fast.pxd): one tx chain's
header and payload, and the wire header read and written, for the muxer (muxer.pyx).
`accept_connects(fd)` / `take_connect(fd, prior)`: the host side's `CONNECT <port>\n`
handshake, one recv() per client (no MSG_PEEK round): bytes after the line come back to
the caller as the start of the stream. `connect_unix`, `send_bytes`, `send_views` and
`shutdown_wr` are the stream sockets' other calls on raw fds (MSG_NOSIGNAL: a host peer
that went away is an EPIPE, never a signal), so the muxer keeps no socket objects.
Every buffer is a host pointer from the queue's translate() (checked against guest RAM).
"""
from libc.errno cimport errno, EAGAIN, EINTR, EINPROGRESS, ENAMETOOLONG
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

import os

from devices.virtio._queue cimport PEEK_CHAIN, PEEK_EMPTY, SplitQueue

cdef extern from "sys/socket.h" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int accept4(int fd, void *addr, void *addrlen, int flags)
    int socket(int domain, int type, int protocol)
    int connect(int fd, const void *addr, unsigned int addrlen)
    int shutdown(int fd, int how)
    int AF_UNIX
    int SOCK_STREAM
    int SHUT_WR
    int SOCK_NONBLOCK
    int SOCK_CLOEXEC
    int MSG_PEEK
    cdef struct msghdr:
        void *msg_name
        unsigned int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

cdef extern from "sys/un.h" nogil:
    cdef struct sockaddr_un:
        unsigned short sun_family
        char sun_path[108]

cdef extern from "unistd.h" nogil:
    int close(int fd)

DEF F_WRITE = 2
DEF OFF_SRC_CID = 0
DEF OFF_DST_CID = 8
DEF OFF_SRC_PORT = 16
DEF OFF_DST_PORT = 20
DEF OFF_LEN = 24
DEF OFF_TYPE = 28
DEF OFF_OP = 30
DEF OFF_FLAGS = 32
DEF OFF_BUF_ALLOC = 36
DEF OFF_FWD_CNT = 40
DEF OP_RW = 5
DEF TYPE_STREAM = 1
DEF HOST_CID = 2
DEF MAX_CHAINS = 64   # chains filled or packets sent per system call
DEF MAX_LINE = 32     # CONNECT line (MAX_CONNECT_LINE in __init__.py)
DEF SHORT_SEND = 4096  # send_bytes() up to this keeps the GIL
# _SHORT_CALLS: the connection set-up and teardown calls (accept4, the CONNECT line's
# recv, socket/connect to a Unix listener, shutdown, a short send) never block here and
# take a microsecond: they keep the GIL. Letting it go would hand it to any thread waiting
# for it, and taking it back can then wait up to the interpreter's switch interval (5 ms)
# in the middle of a connect. Data copies (readv/sendmsg of stream bytes) do let go.

# S_*: the stop reasons (_fast.pxd)
# take_connect() results besides a port
CONNECT_PENDING, CONNECT_BAD, CONNECT_GONE = -1, -2, -3
CONNECT_MAX_LINE = MAX_LINE


cdef int _rx_chain(SplitQueue q, uint16_t ahead, iovec *iov, int *niov, uint32_t want,
                   uint16_t *head, uint8_t **first, uint32_t *cap) noexcept nogil:
    """Add rx chain `ahead`'s payload areas (at most `want` bytes) to iov[niov...].
    S_OK: added (cap = its payload bytes); else the S_* reason it was not."""
    cdef uint32_t count, i, room, take, start = niov[0]
    cdef uint8_t *p
    cdef int rc = q.peek_at(ahead, head, &count)
    if rc != PEEK_CHAIN:
        return S_EMPTY if rc == PEEK_EMPTY else S_SLOW
    if count > MAX_IOV - start or q._lens[0] < HDR_LEN or not q._flags[0] & F_WRITE:
        return S_SLOW
    first[0] = q.translate(q._addrs[0], q._lens[0])
    if first[0] == NULL:
        return S_SLOW
    cap[0] = 0
    room = q._lens[0] - HDR_LEN
    if room and want:
        take = room if room < want else want
        iov[niov[0]].iov_base = first[0] + HDR_LEN
        iov[niov[0]].iov_len = take
        niov[0] += 1
        want -= take
        cap[0] += take
    for i in range(1, count):
        p = q.translate(q._addrs[i], q._lens[i])
        if p == NULL or not q._flags[i] & F_WRITE:
            niov[0] = start
            return S_SLOW
        if want and q._lens[i]:
            take = q._lens[i] if q._lens[i] < want else want
            iov[niov[0]].iov_base = p
            iov[niov[0]].iov_len = take
            niov[0] += 1
            want -= take
            cap[0] += take
    if cap[0] == 0:
        niov[0] = start
        return S_SLOW  # no room for data: the Python path judges
    return S_OK


cdef int rx_stream_c(SplitQueue q, int fd, uint8_t *hdr, uint32_t credit, uint64_t *packets,
                     uint64_t *total) noexcept nogil:
    """Host → guest for one established stream: one readv() from `fd` straight into the
    payload areas of up to MAX_CHAINS available rx chains (after each 44-byte header),
    then each filled chain gets `hdr` (the template: ports, buf_alloc, fwd_cnt, op RW)
    with its length. Stops at the credit, when the socket has nothing (EAGAIN, or a short
    read) or is at EOF, or when a chain does not fit (left for the Python path). Adds to
    *packets and *total, returns the stop reason. Call it without the GIL."""
    cdef iovec iov[MAX_IOV]
    cdef uint16_t heads[MAX_CHAINS]
    cdef uint8_t *firsts[MAX_CHAINS]
    cdef uint32_t caps[MAX_CHAINS]
    cdef uint32_t want, length, asked, got
    cdef int rc, niov, nch, i, stop = S_EMPTY
    cdef ssize_t r
    while True:
        if credit == 0:
            stop = S_CREDIT
            break
        nch, niov, want, rc = 0, 0, credit, 0
        while nch < MAX_CHAINS and want:
            rc = _rx_chain(q, nch, iov, &niov, want, &heads[nch], &firsts[nch], &caps[nch])
            if rc != S_OK:
                break
            want -= caps[nch]
            nch += 1
        if nch == 0:
            stop = rc
            break
        asked = credit - want
        r = readv(fd, iov, niov)
        while r < 0 and errno == EINTR:
            r = readv(fd, iov, niov)
        if r < 0:
            stop = S_BLOCKED if errno == EAGAIN else S_ERROR
            break
        if r == 0:
            stop = S_EOF
            break
        got = <uint32_t>r
        credit -= got
        total[0] += got
        for i in range(nch):
            if r == 0:
                break
            length = caps[i] if caps[i] < r else <uint32_t>r
            r -= length
            memcpy(hdr + OFF_LEN, &length, 4)
            memcpy(firsts[i], hdr, HDR_LEN)
            q.consume()
            q.put_used(heads[i], HDR_LEN + length)
            packets[0] += 1
        if got < asked:
            stop = S_BLOCKED  # a short read: the socket is drained for now (poll says when not)
            break
    return stop


cdef int tx_packet(SplitQueue q, uint16_t ahead, uint8_t *hdr, uint16_t *head, iovec *iov,
                   int *niov) noexcept nogil:
    """Peek tx chain `ahead`: its header into `hdr`, its payload (the header's length,
    which must be there) onto iov[niov...]. S_OK, or the S_* reason it is not for C."""
    cdef uint32_t count, i, length, start = niov[0]
    cdef uint64_t have = 0, skip = HDR_LEN
    cdef uint8_t *p
    cdef int rc = q.peek_at(ahead, head, &count)
    if rc != PEEK_CHAIN:
        return S_EMPTY if rc == PEEK_EMPTY else S_SLOW
    if count > MAX_IOV - start or q._lens[0] < HDR_LEN or q._flags[0] & F_WRITE:
        return S_SLOW
    p = q.translate(q._addrs[0], q._lens[0])
    if p == NULL:
        return S_SLOW
    memcpy(hdr, p, HDR_LEN)
    memcpy(&length, hdr + OFF_LEN, 4)
    for i in range(count):
        if i:
            p = q.translate(q._addrs[i], q._lens[i])
        if p == NULL or q._flags[i] & F_WRITE:
            niov[0] = start
            return S_SLOW
        if q._lens[i] > skip and have < length:
            iov[niov[0]].iov_base = p + skip
            iov[niov[0]].iov_len = q._lens[i] - skip
            if iov[niov[0]].iov_len > length - have:
                iov[niov[0]].iov_len = length - have
            have += iov[niov[0]].iov_len
            niov[0] += 1
        skip = skip - q._lens[i] if skip > q._lens[i] else 0
    if have != length:
        niov[0] = start
        return S_SLOW  # the header claims more than the chain holds: the Python path judges
    return S_OK


cdef void decode(const uint8_t *hdr, Header *h) noexcept nogil:
    """The little-endian wire header (virtio_vsock.h) into `h` (x86: no swaps)."""
    memcpy(&h.src_cid, hdr + OFF_SRC_CID, 8)
    memcpy(&h.dst_cid, hdr + OFF_DST_CID, 8)
    memcpy(&h.src_port, hdr + OFF_SRC_PORT, 4)
    memcpy(&h.dst_port, hdr + OFF_DST_PORT, 4)
    memcpy(&h.len, hdr + OFF_LEN, 4)
    memcpy(&h.type, hdr + OFF_TYPE, 2)
    memcpy(&h.op, hdr + OFF_OP, 2)
    memcpy(&h.flags, hdr + OFF_FLAGS, 4)
    memcpy(&h.buf_alloc, hdr + OFF_BUF_ALLOC, 4)
    memcpy(&h.fwd_cnt, hdr + OFF_FWD_CNT, 4)


cdef bytes pack(uint64_t src_cid, uint64_t dst_cid, uint32_t src_port, uint32_t dst_port, uint32_t length,
                uint16_t op, uint32_t flags, uint32_t buf_alloc, uint32_t fwd_cnt):
    """A stream packet's header as 44 bytes (pack_into), for the muxer's control queue."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, HDR_LEN)
    pack_into(<uint8_t *>PyBytes_AS_STRING(out), src_cid, dst_cid, src_port, dst_port, length, op, flags,
              buf_alloc, fwd_cnt)
    return out


cdef void pack_into(uint8_t *p, uint64_t src_cid, uint64_t dst_cid, uint32_t src_port, uint32_t dst_port,
                    uint32_t length, uint16_t op, uint32_t flags, uint32_t buf_alloc, uint32_t fwd_cnt) noexcept nogil:
    """decode() the other way: a stream packet's wire header into p[0:44] (type STREAM),
    in C where struct.pack would cost a Python call per packet."""
    cdef uint16_t type_ = TYPE_STREAM
    memcpy(p + OFF_SRC_CID, &src_cid, 8)
    memcpy(p + OFF_DST_CID, &dst_cid, 8)
    memcpy(p + OFF_SRC_PORT, &src_port, 4)
    memcpy(p + OFF_DST_PORT, &dst_port, 4)
    memcpy(p + OFF_LEN, &length, 4)
    memcpy(p + OFF_TYPE, &type_, 2)
    memcpy(p + OFF_OP, &op, 2)
    memcpy(p + OFF_FLAGS, &flags, 4)
    memcpy(p + OFF_BUF_ALLOC, &buf_alloc, 4)
    memcpy(p + OFF_FWD_CNT, &fwd_cnt, 4)


cdef bint _is_rw_of(uint8_t *hdr, uint64_t guest_cid, uint32_t src_port, uint32_t dst_port,
                    uint64_t limit) noexcept nogil:
    cdef Header h
    decode(hdr, &h)
    return (h.op == OP_RW and h.type == TYPE_STREAM and h.src_cid == guest_cid and h.dst_cid == HOST_CID
            and h.src_port == src_port and h.dst_port == dst_port and h.len <= limit)


def tx_stream(SplitQueue q, int fd, uint64_t guest_cid, uint32_t src_port, uint32_t dst_port, uint64_t limit):
    """`limit`: the most payload one packet may carry (our credit). Returns (stop, packets,
    bytes, partial, buf_alloc, fwd_cnt): `partial` bytes of the unconsumed next packet
    already went to the socket (S_BLOCKED); buf_alloc/fwd_cnt are the guest's credit
    fields of the last packet consumed (0, 0 if none)."""
    cdef iovec iov[MAX_IOV]
    cdef msghdr msg
    cdef uint8_t hdr[HDR_LEN]
    cdef uint16_t heads[MAX_CHAINS]
    cdef uint32_t lens[MAX_CHAINS]
    cdef uint32_t bufs[MAX_CHAINS]
    cdef uint32_t fwds[MAX_CHAINS]
    cdef uint32_t buf_alloc = 0, fwd_cnt = 0
    cdef uint64_t packets = 0, total = 0, partial = 0, batch, sent
    cdef int rc, n, niov, i, start, stop = S_EMPTY
    cdef ssize_t r
    with nogil:
        while True:
            n, niov, batch, rc = 0, 0, 0, 0
            while n < MAX_CHAINS:
                start = niov
                rc = tx_packet(q, n, hdr, &heads[n], iov, &niov)
                if rc != S_OK:
                    break
                if not _is_rw_of(hdr, guest_cid, src_port, dst_port, limit):
                    niov = start  # not ours to send: leave its payload out of the batch
                    rc = S_SLOW  # another stream or op, or beyond our credit: the Python path
                    break
                memcpy(&lens[n], hdr + OFF_LEN, 4)
                memcpy(&bufs[n], hdr + OFF_BUF_ALLOC, 4)
                memcpy(&fwds[n], hdr + OFF_FWD_CNT, 4)
                batch += lens[n]
                n += 1
            if n == 0:
                stop = rc
                break
            r = 0
            if batch:
                msg.msg_name = NULL
                msg.msg_namelen = 0
                msg.msg_iov = iov
                msg.msg_iovlen = niov
                msg.msg_control = NULL
                msg.msg_controllen = 0
                msg.msg_flags = 0
                r = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
                while r < 0 and errno == EINTR:
                    r = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
                if r < 0 and errno != EAGAIN:
                    stop = S_ERROR
                    break
                if r < 0:
                    r = 0
            sent = <uint64_t>r
            for i in range(n):
                if sent < lens[i]:
                    break
                sent -= lens[i]
                buf_alloc, fwd_cnt = bufs[i], fwds[i]
                q.consume()
                q.put_used(heads[i], 0)
                packets += 1
                total += lens[i]
            else:
                if rc != S_OK:
                    stop = rc  # the batch ended at an empty queue or a packet not for us
                    break
                continue
            stop = S_BLOCKED
            partial = sent
            break
    return stop, packets, total, partial, buf_alloc, fwd_cnt


cdef bint _space(uint8_t c) noexcept nogil:
    return c == 32 or 9 <= c <= 13  # what bytes.strip() strips


cdef long long _parse_connect(const uint8_t *buf, int n) noexcept nogil:
    """The port of line buf[0:n] (`CONNECT <digits>`, blanks around allowed), or CONNECT_BAD."""
    cdef int a = 0, b = n, i
    cdef uint64_t port = 0
    while a < b and _space(buf[a]):
        a += 1
    while b > a and _space(buf[b - 1]):
        b -= 1
    if b - a < 9 or memcmp(buf + a, b"CONNECT ", 8) != 0:
        return -2
    for i in range(a + 8, b):
        if not 48 <= buf[i] <= 57:
            return -2
        port = port * 10 + (buf[i] - 48)
        if port > 0xFFFFFFFFULL:
            return -2
    return <long long>port


def take_connect(int fd, bytes prior=b""):
    """Read client `fd`'s `CONNECT <port>\\n` line with one recv() of at most MAX_LINE
    bytes, `prior` being what earlier calls read of it. Returns (port, rest) with `rest`
    the stream bytes that came after the line (usually b""); (CONNECT_PENDING, partial)
    while no whole line is there (pass `partial` as `prior` next time); (CONNECT_GONE,
    None) if the client closed or failed, or sent MAX_LINE bytes without a newline;
    (CONNECT_BAD, None) for a line that is not that one. On the last two the caller hangs up."""
    cdef uint8_t buf[MAX_LINE]
    cdef Py_ssize_t have = len(prior)
    cdef ssize_t r
    cdef int i, nl = -1, total
    cdef long long port
    if have >= MAX_LINE:
        return CONNECT_GONE, None
    memcpy(buf, <const char *>prior, have)
    r = recv(fd, buf + have, MAX_LINE - have, MSG_DONTWAIT)  # with the GIL: see _SHORT_CALLS
    if r < 0:
        return (CONNECT_PENDING, prior) if errno == EAGAIN or errno == EINTR else (CONNECT_GONE, None)
    if r == 0:
        return CONNECT_GONE, None
    total = <int>(have + r)
    for i in range(total):
        if buf[i] == 10:
            nl = i
            break
    if nl < 0:
        return (CONNECT_GONE, None) if total >= MAX_LINE else (CONNECT_PENDING, (<char *>buf)[:total])
    port = _parse_connect(buf, nl + 1)
    if port < 0:
        return CONNECT_BAD, None
    return port, (<char *>buf)[nl + 1:total]


def accept_connects(int fd, int limit=-1):
    """Accept the pending clients on listener `fd` (until EAGAIN, or `limit` of them if
    that is not -1; non-blocking and close-on-exec fds) and read each one's CONNECT line
    at once (take_connect). Returns (clients, bad): clients as (fd, port or
    CONNECT_PENDING, rest) to keep; clients that were gone or sent a bad line are closed
    here, `bad` counting the latter. Stops at the limit, EAGAIN or any other accept
    error (poll reports the listener again while clients are pending)."""
    cdef int c, bad = 0, taken = 0
    out = []
    while limit < 0 or taken < limit:
        taken += 1
        c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
        while c < 0 and errno == EINTR:
            c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if c < 0:
            return out, bad
        port, rest = take_connect(c)
        if port == CONNECT_BAD or port == CONNECT_GONE:
            if port == CONNECT_BAD:
                bad += 1
            close(c)
        else:
            out.append((c, port, rest))
    return out, bad


cdef _raise_errno(int err):
    raise OSError(err, os.strerror(err))


def connect_unix(bytes path):
    """A non-blocking, close-on-exec stream socket connected to Unix socket `path`;
    returns its fd, or raises OSError (an EINPROGRESS connect counts as connected)."""
    cdef sockaddr_un addr
    cdef int fd, rc, err
    cdef Py_ssize_t n = len(path)
    if <size_t>n >= sizeof(addr.sun_path):
        _raise_errno(ENAMETOOLONG)
    memset(&addr, 0, sizeof(addr))
    addr.sun_family = AF_UNIX
    memcpy(addr.sun_path, <const char *>path, n)
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        _raise_errno(errno)
    rc = connect(fd, &addr, sizeof(addr))  # non-blocking: a Unix listener answers at once
    err = errno
    if rc < 0 and err != EINPROGRESS:
        close(fd)
        _raise_errno(err)
    return fd


cdef ssize_t _send(int fd, const uint8_t *p, size_t n) noexcept nogil:
    cdef ssize_t r = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL)
    while r < 0 and errno == EINTR:
        r = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL)
    return r


def send_bytes(int fd, const uint8_t[::1] data):
    """send() without blocking or SIGPIPE; returns bytes sent, raises OSError
    (BlockingIOError when the socket takes nothing now)."""
    cdef ssize_t r
    cdef size_t n = data.shape[0]
    if n == 0:
        return 0
    if n <= SHORT_SEND:
        r = _send(fd, &data[0], n)  # an `OK <port>` line: see _SHORT_CALLS
    else:
        with nogil:
            r = _send(fd, &data[0], n)  # buffered stream data: a copy worth letting go for
    if r < 0:
        _raise_errno(errno)
    return r


def send_views(int fd, list views):
    """sendmsg() of buffers `views` (the first MAX_IOV of them) as send_bytes() does."""
    cdef iovec iov[MAX_IOV]
    cdef msghdr msg
    cdef const uint8_t[::1] v
    cdef int n = 0
    cdef ssize_t r
    for obj in views:
        if n == MAX_IOV:
            break
        v = obj
        if v.shape[0]:
            iov[n].iov_base = <void *>&v[0]  # the list keeps every buffer alive
            iov[n].iov_len = v.shape[0]
            n += 1
    if n == 0:
        return 0
    memset(&msg, 0, sizeof(msg))
    msg.msg_iov = iov
    msg.msg_iovlen = n
    with nogil:
        r = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
        while r < 0 and errno == EINTR:
            r = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL)
    if r < 0:
        _raise_errno(errno)
    return r


def shutdown_wr(int fd):
    """Half-close `fd` for writing; errors (a peer already gone) are ignored."""
    shutdown(fd, SHUT_WR)
