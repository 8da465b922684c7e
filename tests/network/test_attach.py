"""attach/detach on this host, inside private namespaces: plumbing, reachability, cleanup."""
from __future__ import annotations

import socket
import subprocess

import pytest

from vmm.network import attachment as net
from vmm.network import netns
from tests.network.conftest import BRIDGE0, host_rules, ns_state, settled, tcp_get

VM1 = "aaaa1111bbbb2222"
VM2 = "cccc3333dddd4444"


def _in_ns(name: str, *cmd: str) -> str:
    with netns.entered(name):
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def test_attach_builds_namespace_bridge_veth_tap_routes_and_rules(host):
    a = net.attach(VM1)
    assert (a.guest_ip, a.gateway, a.guest_prefixlen, a.tap) == ("172.31.255.2", "172.31.255.1", 30, "mmtap0")
    assert a.host_ip == "10.88.0.2" and netns.exists(a.netns)
    assert a.kernel_ip_arg() == "ip=172.31.255.2::172.31.255.1:255.255.255.252::eth0:off"
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"{BRIDGE0}:" in links and f"{net.veth_name(VM1)}@" in links and f"master {BRIDGE0}" in links
    inside = _in_ns(a.netns, "ip", "-o", "addr")
    assert "mmeth0" in inside and "10.88.0.2/16" in inside and "172.31.255.1/30" in inside
    assert "default via 10.88.0.1 dev mmeth0" in _in_ns(a.netns, "ip", "route")
    assert "52:54:00:6d:6d:01" in _in_ns(a.netns, "ip", "link", "show", "mmtap0")
    assert "dnat to 172.31.255.2" in _in_ns(a.netns, "nft", "list", "table", "ip", "mm")
    rules = host_rules()
    assert "ip saddr @outbound oifname != @bridges masquerade" in rules
    assert "elements = { 10.88.0.0/16 }" in rules
    assert net.lookup(VM1) == a
    net.detach(VM1)


def test_attach_is_idempotent_and_completes_a_half_done_attach(host):
    a = net.attach(VM1)
    subprocess.run(["ip", "link", "del", net.veth_name(VM1)], check=True)  # as if we crashed mid-way
    assert net.attach(VM1) == a
    assert "10.88.0.2/16" in _in_ns(a.netns, "ip", "-o", "addr")
    net.detach(VM1)


def test_reattach_with_other_ports_replaces_them(host):
    net.attach(VM1, publish=["18080:80", "18081:81"])
    a = net.attach(VM1, publish=["18081:81", "18082:82/udp"])
    assert [p["host_port"] for p in a.ports] == [18081, 18082]
    rules = host_rules()
    assert "18080" not in rules and "18081 : 10.88.0.2 . 81" in rules and "18082 : 10.88.0.2 . 82" in rules
    assert [p["host_port"] for p in net.lookup(VM1).ports] == [18081, 18082]
    net.detach(VM1)


def test_detach_leaves_nothing(host):
    before = ns_state()
    a = net.attach(VM1, publish=["18080:80"])
    net.attach(VM2)
    assert net.detach(VM1) and net.detach(VM2)
    assert not net.detach(VM1)
    after = settled(before)
    assert after["netns"] == before["netns"] and not netns.exists(a.netns)
    assert net.veth_name(VM1) not in after["links"]
    assert after["nft"] == before["nft"]  # the table goes with the last VM
    assert net.lookup(VM1) is None


def test_host_reaches_guest_at_its_unique_address(host, guests):
    a = net.attach(VM1)
    guest = guests(a)
    guest.listen(7000)
    assert tcp_get(a.host_ip, 7000) == b"hello from %s to 10.88.0.1\n" % guest.ns.encode()
    net.detach(VM1)


def test_published_port_answers_on_loopback_and_host_address(host, guests):
    a = net.attach(VM1, publish=["18080:80", "127.0.0.1:18053:53/udp"])
    guest = guests(a)
    guest.listen(80)
    guest.listen(53, "udp")
    assert tcp_get("127.0.0.1", 18080).startswith(b"hello from")
    assert tcp_get("10.88.0.1", 18080).startswith(b"hello from")  # a non-loopback host address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"ping", ("127.0.0.1", 18053))
        assert s.recvfrom(100)[0] == b"udp ping"
    net.detach(VM1)


def test_two_vms_talk_over_the_bridge(host, guests):
    a, b = net.attach(VM1), net.attach(VM2)
    assert a.host_ip != b.host_ip and a.guest_ip == b.guest_ip  # same inside, unique outside
    ga, gb = guests(a), guests(b)
    gb.listen(7001)
    ga.listen(7002)
    assert ga.connect(b.host_ip, 7001) == f"hello from {gb.ns} to {a.host_ip}\n".encode()
    assert gb.connect(a.host_ip, 7002) == f"hello from {ga.ns} to {b.host_ip}\n".encode()
    net.detach(VM1)
    net.detach(VM2)


def test_guest_reaches_a_host_service(host, guests):
    a = net.attach(VM1)
    guest = guests(a)
    with socket.socket() as srv:
        srv.bind(("10.88.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        with netns.entered(guest.ns):
            c = socket.socket()
        with c:
            c.settimeout(5)
            c.connect(("10.88.0.1", port))
            conn, peer = srv.accept()
            conn.close()
    assert peer[0] == a.host_ip  # the guest is seen under its unique address
    net.detach(VM1)


def test_network_none(host):
    before = ns_state()
    a = net.attach(VM1, network="none")
    assert a.tap is None and a.netns is None and a.kernel_ip_arg() == "ip=off"
    with pytest.raises(net.NetworkError):
        net.open_tap(a)
    assert ns_state() == before
