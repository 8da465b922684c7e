"""Per-VM plumbing: `attach(vm_id, network) -> NetworkAttachment`, `detach`, `open_tap`.

Layout for one VM (see docs/network.md for why):

    host ns:  bridge mmN (gateway .1 of the network) ── veth mmv<id12>
    VM ns mm-<id12>:  mmeth0 = the VM's unique address, default route via the bridge
                      mmtap0 = 172.31.255.1/30, fixed MAC   <- the worker's TAP
                      nft: unique address <-> 172.31.255.2 (1:1 DNAT/SNAT)
    guest:    172.31.255.2/30, gateway 172.31.255.1, fixed MAC (same in every VM)

Every step is idempotent, so attach after a crash completes what is missing. A failed
attach tears down what it built and releases the lease before raising.

Two locks, never nested the other way round (see vmm.network.hostlock): the store's
write lock for leases and ports (short transactions, no nft inside), and the host-table
file lock around every edit of the host nft table and every removal it must follow.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import struct
from dataclasses import asdict, dataclass, field

from pyroute2 import IPRoute

from vmm import store
from vmm.network import dns, hostlock, ipam, links, netns, nft, scope
from vmm.network import ports as portspec
from vmm.network.errors import BadPortSpec, NetworkError, NftError  # noqa: F401 (NetworkError re-exported)

GUEST_IP = str(ipam.GUEST_SUBNET[2])
GATEWAY_IP = str(ipam.GUEST_SUBNET[1])
GUEST_PREFIXLEN = ipam.GUEST_SUBNET.prefixlen
# Fixed MACs on both ends: a restored or branched guest's ARP cache stays valid.
GUEST_MAC = "52:54:00:6d:6d:02"
TAP_MAC = "52:54:00:6d:6d:01"
TAP_NAME = "mmtap0"
UPLINK_NAME = "mmeth0"
NONE = "none"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class NetworkAttachment:
    """What the worker and the guest need; `tap`/`netns` are None for `--network none`."""

    vm_id: str
    network: str
    netns: str | None
    netns_path: str | None
    tap: str | None
    guest_ip: str | None
    guest_prefixlen: int | None
    gateway: str | None
    guest_mac: str | None
    host_ip: str | None
    dns: list[str] = field(default_factory=list)
    ports: list[dict] = field(default_factory=list)
    internal: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    def kernel_ip_arg(self) -> str:
        """The kernel's `ip=` parameter for this addressing (`ip=off` without a network)."""
        if self.guest_ip is None:
            return "ip=off"
        mask = ".".join(str((0xFFFFFFFF << (32 - self.guest_prefixlen) >> s) & 0xFF) for s in (24, 16, 8, 0))
        return f"ip={self.guest_ip}::{self.gateway}:{mask}::eth0:off"


def netns_prefix() -> str:
    return scope.prefix()


def short(vm_id: str) -> str:
    return vm_id[:12]


def netns_name(vm_id: str) -> str:
    return netns_prefix() + short(vm_id)


def veth_name(vm_id: str) -> str:
    return "mmv" + short(vm_id)


def _check_id(vm_id: str) -> None:
    if not _ID_RE.match(vm_id or ""):
        raise NetworkError(f"bad machine id {vm_id!r}", hint="ids are letters, digits, '_', '.', '-'")


def _none_attachment(vm_id: str) -> NetworkAttachment:
    return NetworkAttachment(vm_id, NONE, None, None, None, None, None, None, None, None)


def _attachment(net: ipam.Network, lease: ipam.Lease, mappings: list[portspec.PortMapping]) -> NetworkAttachment:
    ns = netns_name(lease.vm_id)
    return NetworkAttachment(
        vm_id=lease.vm_id, network=net.name, netns=ns, netns_path=netns.path(ns), tap=TAP_NAME,
        guest_ip=GUEST_IP, guest_prefixlen=GUEST_PREFIXLEN, gateway=GATEWAY_IP, guest_mac=GUEST_MAC,
        host_ip=lease.ip, dns=[] if net.internal else dns.host_nameservers(),
        ports=[m.as_dict() for m in mappings], internal=net.internal,
    )


def ensure_default(conn, ipr: IPRoute) -> None:
    if conn.execute("SELECT 1 FROM networks WHERE name = ?", (ipam.DEFAULT_NAME,)).fetchone():
        return
    try:
        ipam.create_network(conn, ipam.DEFAULT_NAME, ipam.default_subnet(), False, host_routes(conn, ipr))
    except ipam.NetworkExists:
        pass  # created by a concurrent attach
    except ipam.SubnetOverlap as exc:
        raise ipam.SubnetOverlap(f"default network mm: {exc.message}",
                                 hint="set MM_NETWORK_SUBNET to a free subnet, e.g. MM_NETWORK_SUBNET=10.77.0.0/16") from None


def host_routes(conn, ipr: IPRoute):
    ours = frozenset(n.bridge for n in ipam.list_networks(conn))
    return links.host_routes(ipr, ours)


def _stored_ports(conn, vm_id: str) -> list[portspec.PortMapping]:
    rows = conn.execute("SELECT * FROM ports WHERE vm_id = ? ORDER BY host_port", (vm_id,))
    return [portspec.PortMapping(r["host_port"], r["guest_port"], r["proto"], r["host_ip"]) for r in rows]


def _reserve(conn, vm_id: str, network: str, mappings, owner_pid, dropped=()):
    """Lease + ports in one transaction (the port checks see every other machine's ports).

    `dropped`: ports a re-attach no longer publishes. Their rows go in this transaction, a
    removal, so it commits under the host-table lock together with the elements' deletion.
    """
    with hostlock.held(conn) if dropped else contextlib.nullcontext():
        lease = _reserve_rows(conn, vm_id, network, mappings, owner_pid)
        if dropped:
            _unpublish(conn, lease.ip, list(dropped))
    return lease


def _reserve_rows(conn, vm_id: str, network: str, mappings, owner_pid):
    with store.transaction(conn):
        lease = ipam.allocate(conn, vm_id, network, owner_pid)
        portspec.check_store(conn, mappings, vm_id)
        conn.execute("DELETE FROM ports WHERE vm_id = ?", (vm_id,))
        conn.executemany(
            "INSERT INTO ports (vm_id, proto, host_ip, host_port, guest_port) VALUES (?, ?, ?, ?, ?)",
            [(vm_id, m.proto, m.host_ip, m.host_port, m.guest_port) for m in mappings],
        )
    return lease


def attach(vm_id: str, network: str = ipam.DEFAULT_NAME, publish: list[str] | tuple = (),
           owner_pid: int | None = None, conn=None) -> NetworkAttachment:
    """Give `vm_id` its namespace, TAP, unique address and published ports (idempotent)."""
    _check_id(vm_id)
    mappings = [portspec.parse(p) for p in publish]
    if network == NONE:
        if mappings:
            raise BadPortSpec("--network none cannot publish ports", hint="drop -p or pick a network")
        return _none_attachment(vm_id)
    portspec.check_unique(mappings)
    conn = conn or ipam.open_db()
    with IPRoute() as ipr:
        ensure_default(conn, ipr)
        net = ipam.get_network(conn, network)
        before = _stored_ports(conn, vm_id)
        for m in mappings:
            if m not in before:
                portspec.check_free(m)
        existed = ipam.get_lease(conn, vm_id) is not None
        lease = _reserve(conn, vm_id, network, mappings, owner_pid, [m for m in before if m not in mappings])
        try:
            _plumb(ipr, net, lease)
            _host_add(conn, net, lease, mappings)
        except BaseException:
            if not existed:  # a failed re-attach leaves a working VM alone; a new one is undone
                _teardown(ipr, vm_id)
            with hostlock.held(conn):
                if not existed:
                    with store.transaction(conn):
                        ipam.release(conn, vm_id)
                _load_full(conn)
            raise
    return _attachment(net, lease, mappings)


def _plumb(ipr: IPRoute, net: ipam.Network, lease: ipam.Lease) -> None:
    ns = netns_name(lease.vm_id)
    fresh = netns.create(ns)
    bridge = links.ensure_bridge(ipr, net.bridge, net.gateway, net.prefixlen)
    netns.write_sysctl("net.ipv4.ip_forward", "1")
    # Lets the host's own connections to 127.0.0.1:PORT be DNATed onto the bridge.
    netns.write_sysctl(f"net.ipv4.conf.{net.bridge}.route_localnet", "1")
    links.ensure_veth(ipr, veth_name(lease.vm_id), UPLINK_NAME, netns.path(ns), bridge, fresh)
    with netns.entered(ns):
        with IPRoute() as nipr:
            links.set_up(nipr, "lo")
            links.set_up(nipr, UPLINK_NAME)
            links.ensure_address(nipr, links.index(nipr, UPLINK_NAME), lease.ip, net.prefixlen)
            links.ensure_default_route(nipr, net.gateway)
            links.ensure_tap(TAP_NAME)
            links.set_up(nipr, TAP_NAME, address=TAP_MAC)
            links.ensure_address(nipr, links.index(nipr, TAP_NAME), GATEWAY_IP, GUEST_PREFIXLEN)
        netns.write_sysctl("net.ipv4.ip_forward", "1")
        nft.run(nft.vm_script(lease.ip, GUEST_IP, UPLINK_NAME))


def _host_add(conn, net: ipam.Network, lease: ipam.Lease, mappings) -> None:
    """Add the network's and the VM's elements to the host table (only additions: fast)."""
    with hostlock.held(conn):
        try:
            # No existence check first: without the table this fails as a whole, and the
            # full render below creates it (one libnftables load fewer on the common path).
            nft.run(nft.lines(nft.network_elements(net) + nft.port_elements("add", lease.ip, mappings)))
        except NftError:
            # No table yet, or a stale element from a crash: render everything from the store.
            _load_full(conn)


def _unpublish(conn, vm_ip: str, mappings) -> None:
    """Delete one VM's port elements (under the host-table lock); repair by a render if that fails."""
    try:
        nft.run(nft.lines(nft.port_elements("delete", vm_ip, mappings)))
    except NftError:
        _load_full(conn)  # an element already missing (a crash, a prune): the store decides


def _load_full(conn) -> None:
    """Render the whole host table from the store and load it (under the host-table lock)."""
    nft.run(_full_host(conn))


@contextlib.contextmanager
def _read_snapshot(conn):
    """One consistent read of the store (a deferred transaction: no write lock taken)."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _full_host(conn) -> str:
    with _read_snapshot(conn):
        rows = conn.execute(
            "SELECT p.*, l.ip FROM ports p JOIN leases l ON l.vm_id = p.vm_id ORDER BY p.host_port").fetchall()
        used = {r[0] for r in conn.execute("SELECT DISTINCT network FROM leases")}
        networks = [n for n in ipam.list_networks(conn) if n.name in used]
    if not networks:
        return nft.delete_script()
    published = [(r["ip"], portspec.PortMapping(r["host_port"], r["guest_port"], r["proto"], r["host_ip"]))
                 for r in rows]
    return nft.full_host_script(networks, published)


def _teardown(ipr: IPRoute, vm_id: str) -> None:
    # Removing the namespace is enough: the kernel destroys it, and with it both veth ends,
    # asynchronously. Deleting the veth here would wait ~25 ms for RCU.
    if not netns.remove(netns_name(vm_id)):
        links.delete(ipr, veth_name(vm_id))


def sync_host(conn) -> None:
    """Render the whole host table from the store and load it (deleted when no VM is attached)."""
    with hostlock.held(conn):
        _load_full(conn)


def detach(vm_id: str, conn=None) -> bool:
    """Remove the VM's namespace, links, rules and lease; True when something was attached."""
    _check_id(vm_id)
    conn = conn or ipam.open_db()
    with IPRoute() as ipr:
        had = netns.exists(netns_name(vm_id))
        _teardown(ipr, vm_id)
    # The release is a removal: it commits under the host-table lock, in the same hold as
    # the deletion of the VM's elements, so no other editor sees one without the other.
    with hostlock.held(conn):
        with store.transaction(conn):
            lease = ipam.get_lease(conn, vm_id)
            mappings = _stored_ports(conn, vm_id)
            ipam.release(conn, vm_id)
            last = conn.execute("SELECT 1 FROM leases LIMIT 1").fetchone() is None
        if last:
            nft.run(nft.delete_script())  # the last VM: no table at all
        elif lease is not None and mappings:
            _unpublish(conn, lease.ip, mappings)
    return lease is not None or had


def lookup(vm_id: str, conn=None) -> NetworkAttachment | None:
    """The attachment of `vm_id` as recorded in the store (None: not attached)."""
    conn = conn or ipam.open_db()
    lease = ipam.get_lease(conn, vm_id)
    if lease is None:
        return None
    return _attachment(ipam.get_network(conn, lease.network), lease, _stored_ports(conn, vm_id))


def open_tap(attachment: NetworkAttachment) -> int:
    """Open the VM's TAP inside its namespace (non-blocking, IFF_VNET_HDR); return the fd."""
    if attachment.tap is None or attachment.netns is None:
        raise NetworkError(f"machine {short(attachment.vm_id)} has no network (--network none)")
    with netns.entered(attachment.netns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, links.TUNSETIFF, struct.pack("16sH22x", attachment.tap.encode(), links.TAP_FLAGS))
        except OSError as exc:
            os.close(fd)
            raise NetworkError(f"cannot open TAP {attachment.tap} in {attachment.netns}: {exc.strerror}") from None
    return fd


def set_owner(vm_id: str, pid: int, conn=None) -> None:
    """Record `pid` (the VM's worker) as the lease owner, so prune keeps it while it lives."""
    ipam.set_owner(conn or ipam.open_db(), vm_id, pid)
