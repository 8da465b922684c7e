/* agent.c: the exec agent's listener and per-connection dispatch.
 *
 * Listens on AF_VSOCK (the guest's port, default 1024) or, for host-side tests, a
 * Unix socket path. Every connection is served by its own forked process, so one
 * hostile or crashing session cannot take the agent down, and execs run
 * concurrently. A connection is: HELLO exchange, then exactly one request
 * (EXEC, COPY_IN, COPY_OUT, SHUTDOWN); see guest/PROTOCOL.md.
 */
#include "mm.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* <linux/vm_sockets.h> is not in musl's include path; this is its stable ABI. */
#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#define VMADDR_CID_ANY 0xffffffffu
struct sockaddr_vm {
    unsigned short svm_family;
    unsigned short svm_reserved1;
    unsigned int svm_port;
    unsigned int svm_cid;
    unsigned char svm_flags;
    unsigned char svm_zero[3];
};

int vsock_listen(unsigned port)
{
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 128) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int unix_listen(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    unlink(path);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 128) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int agent_listen(const struct agent_opts *o)
{
    return o->unix_path ? unix_listen(o->unix_path) : vsock_listen(o->vsock_port);
}

int agent_handshake(int fd)
{
    struct frame f;
    if (frame_recv(fd, &f) != 1)
        return -1;
    int ok = f.type == F_HELLO && f.len >= 9 && !memcmp(f.data, "mm-agent ", 9);
    unsigned long v = ok ? strtoul((char *)f.data + 9, NULL, 10) : 0;
    frame_free(&f);
    if (!ok) {
        frame_error(fd, "expected HELLO \"mm-agent <version>\"");
        return -1;
    }
    if (v != MM_PROTO_VERSION) {
        frame_error(fd, "protocol version %lu not supported (agent speaks %d)", v, MM_PROTO_VERSION);
        return -1;
    }
    return frame_send(fd, F_HELLO, MM_HELLO, sizeof MM_HELLO - 1);
}

static int path_request(const struct frame *f, char *path, size_t cap)
{
    size_t off = 0;
    char *k, *v;
    int rc;
    *path = 0;
    while ((rc = records_next(f, &off, &k, &v)) == 1)
        if (!strcmp(k, "path"))
            snprintf(path, cap, "%s", v);
    return rc < 0 || !*path ? -1 : 0;
}

static int serve_copy(int fd, const struct frame *f)
{
    char path[4096], err[512] = "";
    if (path_request(f, path, sizeof path) < 0)
        return frame_error(fd, "copy request needs path=");
    int rc = f->type == F_COPY_IN ? tar_receive(fd, path, err, sizeof err)
                                  : tar_send(fd, path, err, sizeof err);
    if (rc < 0)
        return frame_error(fd, "%s", *err ? err : "copy failed");
    if (f->type == F_COPY_OUT && frame_send(fd, F_DATA_EOF, NULL, 0) < 0)
        return -1;
    return frame_send(fd, F_DONE, NULL, 0);
}

static int serve_one(int fd, const struct agent_opts *o)
{
    if (agent_handshake(fd) < 0)
        return 1;
    struct frame f;
    if (frame_recv(fd, &f) != 1)
        return 1;
    int rc = 0;
    char err[300];
    switch (f.type) {
    case F_EXEC: {
        struct proc_spec spec;
        if (exec_spec_parse(&f, &spec, err, sizeof err) < 0)
            frame_error(fd, "%s", err);
        else
            session_run(fd, &spec, o->base_env);
        proc_spec_free(&spec);
        break;
    }
    case F_COPY_IN:
    case F_COPY_OUT:
        rc = serve_copy(fd, &f);
        break;
    case F_SHUTDOWN:
        frame_send(fd, F_DONE, NULL, 0);
        if (o->shutdown_pid > 0)
            kill(o->shutdown_pid, o->shutdown_sig);
        break;
    default:
        frame_error(fd, "unknown request 0x%02x", f.type);
    }
    frame_free(&f);
    return rc < 0;
}

void agent_serve(int lfd, const struct agent_opts *o)
{
    /* Sessions are reaped automatically; each one reaps its own process. */
    struct sigaction sa = {.sa_handler = SIG_IGN, .sa_flags = SA_NOCLDWAIT};
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE) {
                if (errno != EINTR && errno != ECONNABORTED)
                    usleep(10000);
                continue;
            }
            logmsg("agent: accept: %s", strerror(errno));
            _exit(1);
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(lfd);
            signal(SIGCHLD, SIG_DFL);
            _exit(serve_one(fd, o));
        }
        if (pid < 0)
            logmsg("agent: fork: %s", strerror(errno));
        close(fd);
    }
}
