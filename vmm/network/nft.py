"""nftables rules, loaded through libnftables in-process.

We own exactly one table in the host namespace (`ip mm`; another name for another
namespace prefix, see `vmm.network.scope`) and one, `ip mm`, in each VM namespace;
nothing else in the ruleset is touched. The host table's rules are static and read
sets and maps that hold the data (bridges, subnets, published ports), so attaching a
VM only *adds* elements. That matters for speed: on this kernel any nft transaction
that deletes something (a rule, an element) waits for an RCU grace period (~8-16 ms),
while additions take ~0.1 ms. Deletion happens on detach (the VM's ports) and when the
last VM leaves (the whole table). `full_host_script` re-renders everything from the
store in one transaction, which is how prune repairs a crash.

Host table: masquerade for VM traffic leaving through a non-mm interface (not from
internal networks), published ports as DNAT maps (prerouting for traffic from
elsewhere, output for the host's own connections, loopback included), a forward filter
fencing networks: nothing enters or leaves an internal network's bridge, and no new
connection crosses from one mm network to another (published ports excepted, as with
Docker's user-defined networks), and a guard. Loopback DNAT works through
`route_localnet=1` on the bridges plus masquerading 127.0.0.0/8 sources onto them; the
guard drops packets arriving from a bridge addressed to 127.0.0.0/8, which
route_localnet would otherwise let a guest send to the host's loopback services.

libnftables instead of forking `nft`: a fork+exec cost ~20 ms per load on a busy host.
A context opens its netlink socket in the calling thread's network namespace, so
`netns.entered(name)` + `run(script)` acts inside a VM namespace.
"""
from __future__ import annotations

import ctypes
import functools

from vmm.network import scope
from vmm.network.errors import NftError
from vmm.network.ipam import Network
from vmm.network.ports import ANY, PortMapping

VM_TABLE = "mm"  # inside a VM namespace: private to it, so never scoped
MODULES = "nf_tables nft_nat nft_masq nft_chain_nat nft_ct nft_fib_ipv4"


@functools.cache
def _lib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libnftables.so.1")
    except OSError:
        raise NftError("libnftables (the nftables package) is not installed") from None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    return lib


def run(script: str) -> None:
    """Load `script` as one nft transaction in the calling thread's network namespace."""
    lib = _lib()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise NftError("libnftables could not create a context (out of memory?)")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        if lib.nft_run_cmd_from_buffer(ctx, script.encode()) != 0:
            detail = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace").strip()
            raise NftError(f"nft rejected our rules: {detail or 'no detail'}",
                           hint=f"mm needs root and a kernel with nf_tables NAT (`mm doctor`); where "
                                f"modules do not load on demand, `modprobe -a {MODULES}`")
    finally:
        lib.nft_ctx_free(ctx)


def _chain(name: str, hook: str | None, rules: list[str]) -> list[str]:
    """Declare (idempotently), empty and refill one chain of the VM namespace's table."""
    spec = f" {{ {hook}; policy accept; }}" if hook else ""
    return [f"add chain ip {VM_TABLE} {name}{spec}", f"flush chain ip {VM_TABLE} {name}",
            *(f"add rule ip {VM_TABLE} {name} {rule}" for rule in rules)]


def _script(chains: list[list[str]]) -> str:
    lines = [f"add table ip {VM_TABLE}"]
    for chain in chains:
        lines += chain
    return "\n".join(lines) + "\n"


def delete_script() -> str:
    table = scope.host_table()
    return f"add table ip {table}\ndelete table ip {table}\n"


# The forward chain's `same` set pairs every bridge with itself: with br_netfilter
# loaded, traffic between two VMs of one bridge passes the forward hook with iif == oif,
# and stays allowed. Crossing between networks is refused unless the connection was
# DNATed (a published port), whose replies carry the same conntrack status.
_HOST_TABLE = """\
table ip @TABLE@ {
  set bridges { type ifname; }
  set internal { type ifname; }
  set same { type ifname . ifname; }
  set outbound { type ipv4_addr; flags interval; }
  set subnets { type ipv4_addr; flags interval; }
  map pub_tcp { type inet_service : ipv4_addr . inet_service; }
  map pub_udp { type inet_service : ipv4_addr . inet_service; }
  map pub_tcp_at { type ipv4_addr . inet_service : ipv4_addr . inet_service; }
  map pub_udp_at { type ipv4_addr . inet_service : ipv4_addr . inet_service; }
  chain guard {
    type filter hook prerouting priority raw; policy accept;
    iifname @bridges ip daddr 127.0.0.0/8 drop
  }
  chain publish {
    dnat ip to ip daddr . tcp dport map @pub_tcp_at
    dnat ip to ip daddr . udp dport map @pub_udp_at
    dnat ip to tcp dport map @pub_tcp
    dnat ip to udp dport map @pub_udp
  }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump publish
  }
  chain output {
    type nat hook output priority -100; policy accept;
    fib daddr type local jump publish
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr @outbound oifname != @bridges masquerade
    oifname @bridges ip saddr 127.0.0.0/8 masquerade
    oifname @bridges ip saddr @subnets ct status dnat masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname @internal iifname . oifname != @same drop
    oifname @internal iifname . oifname != @same drop
    iifname @bridges oifname @bridges iifname . oifname != @same ct status & dnat == 0 drop
  }
}
"""


def host_table_script() -> str:
    """The host table's declaration (sets, maps, chains) under this scope's name."""
    return _HOST_TABLE.replace("@TABLE@", scope.host_table())


def network_elements(network: Network) -> list[str]:
    """Make `network` known to the host table (idempotent: `add element` of a member is a no-op)."""
    t = scope.host_table()
    lines = [f'add element ip {t} bridges {{ "{network.bridge}" }}',
             f'add element ip {t} same {{ "{network.bridge}" . "{network.bridge}" }}',
             f"add element ip {t} subnets {{ {network.subnet} }}"]
    if network.internal:
        lines.append(f'add element ip {t} internal {{ "{network.bridge}" }}')
    else:
        lines.append(f"add element ip {t} outbound {{ {network.subnet} }}")
    return lines


def _port_key(p: PortMapping) -> tuple[str, str]:
    if p.host_ip == ANY:
        return f"pub_{p.proto}", f"{p.host_port}"
    return f"pub_{p.proto}_at", f"{p.host_ip} . {p.host_port}"


def port_elements(op: str, vm_ip: str, mappings: list[PortMapping]) -> list[str]:
    """`add` or `delete` the published ports of one VM."""
    t = scope.host_table()
    lines = []
    for p in mappings:
        name, key = _port_key(p)
        value = f" : {vm_ip} . {p.guest_port}" if op == "add" else ""
        lines.append(f"{op} element ip {t} {name} {{ {key}{value} }}")
    return lines


def lines(items: list[str]) -> str:
    return "\n".join(items) + "\n"


def full_host_script(networks: list[Network], published: list[tuple[str, PortMapping]]) -> str:
    """The whole host table from scratch, replacing what is there, in one transaction."""
    body = [delete_script(), host_table_script()]
    for network in networks:
        body += network_elements(network)
    for vm_ip, mapping in published:
        body += port_elements("add", vm_ip, [mapping])
    return lines(body)


def vm_script(unique_ip: str, guest_ip: str, uplink: str) -> str:
    """The VM namespace's 1:1 NAT between its unique address and the guest's fixed one."""
    return _script([
        _chain("prerouting", "type nat hook prerouting priority dstnat",
               [f'iifname "{uplink}" ip daddr {unique_ip} dnat to {guest_ip}']),
        _chain("postrouting", "type nat hook postrouting priority srcnat",
               [f'oifname "{uplink}" ip saddr {guest_ip} snat to {unique_ip}']),
    ])
