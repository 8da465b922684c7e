"""`mm run` with bad network input, as a user types it, in the private host namespace:
a taken host port, an exhausted pool, a default subnet overlapping a host route, an
unknown network. Each fails while the machine is provisioned, before any guest boots
(so this host's /dev/kvm need not run one), with an error and a hint, and leaves no
machine, namespace, link, rule or lease behind."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from vmm.network import ipam, manage
from tests.network.conftest import ns_state, settled


@pytest.fixture(autouse=True)
def runnable(host):
    from vmm.errors import MMError
    from vmm.image.images import lookup

    try:
        if lookup("mm/default") is None:
            pytest.skip("the default image is not built (`mm image build-default`)")
        from vmm.kernel import kernel_path

        kernel_path()
    except MMError as exc:
        pytest.skip(f"mm run cannot provision here: {exc.message}")


def mm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmm", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def _nothing_new(before: dict) -> None:
    assert settled(before) == before
    assert ipam.list_leases(ipam.open_db()) == []
    assert mm("ps", "-aq").stdout.split() == [], "the failed machine was removed"


def _failed(proc: subprocess.CompletedProcess, text: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert f"error: {text}" in proc.stderr and "hint: " in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_host_port_in_use(host):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        before = ns_state()
        proc = mm("run", "-d", "-p", f"127.0.0.1:{port}:80", "mm/default")
    _failed(proc, f"host port 127.0.0.1:{port}/tcp is in use")
    _nothing_new(before)


def test_an_exhausted_pool_then_prune(host):
    manage.create("tiny", "10.90.0.0/29")
    for i in range(5):  # every address but the gateway, leased by a process that has ended
        proc = subprocess.run([sys.executable, "-c", f"from vmm.network import attach; attach('fill{i}', 'tiny')"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    before = ns_state()
    proc = mm("run", "-d", "--network", "tiny", "mm/default")
    _failed(proc, "network 'tiny' (10.90.0.0/29) has no free address")
    assert "mm network prune" in proc.stderr
    assert settled(before) == before and mm("ps", "-aq").stdout.split() == []
    assert len(ipam.list_leases(ipam.open_db(), "tiny")) == 5
    report = json.loads(mm("network", "prune", "--json").stdout)  # their owners are gone
    assert sorted(report["leases"]) == [f"fill{i}" for i in range(5)]
    assert ipam.list_leases(ipam.open_db()) == []


def test_a_default_subnet_overlapping_a_host_route(host):
    subprocess.run(["ip", "link", "add", "mmx0", "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "10.66.0.1/24", "dev", "mmx0"], check=True)
    subprocess.run(["ip", "link", "set", "mmx0", "up"], check=True)
    before = ns_state()
    proc = mm("run", "-d", "mm/default", env={"MM_NETWORK_SUBNET": "10.66.0.0/16"})
    _failed(proc, "default network mm: subnet 10.66.0.0/16 overlaps the host route 10.66.0.0/24 on mmx0")
    assert "MM_NETWORK_SUBNET" in proc.stderr
    _nothing_new(before)
    create = mm("network", "create", "clash", "--subnet", "10.66.0.128/25")
    _failed(create, "subnet 10.66.0.128/25 overlaps the host route 10.66.0.0/24 on mmx0")
    assert "clash" not in mm("network", "ls").stdout


def test_an_unknown_network_and_ports_without_one(host):
    before = ns_state()
    _failed(mm("run", "-d", "--network", "nosuch", "mm/default"), "no network named 'nosuch'")
    _failed(mm("run", "-d", "--network", "none", "-p", "8080:80", "mm/default"),
            "--network none cannot publish ports")
    _nothing_new(before)
