/* mm-init: the one header shared by the guest's init (PID 1) and exec agent.
 *
 * Owns the declarations every module uses: the per-VM boot configuration, the
 * framed agent protocol (guest/PROTOCOL.md), the process spec an exec or the
 * workload runs with, and small I/O helpers. One static binary, several roles:
 * PID 1 (init.c), the vsock/Unix agent (agent.c, session.c, tar.c).
 */
#ifndef MM_H
#define MM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- util.c ------------------------------------------------------------ */
extern int mm_debug;
void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void dbg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int write_all(int fd, const void *buf, size_t len);  /* 0 or -1 (errno set) */
int read_full(int fd, void *buf, size_t len);        /* 1 ok, 0 EOF at start, -1 error/short */
int mkdir_p(const char *path, mode_t mode);
int write_file(const char *path, const char *data, mode_t mode);
int copy_file(const char *src, const char *dst, mode_t mode);
void *xcalloc(size_t n, size_t size);
char *xstrdup(const char *s);

/* A growable NULL-terminated vector of strings. */
struct strv {
    char **v;
    size_t n, cap;
};
void strv_push(struct strv *s, const char *item);
void strv_set_env(struct strv *s, const char *kv); /* replaces KEY=... if present */
const char *strv_get_env(const struct strv *s, const char *key);
void strv_free(struct strv *s);

/* ---- config.c: the per-VM boot configuration (/mm/config + mm.* on cmdline) */
#define MM_CONFIG_VERSION 1
#define MM_MAX_CONFIG (1u << 20)
struct boot_config {
    char *hostname;
    char *root, *rootfstype, *overlay, *overlayfstype;
    struct strv argv, env, dns;
    char *workdir, *user;
    char *ifname, *ip, *gw;
    int mtu;
    int ssh;
    int stdio_vsock;           /* workload stdio on an attach stream, else console */
    int tty;                   /* attach mode: the workload gets a PTY of rows x cols */
    unsigned short rows, cols;
    unsigned agent_port, attach_port;
    char *agent_path, *attach_path; /* Unix sockets instead of vsock (host tests) */
    int stop_timeout;          /* seconds between SIGTERM and SIGKILL on shutdown */
    int reboot;                /* leave with reboot(RB_AUTOBOOT) instead of power off */
};
void config_defaults(struct boot_config *c);
int config_apply(struct boot_config *c, const char *key, const char *value, char *err, size_t errlen);
int config_parse_file(struct boot_config *c, const char *path, char *err, size_t errlen);
int config_parse_cmdline(struct boot_config *c, const char *cmdline, char *err, size_t errlen);
int pct_decode(char *s); /* in place; -1 on a bad escape or an embedded NUL */

/* ---- proto.c: framing ---------------------------------------------------- */
#define MM_PROTO_VERSION 1
#define MM_HELLO "mm-agent 1"
#define MM_MAX_FRAME (1u << 20)
#define MM_CHUNK (64u * 1024u)
enum frame_type {
    F_HELLO = 0x01, F_EXEC = 0x02, F_COPY_IN = 0x03, F_COPY_OUT = 0x04, F_SHUTDOWN = 0x05,
    F_STDIN = 0x10, F_STDIN_EOF = 0x11, F_RESIZE = 0x12, F_SIGNAL = 0x13,
    F_STARTED = 0x20, F_STDOUT = 0x21, F_STDERR = 0x22, F_EXIT = 0x23, F_ERROR = 0x24,
    F_DATA = 0x30, F_DATA_EOF = 0x31, F_DONE = 0x32, /* "OK" on the wire; F_OK is taken by <unistd.h> */
};
struct frame {
    uint8_t type;
    uint32_t len;
    uint8_t *data; /* len bytes + a NUL after them; owned by the frame */
};
int frame_send(int fd, uint8_t type, const void *data, uint32_t len);
int frame_send_u32s(int fd, uint8_t type, uint32_t a, uint32_t b, int two);
int frame_recv(int fd, struct frame *f); /* 1 ok, 0 clean EOF, -1 error/malformed */
void frame_free(struct frame *f);
int frame_error(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint32_t le32(const uint8_t *p);
uint16_t le16(const uint8_t *p);
/* Iterates the "key=value\0" records of a request; returns 1 with key/value, 0 at
 * the end, -1 when a record is malformed. */
int records_next(const struct frame *f, size_t *off, char **key, char **value);

/* ---- spawn.c: what a process runs as (exec request or the workload) ---- */
struct proc_spec {
    struct strv argv, env;
    char *cwd, *user;
    int tty;
    unsigned short rows, cols;
};
struct ident {
    uid_t uid;
    gid_t gid;
    gid_t groups[64];
    int ngroups;
    char home[256];
};
int resolve_user(const char *user, struct ident *id, char *err, size_t errlen);
void build_env(struct strv *out, const struct strv *base, const struct strv *extra,
               const struct ident *id, int tty);
/* In the forked child: become the identity, chdir, exec. Never returns. */
void spawn_exec(const struct proc_spec *spec, const struct strv *env, const struct ident *id)
    __attribute__((noreturn));
void proc_spec_free(struct proc_spec *s);

/* ---- session.c: one exec over one stream ---------------------------------- */
/* Runs spec with stdio on the framed stream `sock`; returns the exit result
 * (0-255, 128+N for signal N) or -1 if the stream broke first. */
int session_run(int sock, const struct proc_spec *spec, const struct strv *base_env);
int exec_spec_parse(const struct frame *f, struct proc_spec *spec, char *err, size_t errlen);

/* ---- tar.c: ustar/pax stream writer and reader over DATA frames ------------ */
int tar_send(int sock, const char *path, char *err, size_t errlen);
int tar_receive(int sock, const char *dest, char *err, size_t errlen);

/* ---- agent.c ---------------------------------------------------------------- */
struct agent_opts {
    const char *unix_path; /* listen here instead of AF_VSOCK */
    unsigned vsock_port;
    const struct strv *base_env;
    pid_t shutdown_pid;    /* who is told when the host asks for shutdown */
    int shutdown_sig;
};
int agent_listen(const struct agent_opts *o);
void agent_serve(int lfd, const struct agent_opts *o) __attribute__((noreturn));
int agent_handshake(int fd);
int vsock_listen(unsigned port);
int unix_listen(const char *path);

/* ---- net.c / rootfs.c / init.c -------------------------------------------- */
int net_setup(const struct boot_config *c);
int rootfs_mount(const struct boot_config *c);
int rootfs_switch(void);
void rootfs_populate(const struct boot_config *c);
void rootfs_etc_files(const struct boot_config *c);
pid_t ssh_start(void);
void unmount_all(void);
int init_main(void) __attribute__((noreturn));

#define NEWROOT "/mm/root"
#define SIG_SHUTDOWN (SIGRTMIN + 4)

#endif
