/* util.c: logging, whole-buffer I/O, directory and file helpers, string vectors.
 *
 * Allocation failure in the guest's init or agent is not recoverable in any useful
 * way, so x* helpers log and exit the (per-connection) process.
 */
#include "mm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int mm_debug;

static void vlog(const char *fmt, va_list ap)
{
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "mm-init[%d]: ", (int)getpid());
    if (n < 0 || (size_t)n >= sizeof buf)
        return;
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    if (m < 0)
        return;
    size_t len = strlen(buf);
    buf[len++] = '\n';
    (void)write_all(2, buf, len);
}

void logmsg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(fmt, ap);
    va_end(ap);
}

void dbg(const char *fmt, ...)
{
    if (!mm_debug)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(fmt, ap);
    va_end(ap);
}

int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int read_full(int fd, void *buf, size_t len)
{
    char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, p + got, len - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            return got == 0 ? 0 : -1;
        got += (size_t)n;
    }
    return 1;
}

int mkdir_p(const char *path, mode_t mode)
{
    char buf[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(buf, mode) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

int write_file(const char *path, const char *data, mode_t mode)
{
    /* Replace whatever is there (a dangling symlink to /run/... is common for
     * resolv.conf): unlink first so we never write through a link. */
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0)
        return -1;
    int rc = write_all(fd, data, strlen(data));
    if (close(fd) < 0)
        rc = -1;
    return rc;
}

int copy_file(const char *src, const char *dst, mode_t mode)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -1;
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (out < 0) {
        close(in);
        return -1;
    }
    char buf[65536];
    int rc = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -1 : 0;
            break;
        }
        if (write_all(out, buf, (size_t)n) < 0) {
            rc = -1;
            break;
        }
    }
    close(in);
    if (close(out) < 0)
        rc = -1;
    return rc;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        logmsg("out of memory");
        _exit(70);
    }
    return p;
}

char *xstrdup(const char *s)
{
    size_t len = strlen(s);
    char *p = xcalloc(len + 1, 1);
    memcpy(p, s, len);
    return p;
}

void strv_push(struct strv *s, const char *item)
{
    if (s->n + 2 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        char **v = realloc(s->v, cap * sizeof *v);
        if (!v) {
            logmsg("out of memory");
            _exit(70);
        }
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = xstrdup(item);
    s->v[s->n] = NULL;
}

static size_t key_len(const char *kv)
{
    const char *eq = strchr(kv, '=');
    return eq ? (size_t)(eq - kv) : strlen(kv);
}

void strv_set_env(struct strv *s, const char *kv)
{
    size_t k = key_len(kv);
    for (size_t i = 0; i < s->n; i++) {
        if (key_len(s->v[i]) == k && strncmp(s->v[i], kv, k) == 0) {
            free(s->v[i]);
            s->v[i] = xstrdup(kv);
            return;
        }
    }
    strv_push(s, kv);
}

const char *strv_get_env(const struct strv *s, const char *key)
{
    size_t k = strlen(key);
    for (size_t i = 0; i < s->n; i++)
        if (key_len(s->v[i]) == k && strncmp(s->v[i], key, k) == 0 && s->v[i][k] == '=')
            return s->v[i] + k + 1;
    return NULL;
}

void strv_free(struct strv *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}
