/* spawn.c: how the workload and every exec become a process, OCI-style.
 *
 * Owns the user resolution (a name, uid, name:group or uid:gid, looked up in the
 * current root's /etc/passwd and /etc/group the way runc does: a numeric uid
 * missing from passwd is fine, a missing name is an error), the environment
 * (image/config env, request overrides, then PATH/HOME/HOSTNAME/TERM defaults)
 * and the final steps in the child: groups, gid, uid, cwd, PATH search, execve.
 */
#include "mm.h"

#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static int parse_id(const char *s, unsigned long *out)
{
    if (!*s)
        return -1;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || v > 0xfffffffeUL)
        return -1;
    *out = v;
    return 0;
}

/* Splits a passwd/group line into at most `max` colon-separated fields. */
static int split_colons(char *line, char **f, int max)
{
    int n = 0;
    f[n++] = line;
    for (char *p = line; *p && n < max; p++)
        if (*p == ':') {
            *p = 0;
            f[n++] = p + 1;
        }
    return n;
}

/* Looks `name` (or, if by_id, the numeric id) up in passwd; fills uid/gid/home. */
static int passwd_lookup(const char *name, unsigned long id, int by_id, struct ident *out,
                         char *found_name, size_t found_len)
{
    FILE *f = fopen("/etc/passwd", "re");
    if (!f)
        return 0;
    char line[1024];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *fld[7];
        if (split_colons(line, fld, 7) < 7)
            continue;
        unsigned long uid, gid;
        if (parse_id(fld[2], &uid) < 0 || parse_id(fld[3], &gid) < 0)
            continue;
        if (by_id ? uid != id : strcmp(fld[0], name) != 0)
            continue;
        out->uid = (uid_t)uid;
        out->gid = (gid_t)gid;
        snprintf(out->home, sizeof out->home, "%s", *fld[5] ? fld[5] : "/");
        snprintf(found_name, found_len, "%s", fld[0]);
        found = 1;
    }
    fclose(f);
    return found;
}

/* Group name -> gid (0 if not found, gid set), and supplementary groups of user. */
static int group_scan(const char *group_name, gid_t *gid_out, const char *user, struct ident *id)
{
    FILE *f = fopen("/etc/group", "re");
    int found = 0;
    if (!f)
        return 0;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        char *fld[4];
        if (split_colons(line, fld, 4) < 4)
            continue;
        unsigned long gid;
        if (parse_id(fld[2], &gid) < 0)
            continue;
        if (group_name && !found && !strcmp(fld[0], group_name)) {
            *gid_out = (gid_t)gid;
            found = 1;
        }
        if (!user || !*user)
            continue;
        char *save = NULL;
        for (char *m = strtok_r(fld[3], ",", &save); m; m = strtok_r(NULL, ",", &save))
            if (!strcmp(m, user) && id->ngroups < (int)(sizeof id->groups / sizeof id->groups[0]))
                id->groups[id->ngroups++] = (gid_t)gid;
    }
    fclose(f);
    return found;
}

int resolve_user(const char *user, struct ident *id, char *err, size_t errlen)
{
    memset(id, 0, sizeof *id);
    snprintf(id->home, sizeof id->home, "/");
    char spec[256];
    snprintf(spec, sizeof spec, "%s", user && *user ? user : "0");
    char *grp = strchr(spec, ':');
    if (grp)
        *grp++ = 0;
    char name[256] = "";
    unsigned long num;
    if (parse_id(spec, &num) == 0) {
        id->uid = (uid_t)num;
        id->gid = 0;
        passwd_lookup(NULL, num, 1, id, name, sizeof name);
    } else if (!passwd_lookup(spec, 0, 0, id, name, sizeof name)) {
        snprintf(err, errlen, "unable to find user %s: no matching entries in passwd file", spec);
        return -1;
    }
    gid_t g = id->gid;
    if (grp && *grp && parse_id(grp, &num) == 0) {
        g = (gid_t)num;
        grp = NULL;
    }
    int found = group_scan(grp && *grp ? grp : NULL, &g, name, id);
    if (grp && *grp && !found) {
        snprintf(err, errlen, "unable to find group %s: no matching entries in group file", grp);
        return -1;
    }
    id->gid = g;
    /* The primary group is always in the list, as login(1) would have it. */
    int have = 0;
    for (int i = 0; i < id->ngroups; i++)
        have |= id->groups[i] == id->gid;
    if (!have && id->ngroups < (int)(sizeof id->groups / sizeof id->groups[0]))
        id->groups[id->ngroups++] = id->gid;
    return 0;
}

void build_env(struct strv *out, const struct strv *base, const struct strv *extra,
               const struct ident *id, int tty)
{
    for (size_t i = 0; base && i < base->n; i++)
        strv_set_env(out, base->v[i]);
    for (size_t i = 0; extra && i < extra->n; i++)
        strv_set_env(out, extra->v[i]);
    if (!strv_get_env(out, "PATH"))
        strv_set_env(out, "PATH=" DEFAULT_PATH);
    if (!strv_get_env(out, "HOME")) {
        char kv[300];
        snprintf(kv, sizeof kv, "HOME=%s", id->home);
        strv_set_env(out, kv);
    }
    if (!strv_get_env(out, "HOSTNAME")) {
        char host[256] = "", kv[300];
        if (gethostname(host, sizeof host - 1) == 0 && *host) {
            snprintf(kv, sizeof kv, "HOSTNAME=%s", host);
            strv_set_env(out, kv);
        }
    }
    if (tty && !strv_get_env(out, "TERM"))
        strv_set_env(out, "TERM=xterm");
}

static void exec_path(const char *file, char *const argv[], char *const envp[], const char *path)
{
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return;
    }
    int saved = ENOENT;
    const char *p = path ? path : DEFAULT_PATH;
    while (*p) {
        const char *colon = strchr(p, ':');
        size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
        char full[4096];
        if (dlen + 1 + strlen(file) + 1 <= sizeof full) {
            memcpy(full, p, dlen);
            full[dlen] = 0;
            snprintf(full + dlen, sizeof full - dlen, "%s%s", dlen ? "/" : "", file);
            execve(full, argv, envp);
            if (errno == EACCES)
                saved = EACCES;
        }
        if (!colon)
            break;
        p = colon + 1;
    }
    errno = saved;
}

void spawn_exec(const struct proc_spec *spec, const struct strv *env, const struct ident *id)
{
    /* Undo what init/agent set up for themselves: blocked signals, ignores. */
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    const char *what = "setgroups";
    if (setgroups((size_t)id->ngroups, id->groups) < 0 && errno != EPERM)
        goto fail;
    what = "setgid";
    if (setgid(id->gid) < 0)
        goto fail;
    what = "setuid";
    if (setuid(id->uid) < 0)
        goto fail;
    const char *cwd = spec->cwd && *spec->cwd ? spec->cwd : NULL;
    if (cwd) {
        what = "chdir";
        if (chdir(cwd) < 0)
            goto fail;
    } else if (chdir(id->home) < 0 && chdir("/") < 0) {
        what = "chdir";
        goto fail;
    }
    what = spec->argv.v[0];
    exec_path(spec->argv.v[0], spec->argv.v, env->v, strv_get_env(env, "PATH"));
fail:;
    int e = errno;
    char msg[512];
    snprintf(msg, sizeof msg, "mm-init: %s: %s\n", what, strerror(e));
    (void)write_all(2, msg, strlen(msg));
    /* The shell convention: 126 found but not runnable, 127 not found. */
    _exit(e == ENOENT ? 127 : 126);
}

void proc_spec_free(struct proc_spec *s)
{
    strv_free(&s->argv);
    strv_free(&s->env);
    free(s->cwd);
    free(s->user);
    s->cwd = s->user = NULL;
}
