"""Outbound NAT and internal networks, against an "outside" namespace behind the test host."""
from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest

from vmm.network import attachment as net
from vmm.network import manage, netns
from tests.network.conftest import TAG

OUTSIDE_IP = "198.51.100.2"  # a documentation subnet, only inside our namespaces


@pytest.fixture
def outside(host):
    """A namespace reached through the test host's uplink (mmup0), with a TCP service."""
    name = f"{TAG}out"
    netns.create(name)
    cmds = [["ip", "link", "add", "mmup0", "type", "veth", "peer", "name", "up1", "netns", name],
            ["ip", "addr", "add", "198.51.100.1/24", "dev", "mmup0"], ["ip", "link", "set", "mmup0", "up"]]
    for cmd in cmds:
        subprocess.run(cmd, check=True)
    with netns.entered(name):
        for cmd in (["ip", "addr", "add", f"{OUTSIDE_IP}/24", "dev", "up1"], ["ip", "link", "set", "up1", "up"]):
            subprocess.run(cmd, check=True)
        srv = socket.socket()
    srv.bind((OUTSIDE_IP, 9000))
    srv.listen()
    seen: list[str] = []

    def serve():
        try:
            while True:
                conn, peer = srv.accept()
                seen.append(peer[0])
                conn.close()
        except OSError:
            return

    threading.Thread(target=serve, daemon=True).start()
    yield seen
    srv.close()
    netns.remove(name)


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


def test_guest_reaches_outside_masqueraded_as_the_host(outside, guests):
    guest = guests(net.attach("vm-out"))
    assert _dial(guest, OUTSIDE_IP, 9000)
    deadline = time.monotonic() + 5
    while not outside and time.monotonic() < deadline:  # the accept thread records the peer
        time.sleep(0.01)
    assert outside == ["198.51.100.1"]  # the host's uplink address, not the VM's
    net.detach("vm-out")


def test_internal_network_has_no_outside_access(outside, guests):
    manage.create("lab", "10.89.0.0/24", internal=True)
    a, b = net.attach("vm-in1", network="lab"), net.attach("vm-in2", network="lab")
    assert a.dns == []
    g1, g2 = guests(a), guests(b)
    assert not _dial(g1, OUTSIDE_IP, 9000)
    assert outside == []
    g2.listen(7003)
    assert g1.connect(b.host_ip, 7003).startswith(b"hello")  # inside the network is fine
    net.detach("vm-in1")
    net.detach("vm-in2")
