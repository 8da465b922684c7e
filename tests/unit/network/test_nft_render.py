"""The nft scripts we render: our table only, data in sets/maps, additions for attach."""
from __future__ import annotations

from vmm.network import nft
from vmm.network.ipam import Network
from vmm.network.ports import PortMapping

DEFAULT = Network("mm", "mm0", "10.88.0.0/16", "10.88.0.1", False)
INTERNAL = Network("lab", "mm1", "10.89.0.0/24", "10.89.0.1", True)


def test_full_script_replaces_only_our_table():
    script = nft.full_host_script([DEFAULT], [])
    assert script.startswith("add table ip mm\ndelete table ip mm\n")
    assert "flush ruleset" not in script and "table inet" not in script
    assert "ip saddr @outbound oifname != @bridges masquerade" in script
    assert 'add element ip mm outbound { 10.88.0.0/16 }' in script


def test_internal_network_is_fenced_not_masqueraded():
    elements = nft.network_elements(INTERNAL)
    assert 'add element ip mm internal { "mm1" }' in elements
    assert not any("outbound" in line for line in elements)
    assert 'add element ip mm bridges { "mm1" }' in elements


def test_attach_only_adds_and_detach_deletes_ports():
    ports = [PortMapping(8080, 80), PortMapping(53, 5353, "udp", "127.0.0.1")]
    added = nft.port_elements("add", "10.88.0.2", ports)
    assert added == ["add element ip mm pub_tcp { 8080 : 10.88.0.2 . 80 }",
                     "add element ip mm pub_udp_at { 127.0.0.1 . 53 : 10.88.0.2 . 5353 }"]
    assert all(line.startswith("add ") for line in nft.network_elements(DEFAULT) + added)
    assert nft.port_elements("delete", "10.88.0.2", ports) == [
        "delete element ip mm pub_tcp { 8080 }", "delete element ip mm pub_udp_at { 127.0.0.1 . 53 }"]


def test_vm_script_is_one_to_one_nat():
    script = nft.vm_script("10.88.0.7", "172.31.255.2", "mmeth0")
    assert 'iifname "mmeth0" ip daddr 10.88.0.7 dnat to 172.31.255.2' in script
    assert 'oifname "mmeth0" ip saddr 172.31.255.2 snat to 10.88.0.7' in script


def test_networks_are_fenced_from_each_other_except_published_ports():
    script = nft.full_host_script([DEFAULT, INTERNAL], [])
    assert "iifname @bridges oifname @bridges iifname . oifname != @same ct status & dnat == 0 drop" in script
    assert 'add element ip mm same { "mm0" . "mm0" }' in script
    assert 'add element ip mm same { "mm1" . "mm1" }' in script


def test_scope_names_the_table_and_bridges(monkeypatch):
    import pytest

    from vmm.network import scope
    from vmm.network.errors import NetworkError

    monkeypatch.delenv("MM_NETNS_PREFIX", raising=False)
    assert (scope.host_table(), scope.bridge_stem()) == ("mm", "mm")
    monkeypatch.setenv("MM_NETNS_PREFIX", "mt1a2b3c-")
    assert (scope.host_table(), scope.bridge_stem()) == ("mm_mt1a2b3c", "mt1a2b3c")
    assert nft.delete_script() == "add table ip mm_mt1a2b3c\ndelete table ip mm_mt1a2b3c\n"
    assert nft.port_elements("add", "10.88.0.2", [PortMapping(80, 8080)]) == [
        "add element ip mm_mt1a2b3c pub_tcp { 80 : 10.88.0.2 . 8080 }"]
    assert "table ip mm_mt1a2b3c {" in nft.host_table_script()
    for bad in ("0abc-", "a" * 12 + "-", "x y", "a/b"):
        monkeypatch.setenv("MM_NETNS_PREFIX", bad)
        with pytest.raises(NetworkError, match="bad MM_NETNS_PREFIX"):
            scope.prefix()
