/* rootfs.c: the guest's filesystem tree, from initramfs to the image's root.
 *
 * Owns: mounting the image's read-only root (a block device with ext4/erofs, or a
 * directory bind for host-side tests) under a writable overlay (an ext4 disk, or
 * tmpfs when the VM has none); staging dropbear into the new root's /run; the
 * switch (MS_MOVE onto / + chroot, as switch_root does); the kernel filesystems
 * in the new root; /etc/hostname, /etc/hosts, /etc/resolv.conf; and the final
 * unmount before power-off.
 */
#include "mm.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOWER "/mm/lower"
#define RW "/mm/rw"
#define SSH_SRC "/mm/ssh"
#define SSH_DST "/run/mm/ssh"

static int wait_for(const char *path, int ms)
{
    struct stat st;
    for (int i = 0; i < ms / 10; i++) {
        if (stat(path, &st) == 0)
            return 0;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return stat(path, &st);
}

static int mount_dev(const char *dev, const char *fstype, const char *target, unsigned long flags)
{
    struct stat st;
    if (stat(dev, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (mount(dev, target, NULL, MS_BIND | MS_REC, NULL) < 0)
            return -1;
        return (flags & MS_RDONLY) ? mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) : 0;
    }
    if (fstype && *fstype)
        return mount(dev, target, fstype, flags, NULL);
    /* No type given: erofs first (our default image format), then ext4. */
    if (mount(dev, target, "erofs", flags, NULL) == 0)
        return 0;
    return mount(dev, target, "ext4", flags, NULL);
}

static void stage_ssh(void)
{
    char dst[512];
    snprintf(dst, sizeof dst, "%s%s", NEWROOT, SSH_DST);
    if (mkdir_p(dst, 0700) < 0) {
        logmsg("ssh: %s: %s", dst, strerror(errno));
        return;
    }
    DIR *d = opendir(SSH_SRC);
    if (!d) {
        logmsg("ssh requested but this initramfs carries no dropbear");
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "authorized_keys"))
            continue;
        char from[600], to[1100];
        snprintf(from, sizeof from, "%s/%s", SSH_SRC, e->d_name);
        snprintf(to, sizeof to, "%s/%s", dst, e->d_name);
        if (copy_file(from, to, strstr(e->d_name, "key") ? 0600 : 0755) < 0)
            logmsg("ssh: copy %s: %s", from, strerror(errno));
    }
    closedir(d);
    /* dropbear reads ~/.ssh/authorized_keys of the user logging in (root). */
    snprintf(dst, sizeof dst, "%s/root/.ssh", NEWROOT);
    if (mkdir_p(dst, 0700) == 0) {
        chmod(dst, 0700);
        snprintf(dst, sizeof dst, "%s/root/.ssh/authorized_keys", NEWROOT);
        if (copy_file(SSH_SRC "/authorized_keys", dst, 0600) < 0)
            logmsg("ssh: authorized_keys: %s", strerror(errno));
    }
}

int rootfs_mount(const struct boot_config *c)
{
    mkdir_p(LOWER, 0755), mkdir_p(RW, 0755), mkdir_p(NEWROOT, 0755);
    if (wait_for(c->root, 5000) < 0) {
        logmsg("root device %s did not appear", c->root);
        return -1;
    }
    if (mount_dev(c->root, c->rootfstype, LOWER, MS_RDONLY) < 0) {
        logmsg("mount root %s: %s", c->root, strerror(errno));
        return -1;
    }
    if (c->overlay && *c->overlay) {
        if (wait_for(c->overlay, 5000) < 0 ||
            mount_dev(c->overlay, c->overlayfstype ? c->overlayfstype : "ext4", RW, 0) < 0) {
            logmsg("mount overlay disk %s: %s", c->overlay, strerror(errno));
            return -1;
        }
    } else if (mount("tmpfs", RW, "tmpfs", 0, "mode=0755") < 0) {
        logmsg("mount tmpfs for the overlay: %s", strerror(errno));
        return -1;
    }
    mkdir_p(RW "/upper", 0755), mkdir_p(RW "/work", 0755);
    if (mount("overlay", NEWROOT, "overlay", 0,
              "lowerdir=" LOWER ",upperdir=" RW "/upper,workdir=" RW "/work") < 0) {
        logmsg("mount overlay: %s", strerror(errno));
        return -1;
    }
    /* overlayfs holds its layers; their mounts need not stay visible. */
    umount2(LOWER, MNT_DETACH);
    umount2(RW, MNT_DETACH);
    /* /run is tmpfs, as on any Linux system; dropbear is staged there. */
    mkdir(NEWROOT "/run", 0755);
    mount("tmpfs", NEWROOT "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    if (c->ssh)
        stage_ssh();
    return 0;
}

int rootfs_switch(void)
{
    static const char *const keep[] = {"/dev", "/proc", "/sys"};
    if (chdir(NEWROOT) < 0)
        return -1;
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        char target[64];
        snprintf(target, sizeof target, "%s%s", NEWROOT, keep[i]);
        mkdir(target, 0755);
        if (mount(keep[i], target, NULL, MS_MOVE, NULL) < 0)
            logmsg("move %s: %s", keep[i], strerror(errno));
    }
    if (mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0) {
        logmsg("switch root: %s", strerror(errno));
        return -1;
    }
    return 0;
}

void rootfs_populate(const struct boot_config *c)
{
    (void)c;
    static const struct { const char *src, *dir, *type, *opts; unsigned long flags; } m[] = {
        {"devpts", "/dev/pts", "devpts", "newinstance,ptmxmode=0666,mode=0620,gid=5", MS_NOSUID | MS_NOEXEC},
        {"shm", "/dev/shm", "tmpfs", "mode=1777", MS_NOSUID | MS_NODEV},
        {"tmpfs", "/tmp", "tmpfs", "mode=1777", MS_NOSUID | MS_NODEV},
        {"cgroup2", "/sys/fs/cgroup", "cgroup2", NULL, MS_NOSUID | MS_NODEV | MS_NOEXEC},
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        mkdir_p(m[i].dir, 0755);
        if (mount(m[i].src, m[i].dir, m[i].type, m[i].flags, m[i].opts) < 0)
            logmsg("mount %s: %s", m[i].dir, strerror(errno));
    }
    symlink("/proc/self/fd", "/dev/fd");
    symlink("/proc/self/fd/0", "/dev/stdin");
    symlink("/proc/self/fd/1", "/dev/stdout");
    symlink("/proc/self/fd/2", "/dev/stderr");
}

void rootfs_etc_files(const struct boot_config *c)
{
    mkdir_p("/etc", 0755);
    char buf[4096];
    snprintf(buf, sizeof buf, "%s\n", c->hostname);
    write_file("/etc/hostname", buf, 0644);
    char addr[64] = "";
    if (c->ip) {
        snprintf(addr, sizeof addr, "%s", c->ip);
        addr[strcspn(addr, "/")] = 0;
    }
    int n = snprintf(buf, sizeof buf,
                     "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n",
                     *addr ? addr : "127.0.1.1", c->hostname);
    if (n > 0 && (size_t)n < sizeof buf)
        write_file("/etc/hosts", buf, 0644);
    if (c->dns.n) {
        size_t len = 0;
        for (size_t i = 0; i < c->dns.n && len < sizeof buf; i++)
            len += (size_t)snprintf(buf + len, sizeof buf - len, "nameserver %s\n", c->dns.v[i]);
        if (len < sizeof buf)
            write_file("/etc/resolv.conf", buf, 0644);
    }
}

pid_t ssh_start(void)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    setsid();
    struct strv none = {0}, env = {0};
    struct ident root = {.uid = 0, .gid = 0, .home = "/root"};
    build_env(&env, &none, &none, &root, 0);
    struct proc_spec spec = {0};
    static const char *const argv[] = {
        SSH_DST "/ld-linux-x86-64.so.2", "--library-path", SSH_DST, SSH_DST "/dropbear",
        "-F", "-E", "-s", "-r", SSH_DST "/host_key", "-p", "22", "-P", SSH_DST "/dropbear.pid", NULL};
    for (size_t i = 0; argv[i]; i++)
        strv_push(&spec.argv, argv[i]);
    spec.cwd = "/";
    spawn_exec(&spec, &env, &root);
}

/* /proc/mounts escapes space, tab, newline and backslash as \ooo. */
static void unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
            r[3] >= '0' && r[3] <= '7') {
            *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
            r += 3;
        } else {
            *w++ = *r;
        }
    }
    *w = 0;
}

void unmount_all(void)
{
    FILE *f = fopen("/proc/self/mounts", "re");
    struct strv targets = {0};
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
        char *save = NULL;
        strtok_r(line, " ", &save);
        char *target = strtok_r(NULL, " ", &save);
        if (target) {
            unescape(target);
            strv_push(&targets, target);
        }
    }
    if (f)
        fclose(f);
    /* Innermost (latest) first; a busy one is detached, the root remounted ro. */
    for (size_t i = targets.n; i-- > 0;) {
        if (!strcmp(targets.v[i], "/"))
            continue;
        if (umount2(targets.v[i], 0) < 0)
            umount2(targets.v[i], MNT_DETACH);
    }
    mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
    strv_free(&targets);
}
