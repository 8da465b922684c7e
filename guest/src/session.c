/* session.c: one exec over one framed stream (an agent connection, or the
 * workload's attach stream).
 *
 * Owns the request parsing (EXEC records), the process's stdio (three pipes, or a
 * PTY whose master carries stdin and the merged output), and the poll loop that
 * moves STDIN/STDOUT/STDERR frames, applies RESIZE and SIGNAL, and ends with one
 * EXIT frame. The process leads its own session and process group; when the
 * session ends, normally or because the host went away, the whole group is
 * SIGKILLed so nothing is left behind. Stdin is buffered (bounded) and written
 * non-blocking so a process that does not read its input cannot wedge the loop.
 */
#include "mm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define STDIN_BUFFER_MAX (4u << 20)

int exec_spec_parse(const struct frame *f, struct proc_spec *spec, char *err, size_t errlen)
{
    memset(spec, 0, sizeof *spec);
    spec->rows = 24;
    spec->cols = 80;
    size_t off = 0;
    char *k, *v;
    int rc;
    while ((rc = records_next(f, &off, &k, &v)) == 1) {
        if (!strcmp(k, "arg")) strv_push(&spec->argv, v);
        else if (!strcmp(k, "env")) {
            if (!strchr(v, '=')) {
                snprintf(err, errlen, "env entry without '='");
                return -1;
            }
            strv_set_env(&spec->env, v);
        } else if (!strcmp(k, "cwd")) { free(spec->cwd); spec->cwd = xstrdup(v); }
        else if (!strcmp(k, "user")) { free(spec->user); spec->user = xstrdup(v); }
        else if (!strcmp(k, "tty")) spec->tty = !strcmp(v, "1");
        else if (!strcmp(k, "rows") || !strcmp(k, "cols")) {
            char *end;
            unsigned long n = strtoul(v, &end, 10);
            if (*end || !*v || n > 0xffff) {
                snprintf(err, errlen, "bad %s", k);
                return -1;
            }
            *(k[0] == 'r' ? &spec->rows : &spec->cols) = (unsigned short)n;
        } /* unknown keys are ignored: a newer host may send more */
    }
    if (rc < 0) {
        snprintf(err, errlen, "malformed request record");
        return -1;
    }
    if (spec->argv.n == 0) {
        snprintf(err, errlen, "no command given");
        return -1;
    }
    return 0;
}

struct sess {
    int sock, in_w, out_r, err_r, sigfd;
    pid_t pid;
    int tty, stdin_eof, stdin_closed;
    char *pend;
    size_t pend_len;
};

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void stdin_finish(struct sess *s)
{
    if (s->tty) {
        /* A terminal has no half-close: send its EOF character instead. */
        struct termios t;
        char eof = 4;
        if (tcgetattr(s->in_w, &t) == 0 && t.c_cc[VEOF])
            eof = (char)t.c_cc[VEOF];
        (void)write(s->in_w, &eof, 1);
        s->stdin_closed = 1;
    } else {
        close_fd(&s->in_w);
        s->stdin_closed = 1;
    }
}

static void stdin_flush(struct sess *s)
{
    while (s->pend_len) {
        ssize_t n = write(s->in_w, s->pend, s->pend_len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return;
            /* The process closed its stdin (EPIPE) or the PTY hung up. */
            s->pend_len = 0;
            if (!s->tty)
                close_fd(&s->in_w);
            s->stdin_closed = 1;
            return;
        }
        memmove(s->pend, s->pend + n, s->pend_len - (size_t)n);
        s->pend_len -= (size_t)n;
    }
    if (s->stdin_eof && !s->stdin_closed)
        stdin_finish(s);
}

/* Handles one frame from the host; -1 means the stream is broken or hostile. */
static int host_frame(struct sess *s)
{
    struct frame f;
    int rc = frame_recv(s->sock, &f);
    if (rc <= 0)
        return -1;
    rc = 0;
    switch (f.type) {
    case F_STDIN:
        if (s->stdin_closed || s->stdin_eof || f.len == 0)
            break;
        if (s->pend_len + f.len > STDIN_BUFFER_MAX) {
            rc = -1; /* the host ignored the window it was told about */
            break;
        }
        char *p = realloc(s->pend, s->pend_len + f.len);
        if (!p) {
            rc = -1;
            break;
        }
        s->pend = p;
        memcpy(s->pend + s->pend_len, f.data, f.len);
        s->pend_len += f.len;
        stdin_flush(s);
        break;
    case F_STDIN_EOF:
        s->stdin_eof = 1;
        if (!s->stdin_closed)
            stdin_flush(s);
        break;
    case F_RESIZE:
        if (f.len != 4) {
            rc = -1;
            break;
        }
        if (s->tty) {
            struct winsize ws = {.ws_row = le16(f.data), .ws_col = le16(f.data + 2)};
            ioctl(s->in_w, TIOCSWINSZ, &ws);
        }
        break;
    case F_SIGNAL:
        if (f.len != 4 || le32(f.data) == 0 || le32(f.data) >= (uint32_t)NSIG) {
            rc = -1;
            break;
        }
        kill(s->pid, (int)le32(f.data));
        break;
    default:
        rc = -1;
    }
    if (rc < 0)
        frame_error(s->sock, "unexpected frame 0x%02x (len %u) during exec", f.type, f.len);
    frame_free(&f);
    return rc;
}

/* Moves what is readable on *fd to the host; -1 if the host is gone. */
static int pump(struct sess *s, int *fd, uint8_t type, int once)
{
    static char buf[MM_CHUNK];
    do {
        ssize_t n = read(*fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0) { /* EOF, or EIO from a PTY whose other side is gone */
            close_fd(fd);
            return 0;
        }
        if (frame_send(s->sock, type, buf, (uint32_t)n) < 0)
            return -1;
    } while (!once);
    return 0;
}

static int start_child(struct sess *s, const struct proc_spec *spec, const struct strv *env,
                       const struct ident *id)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1}, er[2] = {-1, -1}, slave = -1;
    if (spec->tty) {
        struct winsize ws = {.ws_row = spec->rows, .ws_col = spec->cols};
        if (openpty(&s->in_w, &slave, NULL, NULL, &ws) < 0)
            return -1;
        fcntl(s->in_w, F_SETFD, FD_CLOEXEC);
        s->out_r = s->in_w;
    } else if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(er, O_CLOEXEC) < 0) {
        return -1;
    }
    s->pid = fork();
    if (s->pid < 0)
        return -1;
    if (s->pid == 0) {
        setsid();
        if (spec->tty) {
            ioctl(slave, TIOCSCTTY, 0);
            dup2(slave, 0), dup2(slave, 1), dup2(slave, 2);
            if (slave > 2)
                close(slave);
        } else {
            dup2(in[0], 0), dup2(out[1], 1), dup2(er[1], 2);
        }
        spawn_exec(spec, env, id);
    }
    if (spec->tty) {
        close(slave);
        s->out_r = dup(s->in_w); /* separate fds so closing one direction is independent */
        fcntl(s->out_r, F_SETFD, FD_CLOEXEC);
    } else {
        close(in[0]), close(out[1]), close(er[1]);
        s->in_w = in[1], s->out_r = out[0], s->err_r = er[0];
        set_nonblock(s->err_r);
    }
    set_nonblock(s->in_w);
    set_nonblock(s->out_r);
    return 0;
}

static int wait_status(pid_t pid, int *result, int *sig)
{
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r != pid)
        return 0;
    *sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
    *result = *sig ? 128 + *sig : WEXITSTATUS(st);
    return 1;
}

int session_run(int sock, const struct proc_spec *spec, const struct strv *base_env)
{
    char err[300];
    struct ident id;
    if (resolve_user(spec->user, &id, err, sizeof err) < 0) {
        frame_error(sock, "%s", err);
        return -2;
    }
    struct strv env = {0};
    build_env(&env, base_env, &spec->env, &id, spec->tty);
    struct sess s = {.sock = sock, .in_w = -1, .out_r = -1, .err_r = -1, .tty = spec->tty};
    /* SIGCHLD ends the loop; the stop signals init forwards (attach mode) are
     * passed on to the process. */
    static const int fwd[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    for (size_t i = 0; i < sizeof fwd / sizeof fwd[0]; i++)
        sigaddset(&chld, fwd[i]);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    signal(SIGCHLD, SIG_DFL);
    s.sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (s.sigfd < 0 || start_child(&s, spec, &env, &id) < 0) {
        frame_error(sock, "cannot start %s: %s", spec->argv.v[0], strerror(errno));
        strv_free(&env);
        return -2;
    }
    strv_free(&env);
    int result = -1, sig = 0, broken = frame_send_u32s(sock, F_STARTED, (uint32_t)s.pid, 0, 0) < 0;
    while (!broken) {
        struct pollfd p[4] = {
            {.fd = (s.pend_len < STDIN_BUFFER_MAX / 2) ? sock : -1, .events = POLLIN},
            {.fd = s.pend_len ? s.in_w : -1, .events = POLLOUT},
            {.fd = s.out_r, .events = POLLIN},
            {.fd = s.err_r, .events = POLLIN},
        };
        struct pollfd sp = {.fd = s.sigfd, .events = POLLIN};
        struct pollfd all[5] = {p[0], p[1], p[2], p[3], sp};
        if (poll(all, 5, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (all[0].revents && host_frame(&s) < 0)
            broken = 1;
        if (!broken && all[1].revents)
            stdin_flush(&s);
        if (!broken && all[2].revents && pump(&s, &s.out_r, F_STDOUT, 1) < 0)
            broken = 1;
        if (!broken && all[3].revents && pump(&s, &s.err_r, F_STDERR, 1) < 0)
            broken = 1;
        if (all[4].revents) {
            struct signalfd_siginfo si;
            while (read(s.sigfd, &si, sizeof si) > 0)
                if (si.ssi_signo != SIGCHLD)
                    kill(s.pid, (int)si.ssi_signo);
            if (wait_status(s.pid, &result, &sig))
                break;
        }
    }
    /* The session is over: nothing it started outlives it. */
    kill(-s.pid, SIGKILL);
    if (result < 0) {
        kill(s.pid, SIGKILL);
        int st;
        waitpid(s.pid, &st, 0);
    } else {
        /* Output written before the exit is already in the pipes: drain it. */
        if (s.out_r >= 0 && pump(&s, &s.out_r, F_STDOUT, 0) < 0)
            broken = 1;
        if (!broken && s.err_r >= 0 && pump(&s, &s.err_r, F_STDERR, 0) < 0)
            broken = 1;
        if (!broken)
            broken = frame_send_u32s(sock, F_EXIT, (uint32_t)result, (uint32_t)sig, 1) < 0;
    }
    close_fd(&s.in_w), close_fd(&s.out_r), close_fd(&s.err_r), close_fd(&s.sigfd);
    free(s.pend);
    return broken ? -1 : result;
}
