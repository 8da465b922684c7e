"""Networks, leases and published ports in the state store (area "network").

A network is a named IPv4 subnet behind one host bridge; its first host address is the
bridge's (the VMs' gateway). A lease gives one VM one address of one network, and
remembers its owner (pid + start time, so a recycled pid is not mistaken for it): a
lease whose owner is gone is stale and `mm network prune` reclaims it. Allocation runs
in a BEGIN IMMEDIATE transaction, so concurrent `mm run`s never get the same address.
"""
from __future__ import annotations

import ipaddress
import os
import sqlite3
import time
from dataclasses import dataclass

from vmm import store
from vmm.network import scope
from vmm.network.errors import (  # noqa: F401 (re-exported for callers of ipam)
    BadSubnet, NetworkExists, NetworkInUse, NetworkNotFound, PoolExhausted, SubnetOverlap)

AREA = "network"
DEFAULT_NAME = "mm"
DEFAULT_SUBNET = "10.88.0.0/16"
# The addressing every guest sees inside its VM namespace (see vmm.network.attachment).
GUEST_SUBNET = ipaddress.ip_network("172.31.255.0/30")

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE networks (
            name      TEXT PRIMARY KEY,
            bridge    TEXT NOT NULL UNIQUE,
            subnet    TEXT NOT NULL UNIQUE,
            gateway   TEXT NOT NULL,
            internal  INTEGER NOT NULL DEFAULT 0,
            created   REAL NOT NULL
        );
        CREATE TABLE leases (
            vm_id       TEXT PRIMARY KEY,
            network     TEXT NOT NULL REFERENCES networks(name),
            ip          TEXT NOT NULL,
            owner_pid   INTEGER,
            owner_start INTEGER,
            created     REAL NOT NULL,
            UNIQUE (network, ip)
        );
        CREATE TABLE ports (
            vm_id      TEXT NOT NULL REFERENCES leases(vm_id) ON DELETE CASCADE,
            proto      TEXT NOT NULL CHECK (proto IN ('tcp', 'udp')),
            host_ip    TEXT NOT NULL,
            host_port  INTEGER NOT NULL,
            guest_port INTEGER NOT NULL,
            PRIMARY KEY (proto, host_ip, host_port)
        )
        """,
    ),
]


@dataclass(frozen=True)
class Network:
    name: str
    bridge: str
    subnet: str
    gateway: str
    internal: bool

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    def as_dict(self) -> dict:
        return {"name": self.name, "bridge": self.bridge, "subnet": self.subnet,
                "gateway": self.gateway, "internal": self.internal}


@dataclass(frozen=True)
class Lease:
    vm_id: str
    network: str
    ip: str
    owner_pid: int | None
    owner_start: int | None


def open_db(path=None) -> sqlite3.Connection:
    conn = store.connect(path)
    store.migrate(conn, AREA, MIGRATIONS)
    return conn


def default_subnet() -> str:
    return os.environ.get("MM_NETWORK_SUBNET") or DEFAULT_SUBNET


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise BadSubnet(f"bad subnet {text!r}: {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 29:
        raise BadSubnet(f"bad subnet {text!r}: need IPv4, /29 or larger")
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified or net.is_reserved:
        raise BadSubnet(f"bad subnet {text!r}: loopback, link-local, multicast and reserved ranges cannot hold VMs")
    return net


def _network(row: sqlite3.Row) -> Network:
    return Network(row["name"], row["bridge"], row["subnet"], row["gateway"], bool(row["internal"]))


def get_network(conn: sqlite3.Connection, name: str) -> Network:
    row = conn.execute("SELECT * FROM networks WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NetworkNotFound(f"no network named {name!r}")
    return _network(row)


def list_networks(conn: sqlite3.Connection) -> list[Network]:
    return [_network(r) for r in conn.execute("SELECT * FROM networks ORDER BY created, name")]


def _free_bridge(conn: sqlite3.Connection, name: str) -> str:
    """`mm0` for the default network, then `mm1`, `mm2`... (another stem for another scope)."""
    stem = scope.bridge_stem()
    if name == DEFAULT_NAME:
        return f"{stem}0"
    used = {r[0] for r in conn.execute("SELECT bridge FROM networks")}
    n = 1
    while f"{stem}{n}" in used:
        n += 1
    return f"{stem}{n}"


def create_network(conn, name: str, subnet: str, internal: bool, host_routes) -> Network:
    """Record a network; refuses a subnet overlapping `host_routes` or another network."""
    net = parse_subnet(subnet)
    if not name or not name.replace("-", "").replace("_", "").isalnum() or len(name) > 32:
        raise BadSubnet(f"bad network name {name!r}", hint="use letters, digits, - and _ (at most 32)")
    with store.transaction(conn):
        if conn.execute("SELECT 1 FROM networks WHERE name = ?", (name,)).fetchone():
            raise NetworkExists(f"network {name!r} exists already")
        if net.overlaps(GUEST_SUBNET):
            raise SubnetOverlap(f"subnet {net} overlaps {GUEST_SUBNET}, the guests' fixed addressing")
        for other in list_networks(conn):
            if net.overlaps(ipaddress.ip_network(other.subnet)):
                raise SubnetOverlap(f"subnet {net} overlaps network {other.name!r} ({other.subnet})")
        for route, dev in host_routes:
            if net.overlaps(route):
                raise SubnetOverlap(f"subnet {net} overlaps the host route {route} on {dev}")
        gateway = str(next(net.hosts()))
        bridge = _free_bridge(conn, name)
        conn.execute(
            "INSERT INTO networks (name, bridge, subnet, gateway, internal, created) VALUES (?, ?, ?, ?, ?, ?)",
            (name, bridge, str(net), gateway, int(internal), time.time()),
        )
    return get_network(conn, name)


def delete_network(conn, name: str) -> Network:
    with store.transaction(conn):
        network = get_network(conn, name)
        users = [r[0] for r in conn.execute("SELECT vm_id FROM leases WHERE network = ?", (name,))]
        if users:
            raise NetworkInUse(f"network {name!r} is used by {len(users)} machine(s): {', '.join(u[:12] for u in users)}")
        conn.execute("DELETE FROM networks WHERE name = ?", (name,))
    return network


def _lease(row: sqlite3.Row) -> Lease:
    return Lease(row["vm_id"], row["network"], row["ip"], row["owner_pid"], row["owner_start"])


def get_lease(conn, vm_id: str) -> Lease | None:
    row = conn.execute("SELECT * FROM leases WHERE vm_id = ?", (vm_id,)).fetchone()
    return _lease(row) if row else None


def list_leases(conn, network: str | None = None) -> list[Lease]:
    if network is None:
        rows = conn.execute("SELECT * FROM leases ORDER BY network, created")
    else:
        rows = conn.execute("SELECT * FROM leases WHERE network = ? ORDER BY created", (network,))
    return [_lease(r) for r in rows]


def pick_address(network: Network, used: set[str]) -> str:
    net = ipaddress.ip_network(network.subnet)
    for host in net.hosts():
        text = str(host)
        if text != network.gateway and text not in used:
            return text
    raise PoolExhausted(f"network {network.name!r} ({network.subnet}) has no free address")


def allocate(conn, vm_id: str, network: str, owner_pid: int | None = None) -> Lease:
    """The lease of `vm_id` on `network`, allocated now unless it exists (idempotent).

    Must run inside `store.transaction(conn)` so the choice and the insert are atomic.
    """
    existing = get_lease(conn, vm_id)
    if existing is not None:
        if existing.network != network:
            raise NetworkExists(f"machine {vm_id[:12]} is attached to network {existing.network!r} already",
                                hint="detach it first")
        return existing
    net = get_network(conn, network)
    used = {r[0] for r in conn.execute("SELECT ip FROM leases WHERE network = ?", (network,))}
    ip = pick_address(net, used)
    pid = owner_pid if owner_pid is not None else os.getpid()
    conn.execute(
        "INSERT INTO leases (vm_id, network, ip, owner_pid, owner_start, created) VALUES (?, ?, ?, ?, ?, ?)",
        (vm_id, network, ip, pid, process_start(pid), time.time()),
    )
    return get_lease(conn, vm_id)


def release(conn, vm_id: str) -> bool:
    """Drop the lease (and its published ports); True when there was one."""
    cur = conn.execute("DELETE FROM leases WHERE vm_id = ?", (vm_id,))
    return cur.rowcount > 0


def set_owner(conn, vm_id: str, pid: int) -> None:
    """Hand the lease to another process (the worker that outlives `mm run`)."""
    with store.transaction(conn):
        cur = conn.execute("UPDATE leases SET owner_pid = ?, owner_start = ? WHERE vm_id = ?",
                           (pid, process_start(pid), vm_id))
        if cur.rowcount == 0:
            raise NetworkNotFound(f"machine {vm_id[:12]} has no network lease")


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(b")", 1)[1].split()[19])


def owner_alive(lease: Lease) -> bool:
    if lease.owner_pid is None:
        return False
    start = process_start(lease.owner_pid)
    return start is not None and (lease.owner_start is None or start == lease.owner_start)
