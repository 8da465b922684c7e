/* net.c: the guest's network from the boot config, with ioctls (no `ip` binary).
 *
 * Brings loopback up, then (if mm.ip is set) gives the interface its IPv4
 * address/prefix, MTU, brings it up and adds the default route via mm.gw.
 */
#include "mm.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int if_up(int s, const char *name)
{
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        return -1;
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    return ioctl(s, SIOCSIFFLAGS, &ifr);
}

static void set_sin(struct sockaddr *sa, in_addr_t addr)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = addr};
    memcpy(sa, &sin, sizeof sin);
}

static int parse_cidr(const char *spec, in_addr_t *addr, in_addr_t *mask)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", spec);
    char *slash = strchr(buf, '/');
    unsigned long prefix = 24;
    if (slash) {
        *slash++ = 0;
        char *end;
        prefix = strtoul(slash, &end, 10);
        if (*end || !*slash || prefix > 32)
            return -1;
    }
    struct in_addr a;
    if (inet_pton(AF_INET, buf, &a) != 1)
        return -1;
    *addr = a.s_addr;
    *mask = htonl(prefix ? 0xffffffffu << (32 - prefix) : 0);
    return 0;
}

int net_setup(const struct boot_config *c)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    if (if_up(s, "lo") < 0)
        logmsg("net: lo up: %s", strerror(errno));
    if (!c->ip) {
        close(s);
        return 0;
    }
    in_addr_t addr, mask;
    if (parse_cidr(c->ip, &addr, &mask) < 0) {
        logmsg("net: bad address %s (want A.B.C.D/PREFIX)", c->ip);
        close(s);
        return -1;
    }
    /* The NIC's driver probes before init runs, but give a slow probe a second. */
    for (int i = 0; i < 100 && !if_nametoindex(c->ifname); i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", c->ifname);
    const char *step = "address";
    set_sin(&ifr.ifr_addr, addr);
    if (ioctl(s, SIOCSIFADDR, &ifr) < 0)
        goto fail;
    step = "netmask";
    set_sin(&ifr.ifr_netmask, mask);
    if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0)
        goto fail;
    if (c->mtu) {
        step = "mtu";
        ifr.ifr_mtu = c->mtu;
        if (ioctl(s, SIOCSIFMTU, &ifr) < 0)
            goto fail;
    }
    step = "up";
    if (if_up(s, c->ifname) < 0)
        goto fail;
    if (c->gw) {
        struct in_addr gw;
        step = "gateway";
        if (inet_pton(AF_INET, c->gw, &gw) != 1) {
            errno = EINVAL;
            goto fail;
        }
        struct rtentry rt = {0};
        set_sin(&rt.rt_dst, 0);
        set_sin(&rt.rt_genmask, 0);
        set_sin(&rt.rt_gateway, gw.s_addr);
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        rt.rt_dev = (char *)c->ifname;
        if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST)
            goto fail;
    }
    close(s);
    return 0;
fail:
    logmsg("net: %s %s on %s: %s", step, c->ip, c->ifname, strerror(errno));
    close(s);
    return -1;
}
