"""Published port specs and conflict checks."""
from __future__ import annotations

import socket

import pytest

from vmm.network import ports
from vmm.network.errors import BadPortSpec, PortInUse
from vmm.network.ports import PortMapping


@pytest.mark.parametrize("spec, expected", [
    ("8080:80", PortMapping(8080, 80, "tcp", "0.0.0.0")),
    ("8080:80/udp", PortMapping(8080, 80, "udp", "0.0.0.0")),
    ("127.0.0.1:2222:22/tcp", PortMapping(2222, 22, "tcp", "127.0.0.1")),
    (":53:53/udp", PortMapping(53, 53, "udp", "0.0.0.0")),
])
def test_parse(spec, expected):
    assert ports.parse(spec) == expected


@pytest.mark.parametrize("spec", ["80", "0:80", "8080:65536", "a:80", "8080:80/sctp", "1.2.3:80:80",
                                  "::1:80:80", "1:2:3:4"])
def test_parse_rejects(spec):
    with pytest.raises(BadPortSpec) as err:
        ports.parse(spec)
    assert err.value.hint


def test_duplicates_within_one_request():
    with pytest.raises(PortInUse):
        ports.check_unique([ports.parse("8080:80"), ports.parse("127.0.0.1:8080:81")])
    ports.check_unique([ports.parse("8080:80"), ports.parse("8080:80/udp"), ports.parse("127.0.0.1:8081:80")])


def test_listening_port_is_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUse, match=str(port)):
            ports.check_free(ports.parse(f"127.0.0.1:{port}:80"))
        with pytest.raises(PortInUse):
            ports.check_free(ports.parse(f"{port}:80"))
    ports.check_free(ports.parse(f"127.0.0.1:{port}:80"))


def test_host_address_must_exist():
    with pytest.raises(BadPortSpec, match="not an address"):
        ports.check_free(ports.parse("192.0.2.77:8080:80"))
