"""nftables rules, rendered from the store and loaded atomically through libnftables.

Scripts go to libnftables (the library behind the `nft` command, from the nftables
package) in-process through ctypes: forking `nft` cost ~20 ms per load on a busy host,
the library ~1 ms. A context opens its netlink socket in the calling thread's network
namespace, so `netns.entered(name)` + `run(script)` acts inside a VM namespace.

We own exactly one table, `ip mm`, in the host namespace and one in each VM namespace;
nothing else in the ruleset is touched. Each load is one nft transaction that declares every chain and
refills it, so the rules are always a pure function of the store: a
crash between two steps is repaired by rendering again (`mm network prune`).

Host table: masquerade for VM traffic leaving through a non-mm interface (not for
internal networks), published ports as DNAT (prerouting for traffic from elsewhere,
output for the host's own connections, loopback included), and a forward filter that
keeps internal networks inside their bridge. Loopback DNAT works through
`route_localnet=1` on the bridges plus masquerading 127.0.0.0/8 sources onto them; a
guard drops packets arriving from a bridge addressed to 127.0.0.0/8, which
route_localnet would otherwise let a guest send to the host's loopback services.
"""
from __future__ import annotations

import ctypes
import functools

from vmm.network.errors import NftError
from vmm.network.ipam import Network
from vmm.network.ports import ANY, PortMapping

TABLE = "mm"


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
                           hint="mm needs root and a kernel with nf_tables NAT (`mm doctor`)")
    finally:
        lib.nft_ctx_free(ctx)


def _chain(name: str, hook: str | None, rules: list[str]) -> list[str]:
    """Declare (idempotently), empty and refill one chain of our table."""
    spec = f" {{ {hook}; policy accept; }}" if hook else ""
    return [f"add chain ip {TABLE} {name}{spec}", f"flush chain ip {TABLE} {name}",
            *(f"add rule ip {TABLE} {name} {rule}" for rule in rules)]


def _script(chains: list[list[str]]) -> str:
    # Chains are flushed and refilled rather than the table deleted and re-created: deleting
    # base chains unregisters hooks, which costs the kernel an RCU grace period (~10 ms).
    lines = [f"add table ip {TABLE}"]
    for chain in chains:
        lines += chain
    return "\n".join(lines) + "\n"


def delete_script() -> str:
    return f"add table ip {TABLE}\ndelete table ip {TABLE}\n"


def _publish_rules(published: list[tuple[str, PortMapping]]) -> list[str]:
    rules = []
    for vm_ip, p in published:
        match = "" if p.host_ip == ANY else f"ip daddr {p.host_ip} "
        rules.append(f"{match}{p.proto} dport {p.host_port} dnat to {vm_ip}:{p.guest_port}")
    return rules


def host_script(networks: list[Network], published: list[tuple[str, PortMapping]]) -> str:
    """The host table for `networks` (those with live leases) and their published ports."""
    masq, forward = [], []
    for n in networks:
        if n.internal:
            forward.append(f'iifname "{n.bridge}" oifname != "{n.bridge}" drop')
            forward.append(f'oifname "{n.bridge}" iifname != "{n.bridge}" drop')
        else:
            masq.append(f'ip saddr {n.subnet} oifname != "{n.bridge}" masquerade')
        # Hairpin: a VM reaching another through a published host port needs the reply via us.
        masq.append(f'oifname "{n.bridge}" ip saddr {n.subnet} ct status dnat masquerade')
        masq.append(f'oifname "{n.bridge}" ip saddr 127.0.0.0/8 masquerade')
    bridges = ", ".join(f'"{n.bridge}"' for n in sorted(networks, key=lambda n: n.bridge))
    guard = [f"iifname {{ {bridges} }} ip daddr 127.0.0.0/8 drop"] if networks else []
    return _script([
        _chain("guard", "type filter hook prerouting priority raw", guard),
        _chain("publish", None, _publish_rules(published)),
        _chain("prerouting", "type nat hook prerouting priority dstnat", ["fib daddr type local jump publish"]),
        _chain("output", "type nat hook output priority -100", ["fib daddr type local jump publish"]),
        _chain("postrouting", "type nat hook postrouting priority srcnat", masq),
        _chain("forward", "type filter hook forward priority filter", forward),
    ])


def vm_script(unique_ip: str, guest_ip: str, uplink: str) -> str:
    """The VM namespace's 1:1 NAT between its unique address and the guest's fixed one."""
    return _script([
        _chain("prerouting", "type nat hook prerouting priority dstnat",
               [f'iifname "{uplink}" ip daddr {unique_ip} dnat to {guest_ip}']),
        _chain("postrouting", "type nat hook postrouting priority srcnat",
               [f'oifname "{uplink}" ip saddr {guest_ip} snat to {unique_ip}']),
    ])
