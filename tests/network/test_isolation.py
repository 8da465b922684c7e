"""Isolation between networks: no new connection crosses from one mm network to another,
published ports excepted; the host reaches every network; two scopes (namespace
prefixes) keep apart on one host."""
from __future__ import annotations

import socket
import subprocess

from vmm.network import attachment as net
from vmm.network import manage, netns, scope
from tests.network.conftest import BRIDGE0, BRIDGE1, TAG, host_rules, tcp_get


def _dial(guest, address: str, port: int) -> bool:
    with netns.entered(guest.ns):
        s = socket.socket()
    with s:
        s.settimeout(1.5)
        try:
            s.connect((address, port))
            return True
        except OSError:
            return False


def test_networks_are_isolated_but_published_ports_cross(host, guests):
    manage.create("blue", "10.89.0.0/24")
    red = net.attach("vm-red", publish=["18200:7100"])        # default network
    blue = net.attach("vm-blue", network="blue")
    g_red, g_blue = guests(red), guests(blue)
    g_red.listen(7100)
    g_blue.listen(7101)
    assert not _dial(g_blue, red.host_ip, 7100)      # blue -> red directly: dropped
    assert not _dial(g_red, blue.host_ip, 7101)      # and the other way
    # Through red's published port, at a host address (blue's own gateway).
    assert g_blue.connect("10.89.0.1", 18200).startswith(b"hello")
    assert tcp_get(red.host_ip, 7100).startswith(b"hello")      # the host reaches both
    assert tcp_get(blue.host_ip, 7101).startswith(b"hello")
    rules = host_rules()
    assert f'"{BRIDGE0}" . "{BRIDGE0}"' in rules and f'"{BRIDGE1}" . "{BRIDGE1}"' in rules
    net.detach("vm-red")
    net.detach("vm-blue")


def test_two_scopes_keep_their_own_bridge_table_and_namespaces(host, monkeypatch, tmp_path):
    mine = net.attach("vm-mine")
    monkeypatch.setenv("MM_STATE", str(tmp_path / "other-state"))
    monkeypatch.setenv("MM_NETNS_PREFIX", f"{TAG}o-")
    monkeypatch.setenv("MM_NETWORK_SUBNET", "10.90.0.0/16")
    theirs = net.attach("vm-theirs")
    assert scope.host_table() == f"mm_{TAG}o" and f"{TAG}o0:" in _links()
    manage.prune()                                   # the other store's prune...
    net.detach("vm-theirs")                          # ...and its last VM leaving
    assert f"{TAG}o0" in manage.prune().links
    monkeypatch.setenv("MM_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("MM_NETNS_PREFIX", f"{TAG}-")
    assert netns.exists(mine.netns) and f"{net.veth_name('vm-mine')}@" in _links()
    assert "elements = { 10.88.0.0/16 }" in host_rules()  # our table is untouched
    assert theirs.host_ip == "10.90.0.2" and mine.host_ip == "10.88.0.2"
    net.detach("vm-mine")


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
