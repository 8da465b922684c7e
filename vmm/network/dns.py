"""DNS servers handed to guests: the host's resolvers, minus ones a guest cannot reach.

A guest cannot reach the host's loopback, so 127.x stub resolvers (systemd-resolved's
127.0.0.53, dnsmasq on 127.0.0.1) are skipped; when that leaves nothing we read
systemd-resolved's upstream list (/run/systemd/resolve/resolv.conf), as Docker does.
Only IPv4 servers are kept: the VM network is IPv4.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")


def parse_nameservers(text: str) -> list[str]:
    servers: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                addr = ipaddress.ip_address(fields[1])
            except ValueError:
                continue
            if addr.version == 4 and not addr.is_loopback and str(addr) not in servers:
                servers.append(str(addr))
    return servers


def host_nameservers(resolv: Path = RESOLV_CONF, upstream: Path = RESOLVED_UPSTREAM) -> list[str]:
    for source in (resolv, upstream):
        try:
            servers = parse_nameservers(source.read_text())
        except OSError:
            continue
        if servers:
            return servers
    return []
