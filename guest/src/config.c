/* config.c: the per-VM boot configuration.
 *
 * Format (written by vmm/guest/bootconfig.py, documented in guest/PROTOCOL.md):
 * one `key=value` per line in /mm/config of the appended config cpio; values are
 * percent-encoded (%XX) so they never contain a newline or NUL; list keys (arg,
 * env, dns) repeat. The kernel command line may add `mm.key=value` tokens which
 * are applied after the file (dns there is comma-separated).
 */
#include "mm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void config_defaults(struct boot_config *c)
{
    memset(c, 0, sizeof *c);
    c->hostname = xstrdup("mm");
    c->ifname = xstrdup("eth0");
    c->agent_port = 1024;
    c->attach_port = 1025;
    c->rows = 24;
    c->cols = 80;
    c->stop_timeout = 10;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

int pct_decode(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        if (*r != '%') {
            *w++ = *r;
            continue;
        }
        int hi = hexval((unsigned char)r[1]);
        int lo = hi < 0 ? -1 : hexval((unsigned char)r[2]);
        if (hi < 0 || lo < 0)
            return -1;
        int ch = hi * 16 + lo;
        if (ch == 0)
            return -1;
        *w++ = (char)ch;
        r += 2;
    }
    *w = 0;
    return 0;
}

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = xstrdup(v);
}

static int parse_uint(const char *v, unsigned max, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (errno || end == v || *end || n > max)
        return -1;
    *out = (unsigned)n;
    return 0;
}

int config_apply(struct boot_config *c, const char *key, const char *v, char *err, size_t errlen)
{
    unsigned n;
    if (!strcmp(key, "version")) {
        if (parse_uint(v, 1000, &n) < 0 || n != MM_CONFIG_VERSION) {
            snprintf(err, errlen, "config version %s is not %d", v, MM_CONFIG_VERSION);
            return -1;
        }
    } else if (!strcmp(key, "hostname")) set_str(&c->hostname, v);
    else if (!strcmp(key, "root")) set_str(&c->root, v);
    else if (!strcmp(key, "rootfstype")) set_str(&c->rootfstype, v);
    else if (!strcmp(key, "overlay")) set_str(&c->overlay, v);
    else if (!strcmp(key, "overlayfstype")) set_str(&c->overlayfstype, v);
    else if (!strcmp(key, "arg")) strv_push(&c->argv, v);
    else if (!strcmp(key, "env")) {
        if (!strchr(v, '=')) {
            snprintf(err, errlen, "env entry without '=': %.64s", v);
            return -1;
        }
        strv_set_env(&c->env, v);
    } else if (!strcmp(key, "dns")) {
        /* comma-separated on the command line, one per line in the file */
        char *copy = xstrdup(v), *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
            strv_push(&c->dns, t);
        free(copy);
    } else if (!strcmp(key, "workdir")) set_str(&c->workdir, v);
    else if (!strcmp(key, "user")) set_str(&c->user, v);
    else if (!strcmp(key, "ifname")) set_str(&c->ifname, v);
    else if (!strcmp(key, "ip")) set_str(&c->ip, v);
    else if (!strcmp(key, "gw")) set_str(&c->gw, v);
    else if (!strcmp(key, "mtu")) {
        if (parse_uint(v, 65535, &n) < 0) goto bad;
        c->mtu = (int)n;
    } else if (!strcmp(key, "ssh")) c->ssh = !strcmp(v, "1");
    else if (!strcmp(key, "stdio")) {
        if (strcmp(v, "console") && strcmp(v, "vsock")) goto bad;
        c->stdio_vsock = !strcmp(v, "vsock");
    } else if (!strcmp(key, "tty")) c->tty = !strcmp(v, "1");
    else if (!strcmp(key, "rows") || !strcmp(key, "cols")) {
        if (parse_uint(v, 65535, &n) < 0 || n == 0) goto bad;
        *(key[0] == 'r' ? &c->rows : &c->cols) = (unsigned short)n;
    } else if (!strcmp(key, "agent_port")) {
        if (parse_uint(v, 0xffffffffu, &n) < 0) goto bad;
        c->agent_port = n;
    } else if (!strcmp(key, "attach_port")) {
        if (parse_uint(v, 0xffffffffu, &n) < 0) goto bad;
        c->attach_port = n;
    } else if (!strcmp(key, "agent_path")) set_str(&c->agent_path, v);
    else if (!strcmp(key, "attach_path")) set_str(&c->attach_path, v);
    else if (!strcmp(key, "stop_timeout")) {
        if (parse_uint(v, 3600, &n) < 0) goto bad;
        c->stop_timeout = (int)n;
    } else if (!strcmp(key, "shutdown")) {
        if (strcmp(v, "poweroff") && strcmp(v, "reboot")) goto bad;
        c->reboot = !strcmp(v, "reboot");
    } else if (!strcmp(key, "debug")) mm_debug = !strcmp(v, "1");
    else
        dbg("ignoring unknown config key %.64s", key); /* newer host, older init */
    return 0;
bad:
    snprintf(err, errlen, "bad value for %.32s: %.64s", key, v);
    return -1;
}

static int apply_line(struct boot_config *c, char *line, char *err, size_t errlen)
{
    if (!*line || *line == '#')
        return 0;
    char *eq = strchr(line, '=');
    if (!eq) {
        snprintf(err, errlen, "config line without '=': %.64s", line);
        return -1;
    }
    *eq = 0;
    if (pct_decode(eq + 1) < 0) {
        snprintf(err, errlen, "bad %%-escape in value of %.32s", line);
        return -1;
    }
    return config_apply(c, line, eq + 1, err, errlen);
}

int config_parse_file(struct boot_config *c, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0; /* no per-VM config: defaults plus the command line */
        snprintf(err, errlen, "open %s: %s", path, strerror(errno));
        return -1;
    }
    char *buf = xcalloc(MM_MAX_CONFIG + 1, 1);
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, MM_MAX_CONFIG - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "read %s: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len == MM_MAX_CONFIG) {
            snprintf(err, errlen, "%s is larger than %u bytes", path, MM_MAX_CONFIG);
            goto fail;
        }
    }
    if (memchr(buf, 0, len)) {
        snprintf(err, errlen, "%s contains a NUL byte", path);
        goto fail;
    }
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        if (apply_line(c, line, err, errlen) < 0)
            goto fail;
    close(fd);
    free(buf);
    return 0;
fail:
    close(fd);
    free(buf);
    return -1;
}

int config_parse_cmdline(struct boot_config *c, const char *cmdline, char *err, size_t errlen)
{
    char *copy = xstrdup(cmdline), *save = NULL;
    int rc = 0;
    for (char *t = strtok_r(copy, " \t\n", &save); t; t = strtok_r(NULL, " \t\n", &save)) {
        if (strncmp(t, "mm.", 3) != 0)
            continue;
        if (apply_line(c, t + 3, err, errlen) < 0) {
            rc = -1;
            break;
        }
    }
    free(copy);
    return rc;
}
