"""Links, addresses and routes through pyroute2; every function is idempotent.

Functions take an open `IPRoute` bound to the namespace they act in (a netlink socket
stays in the namespace it was opened in, see `netns.entered`). TAP devices are created
persistent with the flags the worker opens them with (IFF_TAP | IFF_NO_PI |
IFF_VNET_HDR): the kernel refuses to attach a queue whose flags differ.
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vmm.network.errors import NetworkError

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TAP_FLAGS = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
MAIN_TABLE = 254
LOCAL_TABLE = 255


def _fail(what: str, exc: NetlinkError, module: str | None = None) -> NetworkError:
    message = f"{what}: {os.strerror(exc.code)} (netlink errno {exc.code})"
    if module and exc.code == errno.EOPNOTSUPP:
        # The kernel lacks the link type; some hosts (the lab) do not load modules on demand.
        return NetworkError(message, hint=f"load the {module} module: modprobe {module}")
    return NetworkError(message)


def index(ipr: IPRoute, name: str) -> int | None:
    # One RTM_GETLINK by name, not a dump of every link (link_lookup) as hosts grow.
    try:
        return ipr.link("get", ifname=name)[0]["index"]
    except NetlinkError as exc:
        if exc.code == 19:  # ENODEV
            return None
        raise _fail(f"looking up link {name}", exc) from None


def names(ipr: IPRoute, prefix: str = "") -> list[str]:
    return sorted(n for n in (link.get("ifname") for link in ipr.get_links()) if n and n.startswith(prefix))


def set_up(ipr: IPRoute, name: str, **attrs) -> None:
    """Bring `name` up (setting `attrs` too, e.g. address=MAC) by name: one request."""
    try:
        ipr.link("set", ifname=name, state="up", **attrs)
    except NetlinkError as exc:
        raise _fail(f"bringing {name} up", exc) from None


def ensure_address(ipr: IPRoute, idx: int, address: str, prefixlen: int) -> None:
    # Adding is the check: EEXIST means it is there already (ours, or a concurrent attach's).
    try:
        ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
    except NetlinkError as exc:
        if exc.code != 17:
            raise _fail(f"adding {address}/{prefixlen}", exc) from None


def ensure_bridge(ipr: IPRoute, name: str, address: str, prefixlen: int) -> int:
    try:
        link = ipr.link("get", ifname=name)[0]
    except NetlinkError:
        link = None
    if link is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", state="up")
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST: another process made it first
                raise _fail(f"creating bridge {name}", exc, "bridge") from None
        link = ipr.link("get", ifname=name)[0]
    if not link["flags"] & 1:  # IFF_UP
        set_up(ipr, name)
    ensure_address(ipr, link["index"], address, prefixlen)
    return link["index"]


def delete(ipr: IPRoute, name: str) -> bool:
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code == 19:  # ENODEV: not there (or gone meanwhile)
            return False
        raise _fail(f"deleting link {name}", exc) from None
    return True


def ensure_veth(ipr: IPRoute, host_name: str, peer_name: str, netns_path: str, bridge_idx: int,
                fresh: bool) -> None:
    """A veth pair: `host_name` here, up and enslaved to the bridge; `peer_name` in the namespace.

    `fresh`: the namespace was just created, so a `host_name` already here is the dying
    half of an earlier pair (namespaces are destroyed asynchronously) and is replaced.
    """
    nsfd = os.open(netns_path, os.O_RDONLY)
    try:
        for attempt in (1, 2):
            try:
                ipr.link("add", ifname=host_name, kind="veth", master=bridge_idx, state="up",
                         peer={"ifname": peer_name, "net_ns_fd": nsfd})
                return
            except NetlinkError as exc:
                if exc.code != 17:
                    raise _fail(f"creating veth {host_name}", exc, "veth") from None
            if not fresh or attempt == 2:
                break
            delete(ipr, host_name)
    finally:
        os.close(nsfd)
    set_up(ipr, host_name, master=bridge_idx)


def ensure_tap(name: str) -> None:
    """Create persistent TAP `name` in the calling thread's namespace (kept when it exists)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), TAP_FLAGS))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as exc:
        raise NetworkError(f"creating TAP {name}: {exc.strerror}", hint="load the tun module (modprobe tun)") from None
    finally:
        os.close(fd)


def ensure_default_route(ipr: IPRoute, gateway: str) -> None:
    try:
        ipr.route("replace", dst="0.0.0.0/0", gateway=gateway)
    except NetlinkError as exc:
        raise _fail(f"adding the default route via {gateway}", exc) from None


def host_routes(ipr: IPRoute, ours: frozenset[str] = frozenset()) -> list[tuple[ipaddress.IPv4Network, str]]:
    """Non-default IPv4 routes of the main and local tables, except on our bridges `ours`.

    The local table holds the host's own addresses and 127.0.0.0/8.
    """
    by_index = {link["index"]: link.get("ifname") for link in ipr.get_links()}
    routes = []
    table = [*ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE),
             *ipr.get_routes(family=socket.AF_INET, table=LOCAL_TABLE)]
    for route in table:
        if route["dst_len"] == 0:
            continue
        dev = by_index.get(route.get("RTA_OIF"), "?")
        if dev in ours:
            continue
        dst = ipaddress.ip_network(f"{route.get('RTA_DST')}/{route['dst_len']}", strict=False)
        routes.append((dst, dev))
    return routes
