"""virtio-net with a real Linux guest: ping and TCP both ways between the guest and a host
address in a network namespace, over a TAP with the vnet header (checksum and TSO offloads).

The test creates the namespace and a persistent TAP in it (10.0.0.1/24) on the guest host
(the lab here), then boots the guest with tests/e2e/virtio_guest/runner.py inside that
namespace (`ip netns exec`), as the worker runs a VM in its own namespace. The guest
(10.0.0.2) pings the host and runs mmsock: an echo client to the host's TCP echo server
and an echo server for the host's client; the host pings the guest too. One boot.
"""
from __future__ import annotations

import os

import pytest

from tests.e2e.virtio_guest import boot, fields, guest_kernel, host_report, initramfs, lines, mmsock_binary

HOST_IP, GUEST_IP, TAP = "10.0.0.1", "10.0.0.2", "mmtap0"
STREAMS, SIZE = 10, 256 << 10

GUEST = f"""
ip link set lo up
ip addr add {GUEST_IP}/24 dev eth0 && ip link set eth0 up && echo MM-NET-UP
ping -c 3 -W 5 {HOST_IP} > /tmp/ping 2>&1
echo "MM-PING rc=$? $(grep transmitted /tmp/ping)"
timeout 300 mmsock serve tcp 5000 {STREAMS} & server=$!
timeout 300 mmsock connect tcp {HOST_IP} 6000 {STREAMS} {SIZE}
echo "MM-CLIENT rc=$?"
wait $server
echo "MM-SERVER rc=$?"
read line
"""


def netns_setup(name: str) -> str:
    return (f"ip netns add {name} && ip -n {name} link set lo up && "
            f"ip -n {name} tuntap add dev {TAP} mode tap vnet_hdr && "
            f"ip -n {name} addr add {HOST_IP}/24 dev {TAP} && ip -n {name} link set {TAP} up")


@pytest.fixture
def netns(guest_host):
    """A network namespace on the guest host holding TAP with HOST_IP; removed afterwards."""
    name = f"mm-e2e-net-{os.getpid()}"
    res = guest_host.run(["sh", "-c", netns_setup(name)], timeout=60)
    if res.returncode != 0:
        guest_host.run(["ip", "netns", "del", name], timeout=60)
        pytest.fail(f"cannot create the namespace and TAP: {res.stderr}")
    yield name
    guest_host.run(["ip", "netns", "del", name], timeout=60)


def in_netns(name: str) -> tuple[str, ...]:
    """The command prefix running argv in the namespace, making it first when it is gone:
    when the lab dies under the boot, the retry runs in a fresh lab without it."""
    return ("sh", "-c", f'[ -e /run/netns/{name} ] || ({netns_setup(name)}) >&2 || exit 97; '
                        f'exec ip netns exec {name} "$@"', "sh")


def test_ping_and_tcp_both_ways_over_tap(guest_host, netns):
    kernel = guest_kernel()
    initrd = initramfs(guest_host.workdir, GUEST, tools={"mmsock": mmsock_binary()})
    res = boot(guest_host, kernel, initrd, "--tap", TAP, "--tcp-echo", f"{HOST_IP}:6000",
               "--tcp-client", f"{GUEST_IP}:5000:{STREAMS}:{SIZE}", "--ping", GUEST_IP,
               prefix=in_netns(netns))
    out = res.stdout
    tail = out[-5000:]
    assert "MM-NET-UP" in out, tail
    assert fields(lines(out, "MM-PING ")[0])["rc"] == "0", tail                      # guest -> host
    assert fields(lines(out, "MM-HOST-PING ")[0])["rc"] == "0", tail                 # host -> guest
    # guest client -> host echo server: every stream's bytes came back intact
    assert lines(out, "MM-SOCK-ECHOED") == [f"MM-SOCK-ECHOED ok={STREAMS} of {STREAMS} bytes={SIZE}"], tail
    assert lines(out, "MM-CLIENT ") == ["MM-CLIENT rc=0"], tail
    # host client -> guest echo server
    client = host_report(out, "MM-HOST-TCP-CLIENT")
    assert client == {"ok": STREAMS, "connected": STREAMS, "errors": []}, tail
    assert lines(out, "MM-SOCK-SERVED") == [f"MM-SOCK-SERVED {STREAMS} failed=0"], tail
    server = fields(lines(out, "MM-HOST-TCP-ECHO-SERVER ")[0])
    assert server["done"] == str(STREAMS) and server["errors"] == "0", tail
    metrics = host_report(out, "MM-HOST-METRICS")["NetDevice"]
    assert metrics["tx_malformed"] == 0 and metrics["tap_errors"] == 0, metrics
    assert metrics["rx_bytes"] >= STREAMS * SIZE and metrics["tx_bytes"] >= STREAMS * SIZE, metrics
    assert "MM-HOST exit=poweroff" in out, tail
