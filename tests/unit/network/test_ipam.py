"""IPAM in the store: allocation, idempotence, exhaustion, release, owners, 20 concurrent processes."""
from __future__ import annotations

import ipaddress
import multiprocessing
import os

import pytest

from vmm import store
from vmm.network import ipam
from vmm.network.errors import (BadSubnet, NetworkExists, NetworkInUse, NetworkNotFound, PoolExhausted,
                                SubnetOverlap)


@pytest.fixture
def conn(tmp_path):
    c = ipam.open_db(tmp_path / "mm.db")
    ipam.create_network(c, "mm", "10.88.0.0/16", False, [])
    return c


def alloc(conn, vm_id, network="mm", owner=None):
    with store.transaction(conn):
        return ipam.allocate(conn, vm_id, network, owner)


def test_first_address_is_after_the_gateway(conn):
    net = ipam.get_network(conn, "mm")
    assert (net.bridge, net.gateway) == ("mm0", "10.88.0.1")
    assert alloc(conn, "vm1").ip == "10.88.0.2"
    assert alloc(conn, "vm2").ip == "10.88.0.3"


def test_allocation_is_idempotent_per_vm(conn):
    assert alloc(conn, "vm1") == alloc(conn, "vm1")


def test_released_address_is_reused(conn):
    alloc(conn, "vm1")
    alloc(conn, "vm2")
    with store.transaction(conn):
        assert ipam.release(conn, "vm1")
        assert not ipam.release(conn, "vm1")
    assert alloc(conn, "vm3").ip == "10.88.0.2"


def test_tiny_pool_exhausts_with_a_clear_error(conn):
    ipam.create_network(conn, "tiny", "10.90.0.0/29", False, [])  # 6 hosts, one is the gateway
    got = [alloc(conn, f"vm{i}", "tiny").ip for i in range(5)]
    assert got == [f"10.90.0.{i}" for i in range(2, 7)]
    with pytest.raises(PoolExhausted) as err:
        alloc(conn, "vm-extra", "tiny")
    assert "10.90.0.0/29" in err.value.message and err.value.hint
    assert ipam.get_lease(conn, "vm-extra") is None


def test_overlaps_are_refused(conn):
    with pytest.raises(SubnetOverlap):
        ipam.create_network(conn, "x", "10.88.128.0/17", False, [])
    with pytest.raises(SubnetOverlap, match="host route 192.0.2.0/24 on eth9"):
        ipam.create_network(conn, "y", "192.0.2.0/25", False, [(ipaddress.ip_network("192.0.2.0/24"), "eth9")])
    with pytest.raises(SubnetOverlap, match="fixed addressing"):
        ipam.create_network(conn, "z", "172.31.0.0/16", False, [])
    assert [n.name for n in ipam.list_networks(conn)] == ["mm"]


@pytest.mark.parametrize("subnet", ["10.1.2.0/30", "nonsense", "10.1.2.3/24", "fd00::/64", "127.0.0.0/16",
                                    "169.254.0.0/16", "224.0.0.0/8"])
def test_bad_subnets(conn, subnet):
    with pytest.raises(BadSubnet):
        ipam.create_network(conn, "n", subnet, False, [])


def test_networks_get_distinct_bridges_and_cannot_duplicate(conn):
    assert ipam.create_network(conn, "a", "10.91.0.0/24", True, []).bridge == "mm1"
    assert ipam.create_network(conn, "b", "10.92.0.0/24", False, []).bridge == "mm2"
    with pytest.raises(NetworkExists):
        ipam.create_network(conn, "a", "10.93.0.0/24", False, [])
    assert ipam.get_network(conn, "a").internal


def test_network_in_use_cannot_be_deleted(conn):
    ipam.create_network(conn, "a", "10.91.0.0/24", False, [])
    alloc(conn, "vm1", "a")
    with pytest.raises(NetworkInUse):
        ipam.delete_network(conn, "a")
    with store.transaction(conn):
        ipam.release(conn, "vm1")
    ipam.delete_network(conn, "a")
    with pytest.raises(NetworkNotFound):
        ipam.get_network(conn, "a")


def test_vm_cannot_hold_leases_on_two_networks(conn):
    ipam.create_network(conn, "a", "10.91.0.0/24", False, [])
    alloc(conn, "vm1")
    with pytest.raises(NetworkExists):
        alloc(conn, "vm1", "a")


def test_owner_liveness_uses_pid_and_start_time(conn):
    lease = alloc(conn, "vm1")
    assert lease.owner_pid == os.getpid() and ipam.owner_alive(lease)
    ipam.set_owner(conn, "vm1", 1)
    assert ipam.owner_alive(ipam.get_lease(conn, "vm1"))
    conn.execute("UPDATE leases SET owner_start = owner_start + 1 WHERE vm_id = 'vm1'")  # a recycled pid
    assert not ipam.owner_alive(ipam.get_lease(conn, "vm1"))
    with pytest.raises(NetworkNotFound):
        ipam.set_owner(conn, "nobody", 1)


def _allocate_in_child(path, vm_id, queue):
    conn = ipam.open_db(path)
    with store.transaction(conn):
        queue.put(ipam.allocate(conn, vm_id, "mm").ip)


def test_twenty_concurrent_processes_get_distinct_addresses(tmp_path, conn):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_allocate_in_child, args=(tmp_path / "mm.db", f"vm{i:02d}", queue))
             for i in range(20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ips = [queue.get(timeout=5) for _ in procs]
    assert len(set(ips)) == 20
    assert sorted(ips, key=ipaddress.ip_address) == [f"10.88.0.{i}" for i in range(2, 22)]
    assert len(ipam.list_leases(conn)) == 20
