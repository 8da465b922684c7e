/* proto.c: the agent's wire framing (guest/PROTOCOL.md).
 *
 * A frame is an 8-byte header (type u8, three zero bytes, payload length u32
 * little-endian) and the payload. Every length from the wire is checked against
 * MM_MAX_FRAME before anything is allocated; request payloads are NUL-terminated
 * key=value records, parsed without trusting any length but the frame's.
 */
#include "mm.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static int send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        /* MSG_NOSIGNAL: a vanished peer is an error return, not a SIGPIPE. */
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ENOTSOCK)
                return write_all(fd, p, len);
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int frame_send(int fd, uint8_t type, const void *data, uint32_t len)
{
    uint8_t hdr[8] = {type, 0, 0, 0};
    put32(hdr + 4, len);
    if (len && len <= 4096) {
        /* One write for small frames: fewer segments for round-trip latency. */
        uint8_t buf[8 + 4096];
        memcpy(buf, hdr, 8);
        memcpy(buf + 8, data, len);
        return send_all(fd, buf, 8 + len);
    }
    if (send_all(fd, hdr, 8) < 0)
        return -1;
    return len ? send_all(fd, data, len) : 0;
}

int frame_send_u32s(int fd, uint8_t type, uint32_t a, uint32_t b, int two)
{
    uint8_t p[8];
    put32(p, a);
    put32(p + 4, b);
    return frame_send(fd, type, p, two ? 8 : 4);
}

int frame_error(int fd, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof msg)
        n = sizeof msg - 1;
    return frame_send(fd, F_ERROR, msg, (uint32_t)n);
}

int frame_recv(int fd, struct frame *f)
{
    uint8_t hdr[8];
    f->data = NULL;
    int rc = read_full(fd, hdr, sizeof hdr);
    if (rc <= 0)
        return rc;
    f->type = hdr[0];
    f->len = le32(hdr + 4);
    if (hdr[1] || hdr[2] || hdr[3] || f->len > MM_MAX_FRAME) {
        errno = EPROTO;
        return -1;
    }
    f->data = malloc((size_t)f->len + 1);
    if (!f->data)
        return -1;
    if (f->len && read_full(fd, f->data, f->len) != 1) {
        free(f->data);
        f->data = NULL;
        errno = EPROTO;
        return -1;
    }
    f->data[f->len] = 0;
    return 1;
}

void frame_free(struct frame *f)
{
    free(f->data);
    f->data = NULL;
}

int records_next(const struct frame *f, size_t *off, char **key, char **value)
{
    if (*off >= f->len)
        return 0;
    char *rec = (char *)f->data + *off;
    /* The record must end with a NUL inside the payload. */
    char *end = memchr(rec, 0, f->len - *off);
    if (!end)
        return -1;
    char *eq = strchr(rec, '=');
    if (!eq || eq == rec)
        return -1;
    *eq = 0;
    *key = rec;
    *value = eq + 1;
    *off = (size_t)(end - (char *)f->data) + 1;
    return 1;
}
