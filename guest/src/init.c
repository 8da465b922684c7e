/* init.c: PID 1 of every guest.
 *
 * Owns the boot sequence (kernel filesystems, config, root switch, hostname,
 * network, agent, sshd, workload), the signal loop (reap every zombie, forward
 * SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2/SIGWINCH to the workload, a
 * graceful stop on the agent's SHUTDOWN) and the orderly end: the workload's
 * result is printed on the console as `MM-EXIT code=<0-255> signal=<n>` (and, in
 * attach mode, sent as the EXIT frame), then everything is killed, synced,
 * unmounted and the machine powered off.
 */
#include "mm.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static struct boot_config cfg;
static pid_t agent_pid = -1;
static long agent_started;

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void early_mounts(void)
{
    mkdir("/proc", 0555), mkdir("/sys", 0555), mkdir("/dev", 0755);
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
}

static void load_config(void)
{
    char err[300];
    config_defaults(&cfg);
    if (config_parse_file(&cfg, "/mm/config", err, sizeof err) < 0)
        logmsg("config: %s", err);
    char cmdline[4096] = "";
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
        cmdline[n > 0 ? n : 0] = 0;
        close(fd);
    }
    if (config_parse_cmdline(&cfg, cmdline, err, sizeof err) < 0)
        logmsg("kernel command line: %s", err);
}

static pid_t start_agent(void)
{
    agent_started = now_ms();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct agent_opts o = {.vsock_port = cfg.agent_port, .unix_path = cfg.agent_path, .base_env = &cfg.env,
                           .shutdown_pid = 1, .shutdown_sig = SIG_SHUTDOWN};
    int lfd = agent_listen(&o);
    if (lfd < 0) {
        logmsg("agent: vsock port %u: %s (no exec agent in this VM)", cfg.agent_port, strerror(errno));
        _exit(1);
    }
    agent_serve(lfd, &o);
}

static void workload_spec(struct proc_spec *spec)
{
    memset(spec, 0, sizeof *spec);
    for (size_t i = 0; i < cfg.argv.n; i++)
        strv_push(&spec->argv, cfg.argv.v[i]);
    spec->cwd = cfg.workdir ? xstrdup(cfg.workdir) : NULL;
    spec->user = cfg.user ? xstrdup(cfg.user) : NULL;
    spec->tty = cfg.tty;
    spec->rows = cfg.rows;
    spec->cols = cfg.cols;
    if (spec->cwd)
        mkdir_p(spec->cwd, 0755); /* OCI: WorkingDir is created if missing */
}

/* The workload's stdio is the console, or a host attached on the attach port. */
static pid_t start_workload(void)
{
    struct proc_spec spec;
    workload_spec(&spec);
    if (cfg.stdio_vsock) {
        pid_t pid = fork();
        if (pid != 0)
            return pid;
        int lfd = cfg.attach_path ? unix_listen(cfg.attach_path) : vsock_listen(cfg.attach_port), fd;
        if (lfd < 0) {
            logmsg("attach: vsock port %u: %s", cfg.attach_port, strerror(errno));
            _exit(125);
        }
        while ((fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) < 0 || agent_handshake(fd) < 0)
            if (fd >= 0)
                close(fd);
        close(lfd);
        int r = session_run(fd, &spec, &cfg.env);
        _exit(r == -2 ? 125 : r < 0 ? 255 : r);
    }
    char err[300];
    struct ident id;
    if (resolve_user(spec.user, &id, err, sizeof err) < 0) {
        logmsg("workload: %s", err);
        return -1;
    }
    struct strv env = {0};
    build_env(&env, &cfg.env, NULL, &id, isatty(0));
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        if (isatty(0))
            ioctl(0, TIOCSCTTY, 1);
        spawn_exec(&spec, &env, &id);
    }
    strv_free(&env);
    proc_spec_free(&spec);
    return pid;
}

static int signalfd_all(void)
{
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    return signalfd(-1, &all, SFD_CLOEXEC);
}

static void reap(pid_t workload, int *result, int *sig)
{
    int st;
    pid_t p;
    while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
        if (p == agent_pid) {
            /* The agent was killed: start a new one, unless it died at once
             * (no vsock in this VM), which would only loop. */
            int ran_ms = (int)(now_ms() - agent_started);
            logmsg("agent exited (%s %d) after %d ms%s", WIFSIGNALED(st) ? "signal" : "status",
                   WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), ran_ms,
                   ran_ms > 1000 ? ", restarting it" : "");
            agent_pid = ran_ms > 1000 ? start_agent() : -1;
            continue;
        }
        if (p != workload || *result >= 0)
            continue;
        if (WIFSIGNALED(st)) {
            *sig = WTERMSIG(st);
            *result = 128 + *sig;
        } else {
            *result = WEXITSTATUS(st);
            /* In attach mode the session process exits with 128+N for signal N. */
            *sig = cfg.stdio_vsock && *result > 128 && *result < 128 + NSIG ? *result - 128 : 0;
        }
    }
}

static void kill_everything(int sfd)
{
    kill(-1, SIGTERM);
    long deadline = now_ms() + 2000;
    int st;
    while (now_ms() < deadline) {
        while (waitpid(-1, &st, WNOHANG) > 0) {
        }
        if (waitpid(-1, &st, WNOHANG) < 0 && errno == ECHILD)
            break;
        struct pollfd p = {.fd = sfd, .events = POLLIN};
        if (poll(&p, 1, 50) > 0) {
            struct signalfd_siginfo si;
            (void)read(sfd, &si, sizeof si);
        }
    }
    kill(-1, SIGKILL);
    while (waitpid(-1, &st, 0) > 0) {
    }
}

/* True in a VM; false when a test runs init in a child pid namespace, where the
 * kernel log is the host's and must not be written. */
static int in_initial_pid_ns(void)
{
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 && st.st_ino == 0xEFFFFFFCu; /* PROC_PID_INIT_INO */
}

static void __attribute__((noreturn)) finish(int sfd, int result, int sig)
{
    kill_everything(sfd);
    char line[64];
    snprintf(line, sizeof line, "MM-EXIT code=%d signal=%d\n", result, sig);
    (void)write_all(1, line, strlen(line));
    /* Also through the kernel log: printk reaches the console synchronously,
     * whatever state the console's tty (or its interrupt) is in. */
    int kmsg = in_initial_pid_ns() ? open("/dev/kmsg", O_WRONLY | O_CLOEXEC) : -1;
    if (kmsg >= 0) {
        char kline[80];
        snprintf(kline, sizeof kline, "<5>mm-init: %s", line);
        (void)write_all(kmsg, kline, strlen(kline));
        close(kmsg);
    }
    /* A serial console drains by interrupt: without this the line (and the
     * workload's last output) can still be in the UART buffer at power-off. */
    tcdrain(1);
    sync();
    unmount_all();
    sync();
    reboot(cfg.reboot ? RB_AUTOBOOT : RB_POWER_OFF);
    /* Only reached where reboot() is refused (tests outside a VM). */
    _exit(result);
}

int init_main(void)
{
    int sfd = signalfd_all();
    early_mounts();
    load_config();
    if (cfg.root && *cfg.root) {
        if (rootfs_mount(&cfg) < 0 || rootfs_switch() < 0)
            finish(sfd, 125, 0);
    }
    rootfs_populate(&cfg);
    if (sethostname(cfg.hostname, strlen(cfg.hostname)) < 0)
        logmsg("sethostname: %s", strerror(errno));
    rootfs_etc_files(&cfg);
    net_setup(&cfg);
    dbg("root ready, starting agent and workload");
    agent_pid = start_agent();
    if (cfg.ssh && ssh_start() < 0)
        logmsg("ssh: fork: %s", strerror(errno));
    if (cfg.argv.n == 0) {
        logmsg("no workload command in the boot config");
        finish(sfd, 127, 0);
    }
    pid_t workload = start_workload();
    if (workload < 0)
        finish(sfd, 125, 0);
    int result = -1, sig = 0;
    long stop_deadline = -1;
    while (result < 0) {
        int timeout = stop_deadline < 0 ? -1 : (int)(stop_deadline - now_ms());
        if (stop_deadline >= 0 && timeout <= 0) {
            kill(workload, SIGKILL);
            kill(-workload, SIGKILL);
            stop_deadline = -1;
            continue;
        }
        struct pollfd p = {.fd = sfd, .events = POLLIN};
        if (poll(&p, 1, timeout) <= 0)
            continue;
        struct signalfd_siginfo si;
        if (read(sfd, &si, sizeof si) != sizeof si)
            continue;
        int s = (int)si.ssi_signo;
        if (s == SIGCHLD) {
            reap(workload, &result, &sig);
        } else if (s == SIG_SHUTDOWN) {
            kill(workload, SIGTERM);
            if (stop_deadline < 0)
                stop_deadline = now_ms() + cfg.stop_timeout * 1000L;
        } else if (s == SIGTERM || s == SIGINT || s == SIGHUP || s == SIGQUIT || s == SIGUSR1 ||
                   s == SIGUSR2 || s == SIGWINCH) {
            kill(workload, s);
        }
    }
    finish(sfd, result, sig);
}
