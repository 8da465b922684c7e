"""Bad input and crashes: clear errors, nothing half-configured, prune repairs leftovers."""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess

import pytest

from vmm.network import attachment as net
from vmm.network import ipam, manage, netns
from vmm.network.errors import PoolExhausted, PortInUse, SubnetOverlap
from tests.network.conftest import BRIDGE0, TAG, host_rules, ns_state

VM1 = "aaaa1111bbbb2222"


def test_host_port_in_use_fails_before_anything_is_configured(host):
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        before = ns_state()
        with pytest.raises(PortInUse) as err:
            net.attach(VM1, publish=[f"{port}:80"])
        assert str(port) in err.value.message and err.value.hint
        assert ns_state() == before
        assert ipam.list_leases(ipam.open_db()) == []


def test_port_published_by_another_vm_is_refused(host):
    net.attach(VM1, publish=["18080:80"])
    state = ns_state()
    with pytest.raises(PortInUse, match="published by machine aaaa1111bbbb"):
        net.attach("other", publish=["127.0.0.1:18080:81"])
    assert ns_state() == state
    net.detach(VM1)


def test_exhausted_pool_leaves_nothing_behind(host):
    manage.create("tiny", "10.90.0.0/29")
    ids = [f"vm{i}" for i in range(5)]
    for vm in ids:
        net.attach(vm, network="tiny")
    state = ns_state()
    with pytest.raises(PoolExhausted):
        net.attach("vm-extra", network="tiny")
    assert ns_state() == state
    for vm in ids:
        net.detach(vm)


def test_subnet_overlapping_a_host_route_is_refused(host):
    subprocess.run(["ip", "link", "add", "mmx0", "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "192.0.2.1/24", "dev", "mmx0"], check=True)
    subprocess.run(["ip", "link", "set", "mmx0", "up"], check=True)
    state = ns_state()
    with pytest.raises(SubnetOverlap, match="192.0.2.0/24 on mmx0"):
        manage.create("clash", "192.0.2.0/25")
    assert ns_state() == state
    assert [n["name"] for n in manage.list_all()] == ["mm"]


def test_default_subnet_overlapping_a_host_route_is_refused(host, monkeypatch):
    subprocess.run(["ip", "link", "add", "mmx0", "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "10.88.5.1/24", "dev", "mmx0"], check=True)
    with pytest.raises(SubnetOverlap, match="default network mm: .* 10.88.5.1") as err:
        net.attach(VM1)
    assert "MM_NETWORK_SUBNET" in err.value.hint
    monkeypatch.setenv("MM_NETWORK_SUBNET", "10.77.0.0/16")
    assert net.attach(VM1).host_ip == "10.77.0.2"
    net.detach(VM1)


def _attach_and_die(vm_id, conn_ready):
    net.attach(vm_id, publish=["18081:80"])
    conn_ready.send(True)
    signal.pause()


def test_prune_reclaims_what_a_killed_owner_left(host):
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_attach_and_die, args=(VM1, child))
    proc.start()
    assert parent.recv()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    net.attach("keeper")  # a live owner's lease must survive
    subprocess.run(["ip", "netns", "add", f"{TAG}-orphan00000"], check=True)  # no lease explains it
    subprocess.run(["ip", "netns", "add", f"{TAG}-notours0000"], check=True)
    subprocess.run(["ip", "-n", f"{TAG}-notours0000", "link", "add", "x0", "type", "bridge"], check=True)
    report = manage.prune()
    assert report.leases == [VM1]
    assert f"{TAG}-orphan00000" in report.namespaces
    assert f"{TAG}-notours0000" not in report.namespaces  # holds links we never make
    netns.remove(f"{TAG}-notours0000")
    assert netns.names(f"{TAG}-") == [net.netns_name("keeper")]
    rules = host_rules()
    assert "18081" not in rules
    net.detach("keeper")
    # The idle bridge goes too (and the veth, if the kernel has not reaped it yet).
    assert BRIDGE0 in manage.prune().links
    assert f"{BRIDGE0}:" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def _attach_child(vm_id, queue):
    queue.put(net.attach(vm_id).host_ip)


def test_twenty_concurrent_attaches(host):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    ids = [f"vm{i:02d}" for i in range(20)]
    procs = [ctx.Process(target=_attach_child, args=(vm, queue)) for vm in ids]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ips = {queue.get(timeout=5) for _ in ids}
    assert len(ips) == 20
    assert len(netns.names(f"{TAG}-vm")) == 20
    for vm in ids:
        net.detach(vm)
    assert netns.names(f"{TAG}-vm") == []
