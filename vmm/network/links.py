"""Links, addresses and routes through pyroute2; every function is idempotent.

Functions take an open `IPRoute` bound to the namespace they act in (a netlink socket
stays in the namespace it was opened in, see `netns.entered`). TAP devices are created
persistent with the flags the worker opens them with (IFF_TAP | IFF_NO_PI |
IFF_VNET_HDR): the kernel refuses to attach a queue whose flags differ.
"""
from __future__ import annotations

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


def _fail(what: str, exc: NetlinkError) -> NetworkError:
    return NetworkError(f"{what}: {os.strerror(exc.code)} (netlink errno {exc.code})")


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


def set_up(ipr: IPRoute, name: str) -> int:
    idx = index(ipr, name)
    if idx is None:
        raise NetworkError(f"link {name} vanished while being configured")
    ipr.link("set", index=idx, state="up")
    return idx


def ensure_address(ipr: IPRoute, idx: int, address: str, prefixlen: int) -> None:
    current = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=socket.AF_INET)}
    if (address, prefixlen) in current:
        return
    try:
        ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
    except NetlinkError as exc:
        if exc.code == 17:  # EEXIST: a concurrent attach added it between our check and now
            return
        raise _fail(f"adding {address}/{prefixlen}", exc) from None


def ensure_bridge(ipr: IPRoute, name: str, address: str, prefixlen: int) -> int:
    if index(ipr, name) is None:
        try:
            ipr.link("add", ifname=name, kind="bridge")
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST: another process made it first
                raise _fail(f"creating bridge {name}", exc) from None
    idx = set_up(ipr, name)
    ensure_address(ipr, idx, address, prefixlen)
    return idx


def delete(ipr: IPRoute, name: str) -> bool:
    idx = index(ipr, name)
    if idx is None:
        return False
    try:
        ipr.link("del", index=idx)
    except NetlinkError as exc:
        if exc.code != 19:  # ENODEV: gone meanwhile
            raise _fail(f"deleting link {name}", exc) from None
    return True


def ensure_veth(ipr: IPRoute, host_name: str, peer_name: str, netns_path: str, bridge_idx: int) -> None:
    """A veth pair: `host_name` here enslaved to the bridge, `peer_name` inside the namespace."""
    if index(ipr, host_name) is None:
        nsfd = os.open(netns_path, os.O_RDONLY)
        try:
            ipr.link("add", ifname=host_name, kind="veth", peer={"ifname": peer_name, "net_ns_fd": nsfd})
        except NetlinkError as exc:
            raise _fail(f"creating veth {host_name}", exc) from None
        finally:
            os.close(nsfd)
    idx = index(ipr, host_name)
    ipr.link("set", index=idx, master=bridge_idx, state="up")


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
    for route in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
        if route["dst_len"] == 0 and route.get("RTA_GATEWAY") == gateway:
            return
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
