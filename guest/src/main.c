/* main.c: mm-init's entry point: PID 1 becomes init; otherwise a subcommand.
 *
 *   mm-init                      (as PID 1) boot the guest, see init.c
 *   mm-init agent --unix PATH    run the exec agent on a Unix socket (host tests)
 *   mm-init agent --vsock PORT   run the exec agent on AF_VSOCK
 *   mm-init version              print the protocol and config versions
 */
#include "mm.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static int usage(void)
{
    fprintf(stderr, "usage: mm-init agent (--unix PATH | --vsock PORT)\n       mm-init version\n");
    return 2;
}

static int agent_cmd(int argc, char **argv)
{
    static struct strv env;
    struct agent_opts o = {.vsock_port = 1024, .base_env = &env,
                           .shutdown_pid = getpid(), .shutdown_sig = SIGTERM};
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--unix") && i + 1 < argc)
            o.unix_path = argv[++i];
        else if (!strcmp(argv[i], "--vsock") && i + 1 < argc)
            o.vsock_port = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--debug"))
            mm_debug = 1;
        else
            return usage();
    }
    /* Orphans of exec'd processes come back to us and are reaped (SA_NOCLDWAIT),
     * as they would be by PID 1 in the guest. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    int lfd = agent_listen(&o);
    if (lfd < 0) {
        perror("mm-init agent: listen");
        return 1;
    }
    agent_serve(lfd, &o);
}

int main(int argc, char **argv)
{
    if (getpid() == 1)
        init_main();
    if (argc >= 2 && !strcmp(argv[1], "agent"))
        return agent_cmd(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "version")) {
        printf("mm-init protocol=%d config=%d\n", MM_PROTO_VERSION, MM_CONFIG_VERSION);
        return 0;
    }
    return usage();
}
