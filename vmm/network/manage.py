"""User-defined networks (`mm network create|rm|ls|inspect`) and `mm network prune`.

A network is a store record first; its bridge appears when the first VM attaches and
stays until `rm` or `prune` (which removes bridges no VM uses). Prune repairs what a
crash can leave: leases whose owner process is gone, namespaces, veths and bridges
that no lease explains, and the host nft table (rendered again from the store).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vmm import store
from vmm.network import attachment, ipam, links, netns

_VETH_RE = re.compile(r"^mmv[A-Za-z0-9_.-]{1,12}$")


def _kind(ipr: IPRoute, name: str) -> tuple[str | None, int | None]:
    """The link's kind ("veth", "bridge"...) and its master's index."""
    try:
        found = ipr.link("get", ifname=name)
    except NetlinkError:
        return None, None  # gone meanwhile (namespaces are destroyed asynchronously)
    info = found[0].get("IFLA_LINKINFO") if found else None
    return (info.get("IFLA_INFO_KIND") if info else None), (found[0].get("IFLA_MASTER") if found else None)


def create(name: str, subnet: str, internal: bool = False, conn=None) -> ipam.Network:
    conn = conn or ipam.open_db()
    with IPRoute() as ipr:
        attachment.ensure_default(conn, ipr)
        return ipam.create_network(conn, name, subnet, internal, attachment.host_routes(conn, ipr))


def remove(name: str, conn=None) -> ipam.Network:
    conn = conn or ipam.open_db()
    if name == ipam.DEFAULT_NAME:
        raise ipam.NetworkInUse("the default network mm cannot be removed", hint="its bridge goes with `mm network prune`")
    network = ipam.get_network(conn, name)
    if ipam.list_leases(conn, name):
        ipam.delete_network(conn, name)  # raises NetworkInUse with the machines' ids
    # The link first: a crash in between leaves a record `rm` can finish, never an orphan bridge.
    with IPRoute() as ipr:
        links.delete(ipr, network.bridge)
    return ipam.delete_network(conn, name)


def list_all(conn=None) -> list[dict]:
    conn = conn or ipam.open_db()
    with IPRoute() as ipr:
        attachment.ensure_default(conn, ipr)
        present = set(links.names(ipr))
    rows = []
    for net in ipam.list_networks(conn):
        count = conn.execute("SELECT COUNT(*) FROM leases WHERE network = ?", (net.name,)).fetchone()[0]
        rows.append({**net.as_dict(), "machines": count, "bridge_up": net.bridge in present})
    return rows


def inspect(name: str, conn=None) -> dict:
    conn = conn or ipam.open_db()
    if name == ipam.DEFAULT_NAME:
        with IPRoute() as ipr:
            attachment.ensure_default(conn, ipr)
    net = ipam.get_network(conn, name)
    machines = []
    for lease in ipam.list_leases(conn, name):
        ports = conn.execute("SELECT proto, host_ip, host_port, guest_port FROM ports WHERE vm_id = ?", (lease.vm_id,))
        machines.append({"vm_id": lease.vm_id, "ip": lease.ip, "owner_pid": lease.owner_pid,
                         "owner_alive": ipam.owner_alive(lease), "netns": attachment.netns_name(lease.vm_id),
                         "ports": [dict(p) for p in ports]})
    return {**net.as_dict(), "machines": machines}


@dataclass
class PruneReport:
    leases: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"leases": self.leases, "namespaces": self.namespaces, "links": self.links}


def prune(is_live: Callable[[ipam.Lease], bool] | None = None, conn=None) -> PruneReport:
    """Reclaim what no live owner explains; `is_live` decides per lease (default: owner pid)."""
    conn = conn or ipam.open_db()
    is_live = is_live or ipam.owner_alive
    report = PruneReport()
    for lease in ipam.list_leases(conn):
        if not is_live(lease):
            attachment.detach(lease.vm_id, conn)
            report.leases.append(lease.vm_id)
    with store.transaction(conn):
        leased = {attachment.short(lease.vm_id) for lease in ipam.list_leases(conn)}
        used = {lease.network for lease in ipam.list_leases(conn)}
        idle_bridges = {n.bridge for n in ipam.list_networks(conn) if n.name not in used}
    prefix = attachment.netns_prefix()
    for name in netns.names(prefix):
        if name[len(prefix):] not in leased and _looks_like_ours(name) and netns.remove(name):
            report.namespaces.append(name)
    with IPRoute() as ipr:
        ours = {links.index(ipr, n.bridge) for n in ipam.list_networks(conn)} - {None}
        for name in links.names(ipr, "mmv"):
            kind, master = _kind(ipr, name)
            # Only a veth on one of our bridges: another store's VMs (another namespace
            # prefix, other bridges) are not ours to cut off.
            if (_VETH_RE.match(name) and name[3:] not in leased and kind == "veth" and master in ours
                    and links.delete(ipr, name)):
                report.links.append(name)
        # Only bridges of our own networks: another tool's "mm7" is not ours to delete.
        for name in sorted(idle_bridges):
            if _kind(ipr, name)[0] == "bridge" and links.delete(ipr, name):
                report.links.append(name)
    attachment.sync_host(conn)
    return report


def _looks_like_ours(name: str) -> bool:
    """A namespace holding only what `attach` puts there (it may have died half-built)."""
    with netns.entered(name):
        with IPRoute() as ipr:
            present = set(links.names(ipr))
    return present <= {"lo", attachment.UPLINK_NAME, attachment.TAP_NAME}
