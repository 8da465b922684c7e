"""The nft scripts we render: our table only, replaced atomically, rules per network kind."""
from __future__ import annotations

from vmm.network import nft
from vmm.network.ipam import Network
from vmm.network.ports import PortMapping

DEFAULT = Network("mm", "mm0", "10.88.0.0/16", "10.88.0.1", False)
INTERNAL = Network("lab", "mm1", "10.89.0.0/24", "10.89.0.1", True)


def test_host_script_replaces_only_our_table():
    script = nft.host_script([DEFAULT], [])
    assert script.startswith("add table ip mm\ndelete table ip mm\ntable ip mm {")
    assert "flush ruleset" not in script
    assert 'ip saddr 10.88.0.0/16 oifname != "mm0" masquerade' in script


def test_internal_network_gets_no_masquerade_and_is_fenced():
    script = nft.host_script([DEFAULT, INTERNAL], [])
    assert "10.89.0.0/24 oifname" not in script
    assert 'iifname "mm1" oifname != "mm1" drop' in script
    assert 'iifname { "mm0", "mm1" } ip daddr 127.0.0.0/8 drop' in script


def test_published_ports():
    script = nft.host_script([DEFAULT], [("10.88.0.2", PortMapping(8080, 80)),
                                         ("10.88.0.3", PortMapping(53, 5353, "udp", "127.0.0.1"))])
    assert "tcp dport 8080 dnat to 10.88.0.2:80" in script
    assert "ip daddr 127.0.0.1 udp dport 53 dnat to 10.88.0.3:5353" in script
    assert 'oifname "mm0" ip saddr 127.0.0.0/8 masquerade' in script


def test_vm_script_is_one_to_one_nat():
    script = nft.vm_script("10.88.0.7", "172.31.255.2", "mmeth0")
    assert 'iifname "mmeth0" ip daddr 10.88.0.7 dnat to 172.31.255.2' in script
    assert 'oifname "mmeth0" ip saddr 172.31.255.2 snat to 10.88.0.7' in script
