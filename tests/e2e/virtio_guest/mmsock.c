/* mmsock: the guest side of the virtio-net and virtio-vsock end-to-end tests and
 * benchmarks (busybox has no vsock tools and its nc cannot half-close).
 *
 *   mmsock serve   FAM PORT N             echo server: serve N streams at once (0: forever)
 *   mmsock connect FAM ADDR PORT N SIZE   echo client: N streams at once, SIZE bytes each,
 *                                         every byte checked; prints "ok N BYTES"
 *   mmsock bench   FAM PORT N             N streams (0: forever), one at a time, a 9-byte command first:
 *                                         'R' u64: read to EOF, answer the u64 byte count
 *                                         'W' u64: write that many bytes, then close
 *   FAM is "vsock" (ADDR a CID) or "tcp" (ADDR an IPv4 address).
 *
 * Stream contents are a per-stream xorshift sequence, so both ends can check them
 * without keeping a copy. Built static with musl-gcc by tests/e2e/virtio_guest.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_STREAMS 1024

/* linux/vm_sockets.h (musl ships no kernel headers): the stable uapi layout. */
#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#define VMADDR_CID_ANY 0xFFFFFFFFu
struct sockaddr_vm {
    sa_family_t svm_family;
    unsigned short svm_reserved1;
    unsigned int svm_port;
    unsigned int svm_cid;
    unsigned char svm_zero[sizeof(struct sockaddr) - sizeof(sa_family_t) - sizeof(unsigned short)
                           - 2 * sizeof(unsigned int)];
};
#define CHUNK 65536

static void die(const char *what) {
    fprintf(stderr, "mmsock: %s: %s\n", what, strerror(errno));
    exit(2);
}

static int is_vsock(const char *fam) {
    if (!strcmp(fam, "vsock")) return 1;
    if (!strcmp(fam, "tcp")) return 0;
    fprintf(stderr, "mmsock: family must be vsock or tcp, not %s\n", fam);
    exit(2);
}

/* Fill a sockaddr for FAM/ADDR/PORT; returns its length. */
static socklen_t make_addr(int vsock, const char *addr, unsigned port, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof(*ss));
    if (vsock) {
        struct sockaddr_vm *vm = (struct sockaddr_vm *)ss;
        vm->svm_family = AF_VSOCK;
        vm->svm_cid = addr ? (unsigned)strtoul(addr, NULL, 0) : VMADDR_CID_ANY;
        vm->svm_port = port;
        return sizeof(*vm);
    }
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    in->sin_addr.s_addr = htonl(INADDR_ANY);
    if (addr && inet_pton(AF_INET, addr, &in->sin_addr) != 1) {
        fprintf(stderr, "mmsock: bad IPv4 address %s\n", addr);
        exit(2);
    }
    return sizeof(*in);
}

static int listen_on(int vsock, unsigned port) {
    struct sockaddr_storage ss;
    socklen_t len = make_addr(vsock, NULL, port, &ss);
    int s = socket(vsock ? AF_VSOCK : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    int one = 1;
    if (!vsock) setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(s, (struct sockaddr *)&ss, len) < 0) die("bind");
    if (listen(s, MAX_STREAMS) < 0) die("listen");
    return s;
}

static void nonblock(int fd) {
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* -- echo server ------------------------------------------------------------------- */
struct echo {
    int fd;
    char *buf;
    size_t have, sent;  /* bytes in buf, bytes of them written back */
    int eof;
};

static int echo_step(struct echo *e, short revents) {
    if (e->sent < e->have && (revents & POLLOUT)) {
        ssize_t n = write(e->fd, e->buf + e->sent, e->have - e->sent);
        if (n < 0 && errno != EAGAIN) return -1;
        if (n > 0) e->sent += n;
    }
    if (e->sent == e->have) e->have = e->sent = 0;
    if (!e->have && !e->eof && (revents & (POLLIN | POLLHUP))) {
        ssize_t n = read(e->fd, e->buf, CHUNK);
        if (n < 0 && errno != EAGAIN) return -1;
        if (n == 0) e->eof = 1;
        if (n > 0) e->have = n;
    }
    return e->eof && !e->have;  /* 1: done */
}

static int serve(int vsock, unsigned port, long want) {
    int ls = listen_on(vsock, port);
    static struct echo conns[MAX_STREAMS];
    struct pollfd pfd[MAX_STREAMS + 1];
    int n = 0;
    long accepted = 0, done = 0, failed = 0;
    printf("MM-SOCK-LISTENING %s %u\n", vsock ? "vsock" : "tcp", port);
    fflush(stdout);
    while (want == 0 || done < want) {
        int k = 0;
        int accepting = (want == 0 || accepted < want) && n < MAX_STREAMS;
        pfd[k++] = (struct pollfd){.fd = accepting ? ls : -1, .events = POLLIN};
        for (int i = 0; i < n; i++)
            pfd[k++] = (struct pollfd){.fd = conns[i].fd,
                                       .events = conns[i].have ? POLLOUT : POLLIN};
        if (poll(pfd, k, -1) < 0 && errno != EINTR) die("poll");
        int kept = 0;
        for (int i = 0; i < k - 1; i++) {  /* pfd[i + 1] belongs to conns[i] */
            short ev = pfd[i + 1].revents;
            int r = ev ? echo_step(&conns[i], ev) : 0;
            if (r == 0) {
                conns[kept++] = conns[i];
                continue;
            }
            failed += r < 0;
            done++;
            close(conns[i].fd);
            free(conns[i].buf);
        }
        n = kept;
        if (pfd[0].revents & POLLIN) {
            int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (c >= 0) {
                conns[n] = (struct echo){.fd = c, .buf = malloc(CHUNK)};
                if (!conns[n].buf) die("malloc");
                n++;
                accepted++;
            }
        }
    }
    printf("MM-SOCK-SERVED %ld failed=%ld\n", done, failed);
    return failed ? 1 : 0;
}

/* -- echo client ------------------------------------------------------------------- */
static uint8_t next_byte(uint64_t *st) {
    uint64_t x = *st;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    *st = x;
    return (uint8_t)(x >> 24);
}

struct stream {
    int fd, connected;
    uint64_t tx_state, rx_state;
    size_t to_send, to_recv;
    int bad;
};

static int start_connect(int vsock, const char *addr, unsigned port) {
    struct sockaddr_storage ss;
    socklen_t len = make_addr(vsock, addr, port, &ss);
    int s = socket(vsock ? AF_VSOCK : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) die("socket");
    if (connect(s, (struct sockaddr *)&ss, len) < 0) die("connect");
    nonblock(s);
    return s;
}

static void client_step(struct stream *s, short revents) {
    uint8_t buf[CHUNK];
    if ((revents & POLLOUT) && s->to_send) {
        size_t want = s->to_send < sizeof(buf) ? s->to_send : sizeof(buf);
        uint64_t st = s->tx_state;
        for (size_t i = 0; i < want; i++) buf[i] = next_byte(&st);
        ssize_t n = write(s->fd, buf, want);
        if (n > 0) {
            for (ssize_t i = 0; i < n; i++) next_byte(&s->tx_state);
            s->to_send -= n;
            if (!s->to_send) shutdown(s->fd, SHUT_WR);
        } else if (n < 0 && errno != EAGAIN) {
            s->bad = 1;
        }
    }
    if (revents & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t n = read(s->fd, buf, sizeof(buf));
        if (n < 0 && errno != EAGAIN) s->bad = 1;
        if (n == 0 && s->to_recv) s->bad = 1;  /* EOF before the whole echo */
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != next_byte(&s->rx_state)) s->bad = 1;
        if (n > 0) s->to_recv = (size_t)n > s->to_recv ? 0 : s->to_recv - n;
    }
}

static int connect_all(int vsock, const char *addr, unsigned port, int n, size_t size) {
    static struct stream st[MAX_STREAMS];
    struct pollfd pfd[MAX_STREAMS];
    if (n < 1 || n > MAX_STREAMS) { fprintf(stderr, "mmsock: 1..%d streams\n", MAX_STREAMS); return 2; }
    for (int i = 0; i < n; i++) {  /* every stream is open before any data moves */
        st[i] = (struct stream){.fd = start_connect(vsock, addr, port), .to_send = size,
                                .to_recv = size, .tx_state = 0x9E3779B97F4A7C15ull * (i + 1)};
        st[i].rx_state = st[i].tx_state;
    }
    printf("MM-SOCK-CONNECTED %d\n", n);
    fflush(stdout);
    int live = n, ok = 0;
    while (live) {
        int k = 0;
        for (int i = 0; i < n; i++) {
            if (st[i].fd < 0) continue;
            pfd[k++] = (struct pollfd){.fd = st[i].fd, .events = POLLIN | (st[i].to_send ? POLLOUT : 0)};
        }
        if (poll(pfd, k, -1) < 0 && errno != EINTR) die("poll");
        for (int i = 0, j = 0; i < n; i++) {
            if (st[i].fd < 0) continue;
            client_step(&st[i], pfd[j++].revents);
            if (st[i].bad || (!st[i].to_send && !st[i].to_recv)) {
                ok += !st[i].bad;
                close(st[i].fd);
                st[i].fd = -1;
                live--;
            }
        }
    }
    printf("MM-SOCK-ECHOED ok=%d of %d bytes=%zu\n", ok, n, size);
    return ok == n ? 0 : 1;
}

/* -- benchmark server -------------------------------------------------------------- */
static int read_full(int fd, void *p, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)p + got, n - got);
        if (r <= 0) return -1;
        got += r;
    }
    return 0;
}

static void bench_one(int c) {
    static char buf[1 << 18];
    unsigned char cmd[9];
    uint64_t n;
    if (read_full(c, cmd, sizeof(cmd)) < 0) return;
    memcpy(&n, cmd + 1, 8);
    if (cmd[0] == 'R') {
        uint64_t total = 0;
        ssize_t r;
        while ((r = read(c, buf, sizeof(buf))) > 0) total += r;
        if (write(c, &total, 8) != 8) return;
    } else if (cmd[0] == 'W') {
        while (n) {
            ssize_t w = write(c, buf, n < sizeof(buf) ? n : sizeof(buf));
            if (w <= 0) return;
            n -= w;
        }
    }
}

static int bench(int vsock, unsigned port, long n) {
    int ls = listen_on(vsock, port);
    printf("MM-SOCK-BENCH %s %u\n", vsock ? "vsock" : "tcp", port);
    fflush(stdout);
    for (long i = 0; n == 0 || i < n; i++) {
        int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) { if (errno == EINTR) continue; die("accept"); }
        bench_one(c);
        close(c);
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 5 && !strcmp(argv[1], "serve"))
        return serve(is_vsock(argv[2]), (unsigned)strtoul(argv[3], NULL, 0), atol(argv[4]));
    if (argc == 7 && !strcmp(argv[1], "connect"))
        return connect_all(is_vsock(argv[2]), argv[3], (unsigned)strtoul(argv[4], NULL, 0),
                           atoi(argv[5]), (size_t)strtoull(argv[6], NULL, 0));
    if (argc == 5 && !strcmp(argv[1], "bench"))
        return bench(is_vsock(argv[2]), (unsigned)strtoul(argv[3], NULL, 0), atol(argv[4]));
    fprintf(stderr, "usage: mmsock serve FAM PORT N | connect FAM ADDR PORT N SIZE | bench FAM PORT N\n");
    return 2;
}
