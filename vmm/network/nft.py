"""nftables rules, rendered from the store and loaded atomically with `nft -f -`.

We own exactly one table, `ip mm`, in the host namespace and one in each VM namespace;
nothing else in the ruleset is touched. Each load is one nft transaction that deletes and
re-creates the whole table, so the rules are always a pure function of the store: a
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

import shutil
import subprocess

from vmm.network.errors import NftError
from vmm.network.ipam import Network
from vmm.network.ports import ANY, PortMapping

TABLE = "mm"


def run(script: str) -> None:
    """Load `script` with nft in the calling thread's network namespace."""
    nft = shutil.which("nft") or "/usr/sbin/nft"
    try:
        proc = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise NftError("the nft command is not installed") from None
    if proc.returncode != 0:
        raise NftError(f"nft failed: {proc.stderr.strip() or proc.returncode}")


def _replace(body: list[str]) -> str:
    # `add` then `delete` works whether or not the table exists; all in one transaction.
    head = [f"add table ip {TABLE}", f"delete table ip {TABLE}", f"table ip {TABLE} {{"]
    return "\n".join(head + body + ["}", ""])


def delete_script() -> str:
    return f"add table ip {TABLE}\ndelete table ip {TABLE}\n"


def _publish_rules(published: list[tuple[str, PortMapping]]) -> list[str]:
    rules = []
    for vm_ip, p in published:
        match = "" if p.host_ip == ANY else f"ip daddr {p.host_ip} "
        rules.append(f"    {match}{p.proto} dport {p.host_port} dnat to {vm_ip}:{p.guest_port}")
    return rules


def host_script(networks: list[Network], published: list[tuple[str, PortMapping]]) -> str:
    """The host table for `networks` (those with live leases) and their published ports."""
    bridges = sorted(n.bridge for n in networks)
    masq, forward = [], []
    for n in networks:
        if n.internal:
            forward.append(f'    iifname "{n.bridge}" oifname != "{n.bridge}" drop')
            forward.append(f'    oifname "{n.bridge}" iifname != "{n.bridge}" drop')
        else:
            masq.append(f'    ip saddr {n.subnet} oifname != "{n.bridge}" masquerade')
        # Hairpin: a VM reaching another through a published host port needs the reply via us.
        masq.append(f'    oifname "{n.bridge}" ip saddr {n.subnet} ct status dnat masquerade')
        masq.append(f'    oifname "{n.bridge}" ip saddr 127.0.0.0/8 masquerade')
    guard = [f'    iifname {{ {", ".join(f"{chr(34)}{b}{chr(34)}" for b in bridges)} }} ip daddr 127.0.0.0/8 drop'] if bridges else []
    body = [
        "  chain guard {", "    type filter hook prerouting priority raw; policy accept;", *guard, "  }",
        "  chain publish {", *_publish_rules(published), "  }",
        "  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;",
        "    fib daddr type local jump publish", "  }",
        "  chain output {", "    type nat hook output priority -100; policy accept;",
        "    fib daddr type local jump publish", "  }",
        "  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;", *masq, "  }",
        "  chain forward {", "    type filter hook forward priority filter; policy accept;", *forward, "  }",
    ]
    return _replace(body)


def vm_script(unique_ip: str, guest_ip: str, uplink: str) -> str:
    """The VM namespace's 1:1 NAT between its unique address and the guest's fixed one."""
    body = [
        "  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;",
        f'    iifname "{uplink}" ip daddr {unique_ip} dnat to {guest_ip}', "  }",
        "  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;",
        f'    oifname "{uplink}" ip saddr {guest_ip} snat to {unique_ip}', "  }",
    ]
    return _replace(body)
