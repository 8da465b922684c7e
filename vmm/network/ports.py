"""Published ports: parsing `-p [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]` and checking them.

A host port is refused before anything is configured when a process on the host
listens on it (we try to bind it) or another machine publishes it already (the store's
`ports` table). "0.0.0.0" as host address means every host address, loopback included.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass

from vmm.network.errors import BadPortSpec, PortInUse

ANY = "0.0.0.0"


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    guest_port: int
    proto: str = "tcp"
    host_ip: str = ANY

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.guest_port}/{self.proto}"

    def as_dict(self) -> dict:
        return {"host_ip": self.host_ip, "host_port": self.host_port,
                "guest_port": self.guest_port, "proto": self.proto}


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise BadPortSpec(f"bad port {text!r} in {spec!r}: need 1-65535")
    return int(text)


def parse(spec: str) -> PortMapping:
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise BadPortSpec(f"bad protocol {proto!r} in {spec!r}: tcp or udp")
    parts = body.rsplit(":", 2)
    if len(parts) == 2:
        host_ip, (host, guest) = ANY, parts
    elif len(parts) == 3:
        host_ip, host, guest = parts
        try:
            host_ip = str(ipaddress.IPv4Address(host_ip or ANY))
        except ValueError:
            raise BadPortSpec(f"bad host address {parts[0]!r} in {spec!r}: need an IPv4 address") from None
    else:
        raise BadPortSpec(f"bad port mapping {spec!r}")
    return PortMapping(_port(host, spec), _port(guest, spec), proto, host_ip)


def _overlap(a: PortMapping, b: PortMapping) -> bool:
    return (a.proto == b.proto and a.host_port == b.host_port
            and (a.host_ip == b.host_ip or ANY in (a.host_ip, b.host_ip)))


def check_unique(wanted: list[PortMapping]) -> None:
    for i, a in enumerate(wanted):
        for b in wanted[i + 1:]:
            if _overlap(a, b):
                raise PortInUse(f"host port {a.host_port}/{a.proto} is published twice ({a} and {b})")


def check_store(conn, wanted: list[PortMapping], vm_id: str) -> None:
    """Refuse ports another machine publishes (run inside the allocation transaction)."""
    for row in conn.execute("SELECT * FROM ports WHERE vm_id != ?", (vm_id,)):
        theirs = PortMapping(row["host_port"], row["guest_port"], row["proto"], row["host_ip"])
        for mine in wanted:
            if _overlap(mine, theirs):
                raise PortInUse(f"host port {mine.host_port}/{mine.proto} is published by machine {row['vm_id'][:12]}")


def check_free(mapping: PortMapping) -> None:
    """Refuse a port some host process holds: bind it briefly, as the listener would."""
    kind = socket.SOCK_STREAM if mapping.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            # TIME_WAIT leftovers are not users; a listener or bound socket is.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((mapping.host_ip, mapping.host_port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"host port {mapping.host_ip}:{mapping.host_port}/{mapping.proto} is in use") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise BadPortSpec(f"{mapping.host_ip} is not an address of this host ({mapping})") from None
            raise
