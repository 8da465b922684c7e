/* tar.c: a minimal ustar (+ pax extended headers) writer and reader for
 * `mm cp`, carried over DATA frames, so no image needs a tar binary.
 *
 * Writer: regular files, directories and symlinks under one path, recursively;
 * a pax 'x' header carries paths/link targets longer than ustar's fields and
 * sizes of 8 GiB and more. Reader: the same plus hard links, GNU 'L'/'K' long
 * names and base-256 sizes; other entry types are skipped. Every header field is
 * bounds-checked; names with a ".." component are refused.
 */
#include "mm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLK 512
#define PATHMAX 4096

/* ---- writer ---------------------------------------------------------------- */
struct tw {
    int sock;
    size_t n;
    char buf[MM_CHUNK];
};

static int tw_put(struct tw *w, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        size_t take = sizeof w->buf - w->n < len ? sizeof w->buf - w->n : len;
        memcpy(w->buf + w->n, p, take);
        w->n += take, p += take, len -= take;
        if (w->n == sizeof w->buf) {
            if (frame_send(w->sock, F_DATA, w->buf, (uint32_t)w->n) < 0)
                return -1;
            w->n = 0;
        }
    }
    return 0;
}

static int tw_flush(struct tw *w)
{
    if (w->n && frame_send(w->sock, F_DATA, w->buf, (uint32_t)w->n) < 0)
        return -1;
    w->n = 0;
    return 0;
}

static void octal(char *field, size_t width, unsigned long long v)
{
    snprintf(field, width, "%0*llo", (int)width - 1, v);
}

static int pad(struct tw *w, unsigned long long size)
{
    static const char zero[BLK];
    size_t rem = (size_t)(size % BLK);
    return rem ? tw_put(w, zero, BLK - rem) : 0;
}

static int pax_record(char *out, size_t cap, size_t *len, const char *key, const char *val)
{
    /* "LEN key=value\n" where LEN counts itself. */
    size_t body = strlen(key) + strlen(val) + 3, total = body + 1;
    while (snprintf(NULL, 0, "%zu", total) + body != total)
        total++;
    if (*len + total >= cap)
        return -1;
    snprintf(out + *len, cap - *len, "%zu %s=%s\n", total, key, val);
    *len += total;
    return 0;
}

static int header(struct tw *w, const char *name, const struct stat *st, char type,
                  const char *link, unsigned long long size)
{
    char h[BLK];
    memset(h, 0, sizeof h);
    int need_pax = strlen(name) >= 100 || strlen(link) >= 100 || size >= 077777777777ULL;
    if (need_pax && type != 'x') {
        char pax[3 * PATHMAX];
        size_t plen = 0;
        char num[32];
        snprintf(num, sizeof num, "%llu", size);
        if ((strlen(name) >= 100 && pax_record(pax, sizeof pax, &plen, "path", name) < 0) ||
            (strlen(link) >= 100 && pax_record(pax, sizeof pax, &plen, "linkpath", link) < 0) ||
            (size >= 077777777777ULL && pax_record(pax, sizeof pax, &plen, "size", num) < 0))
            return -1;
        if (header(w, "././@PaxHeader", st, 'x', "", plen) < 0 || tw_put(w, pax, plen) < 0 ||
            pad(w, plen) < 0)
            return -1;
    }
    snprintf(h, 100, "%s", name);
    octal(h + 100, 8, st->st_mode & 07777);
    octal(h + 108, 8, st->st_uid & 07777777);
    octal(h + 116, 8, st->st_gid & 07777777);
    octal(h + 124, 12, size >= 077777777777ULL ? 0 : size);
    octal(h + 136, 12, (unsigned long long)(st->st_mtime > 0 ? st->st_mtime : 0) & 077777777777ULL);
    h[156] = type;
    snprintf(h + 157, 100, "%s", link);
    memcpy(h + 257, "ustar\0" "00", 8);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < BLK; i++)
        sum += (unsigned char)h[i];
    snprintf(h + 148, 8, "%06o", sum);
    return tw_put(w, h, BLK);
}

static int send_tree(struct tw *w, const char *fs, const char *name, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(fs, &st) < 0) {
        snprintf(err, errlen, "%s: %s", fs, strerror(errno));
        return -1;
    }
    if (S_ISLNK(st.st_mode)) {
        char target[PATHMAX];
        ssize_t n = readlink(fs, target, sizeof target - 1);
        if (n < 0)
            return 0;
        target[n] = 0;
        return header(w, name, &st, '2', target, 0);
    }
    if (S_ISREG(st.st_mode)) {
        int fd = open(fs, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) {
            snprintf(err, errlen, "%s: %s", fs, strerror(errno));
            return -1;
        }
        unsigned long long size = (unsigned long long)st.st_size, done = 0;
        int rc = header(w, name, &st, '0', "", size);
        char buf[MM_CHUNK];
        while (rc == 0 && done < size) {
            ssize_t n = read(fd, buf, size - done < sizeof buf ? size - done : sizeof buf);
            if (n <= 0) { /* the file shrank under us: pad with zeros to the header size */
                memset(buf, 0, sizeof buf);
                n = (ssize_t)(size - done < sizeof buf ? size - done : sizeof buf);
            }
            rc = tw_put(w, buf, (size_t)n);
            done += (unsigned long long)n;
        }
        close(fd);
        return rc < 0 ? -1 : pad(w, size);
    }
    if (!S_ISDIR(st.st_mode))
        return 0; /* devices, fifos, sockets: not copied */
    char dname[PATHMAX];
    if (snprintf(dname, sizeof dname, "%s/", name) >= (int)sizeof dname || header(w, dname, &st, '5', "", 0) < 0)
        return -1;
    DIR *d = opendir(fs);
    if (!d)
        return 0;
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char cfs[PATHMAX], cname[PATHMAX];
        if (snprintf(cfs, sizeof cfs, "%s/%s", fs, e->d_name) >= (int)sizeof cfs ||
            snprintf(cname, sizeof cname, "%s/%s", name, e->d_name) >= (int)sizeof cname) {
            snprintf(err, errlen, "path too long under %s", fs);
            rc = -1;
            break;
        }
        rc = send_tree(w, cfs, cname, err, errlen);
    }
    closedir(d);
    return rc;
}

int tar_send(int sock, const char *path, char *err, size_t errlen)
{
    struct tw *w = xcalloc(1, sizeof *w);
    w->sock = sock;
    char copy[PATHMAX];
    snprintf(copy, sizeof copy, "%s", path);
    const char *base = basename(copy);
    if (!*base || !strcmp(base, "/"))
        base = ".";
    static const char zero[2 * BLK];
    int rc = send_tree(w, path, base, err, errlen);
    if (rc == 0)
        rc = tw_put(w, zero, sizeof zero) < 0 || tw_flush(w) < 0 ? -1 : 0;
    free(w);
    return rc;
}

/* ---- reader ---------------------------------------------------------------- */
struct tr {
    int sock, eof;
    struct frame f;
    size_t off;
};

/* Reads exactly len bytes of the archive stream; -1 on a short or broken stream. */
static int tr_read(struct tr *r, void *dst, size_t len)
{
    char *p = dst;
    while (len) {
        if (r->f.data && r->off < r->f.len) {
            size_t take = r->f.len - r->off < len ? r->f.len - r->off : len;
            if (p)
                memcpy(p, r->f.data + r->off, take), p += take;
            r->off += take, len -= take;
            continue;
        }
        frame_free(&r->f);
        r->off = 0;
        if (r->eof || frame_recv(r->sock, &r->f) != 1)
            return -1;
        if (r->f.type == F_DATA_EOF) {
            r->eof = 1;
            return -1;
        }
        if (r->f.type != F_DATA)
            return -1;
    }
    return 0;
}

static int parse_num(const char *f, size_t width, unsigned long long *out)
{
    unsigned long long v = 0;
    if ((unsigned char)f[0] & 0x80) { /* base-256, big-endian */
        for (size_t i = 1; i < width; i++) {
            if (v >> 55)
                return -1;
            v = v << 8 | (unsigned char)f[i];
        }
        *out = v;
        return 0;
    }
    size_t i = 0;
    while (i < width && f[i] == ' ')
        i++;
    for (; i < width && f[i] >= '0' && f[i] <= '7'; i++) {
        if (v >> 60)
            return -1;
        v = v * 8 + (unsigned long long)(f[i] - '0');
    }
    if (i < width && f[i] != 0 && f[i] != ' ')
        return -1;
    *out = v;
    return 0;
}

/* dest + cleaned name; refuses "..", strips leading "/" and "./". */
static int safe_join(char *out, size_t cap, const char *dest, const char *name)
{
    while (*name == '/' || (name[0] == '.' && name[1] == '/'))
        name += name[0] == '/' ? 1 : 2;
    for (const char *p = name; *p;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.')
            return -1;
        p += len + (slash ? 1 : 0);
    }
    if (snprintf(out, cap, "%s/%s", dest, name) >= (int)cap)
        return -1;
    size_t l = strlen(out);
    while (l > 1 && out[l - 1] == '/')
        out[--l] = 0;
    return 0;
}

static void pax_parse(char *buf, size_t len, char *path, char *link, unsigned long long *size)
{
    size_t off = 0;
    while (off < len) {
        char *end;
        unsigned long rl = strtoul(buf + off, &end, 10);
        if (rl == 0 || rl > len - off || *end != ' ' || buf[off + rl - 1] != '\n')
            return;
        buf[off + rl - 1] = 0;
        char *kv = end + 1, *eq = strchr(kv, '=');
        if (eq) {
            *eq = 0;
            if (!strcmp(kv, "path"))
                snprintf(path, PATHMAX, "%s", eq + 1);
            else if (!strcmp(kv, "linkpath"))
                snprintf(link, PATHMAX, "%s", eq + 1);
            else if (!strcmp(kv, "size"))
                *size = strtoull(eq + 1, NULL, 10);
        }
        off += rl;
    }
}

static int extract_file(struct tr *r, const char *path, mode_t mode, unsigned long long size)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode & 07777);
    char buf[MM_CHUNK];
    unsigned long long left = size;
    while (left) {
        size_t take = left < sizeof buf ? (size_t)left : sizeof buf;
        if (tr_read(r, buf, take) < 0) {
            if (fd >= 0)
                close(fd);
            return -1;
        }
        if (fd >= 0 && write_all(fd, buf, take) < 0) {
            close(fd);
            fd = -1;
        }
        left -= take;
    }
    if (fd < 0)
        return -2;
    return close(fd) < 0 ? -2 : 0;
}

int tar_receive(int sock, const char *dest, char *err, size_t errlen)
{
    struct tr r = {.sock = sock};
    char *pax_path = xcalloc(PATHMAX, 1), *pax_link = xcalloc(PATHMAX, 1);
    char *full = xcalloc(PATHMAX, 1), *lfull = xcalloc(PATHMAX, 1);
    unsigned long long pax_size = 0;
    int rc = -1, have_pax = 0;
    if (mkdir_p(dest, 0755) < 0) {
        snprintf(err, errlen, "%s: %s", dest, strerror(errno));
        goto out;
    }
    for (;;) {
        unsigned char h[BLK];
        if (tr_read(&r, h, BLK) < 0) {
            snprintf(err, errlen, "archive ends without its end marker");
            goto out;
        }
        int zero = 1;
        for (int i = 0; i < BLK && zero; i++)
            zero = !h[i];
        if (zero)
            break;
        unsigned sum = 0;
        unsigned long long want, size, mode, uid, gid, mtime;
        for (int i = 0; i < BLK; i++)
            sum += (i >= 148 && i < 156) ? ' ' : h[i];
        if (parse_num((char *)h + 148, 8, &want) < 0 || want != sum ||
            parse_num((char *)h + 124, 12, &size) < 0 || parse_num((char *)h + 100, 8, &mode) < 0 ||
            parse_num((char *)h + 108, 8, &uid) < 0 || parse_num((char *)h + 116, 8, &gid) < 0 ||
            parse_num((char *)h + 136, 12, &mtime) < 0) {
            snprintf(err, errlen, "bad tar header");
            goto out;
        }
        char type = (char)h[156];
        if (type == 'x' || type == 'L' || type == 'K') {
            if (size >= PATHMAX * 4) {
                snprintf(err, errlen, "extended header too large");
                goto out;
            }
            char *buf = xcalloc((size_t)size + 1, 1);
            size_t padded = (size_t)((size + BLK - 1) / BLK * BLK);
            char *tmp = xcalloc(padded + 1, 1);
            int ok = tr_read(&r, tmp, padded) == 0;
            memcpy(buf, tmp, (size_t)size);
            free(tmp);
            if (ok && type == 'x')
                pax_parse(buf, (size_t)size, pax_path, pax_link, &pax_size);
            else if (ok)
                snprintf(type == 'L' ? pax_path : pax_link, PATHMAX, "%s", buf);
            free(buf);
            if (!ok) {
                snprintf(err, errlen, "archive truncated");
                goto out;
            }
            have_pax = 1;
            continue;
        }
        if (type == 'g') {
            if (tr_read(&r, NULL, (size_t)((size + BLK - 1) / BLK * BLK)) < 0)
                goto out;
            continue;
        }
        char name[PATHMAX], target[PATHMAX];
        if (*pax_path)
            snprintf(name, sizeof name, "%s", pax_path);
        else if (h[345])
            snprintf(name, sizeof name, "%.155s/%.100s", (char *)h + 345, (char *)h);
        else
            snprintf(name, sizeof name, "%.100s", (char *)h);
        snprintf(target, sizeof target, "%s", *pax_link ? pax_link : "");
        if (!*target)
            snprintf(target, sizeof target, "%.100s", (char *)h + 157);
        if (have_pax && pax_size)
            size = pax_size;
        *pax_path = *pax_link = 0, pax_size = 0, have_pax = 0;
        if (safe_join(full, PATHMAX, dest, name) < 0) {
            snprintf(err, errlen, "refusing unsafe path %.200s", name);
            goto out;
        }
        int made = 0;
        unsigned long long consumed = 0;
        char *slash = strrchr(full, '/');
        if (slash && slash != full) {
            *slash = 0;
            mkdir_p(full, 0755);
            *slash = '/';
        }
        if (type == '0' || type == 0 || type == '7') {
            int x = extract_file(&r, full, (mode_t)mode, size);
            if (x == -1) {
                snprintf(err, errlen, "archive truncated in %.200s", name);
                goto out;
            }
            if (x == -2) {
                snprintf(err, errlen, "cannot write %.200s: %s", full, strerror(errno));
                goto out;
            }
            made = 1;
            consumed = size;
        } else if (type == '5') {
            made = mkdir(full, (mode_t)mode & 07777) == 0 || errno == EEXIST;
        } else if (type == '2') {
            unlink(full);
            made = symlink(target, full) == 0;
        } else if (type == '1') {
            if (safe_join(lfull, PATHMAX, dest, target) == 0) {
                unlink(full);
                made = link(lfull, full) == 0;
            }
        }
        /* Skip what the entry's data we did not consume, and the block padding. */
        unsigned long long skip = (size + BLK - 1) / BLK * BLK - consumed;
        while (skip) {
            size_t take = skip > MM_CHUNK ? MM_CHUNK : (size_t)skip;
            if (tr_read(&r, NULL, take) < 0) {
                snprintf(err, errlen, "archive truncated");
                goto out;
            }
            skip -= take;
        }
        if (made && type != '1') {
            lchown(full, (uid_t)uid, (gid_t)gid);
            if (type != '2')
                chmod(full, (mode_t)mode & 07777);
            struct timespec ts[2] = {{.tv_sec = (time_t)mtime}, {.tv_sec = (time_t)mtime}};
            utimensat(AT_FDCWD, full, ts, AT_SYMLINK_NOFOLLOW);
        }
    }
    /* Consume the rest of the stream up to DATA_EOF. */
    while (!r.eof) {
        if (tr_read(&r, NULL, 1) < 0 && !r.eof)
            break;
    }
    rc = r.eof ? 0 : -1;
    if (rc < 0)
        snprintf(err, errlen, "stream broken after the archive");
out:
    frame_free(&r.f);
    free(pax_path), free(pax_link), free(full), free(lfull);
    return rc;
}
