"""virtio-net with a real TAP in a network namespace we create: ARP and UDP both ways,
the guest's partially checksummed frame completed by the kernel through the vnet header."""
from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from devices.virtio.mmio import MmioTransport
from devices.virtio.net import F_GUEST_CSUM, F_MAC, HDR_F_NEEDS_CSUM, NetError
from devices.virtio.net.device import NetDevice, parse_mac
from devices.virtio.net.tap import open_tap
from devices.virtio.testing import MockDriver
from devices.virtio.constants import bit

GUEST_MAC = "52:54:00:12:34:56"
GUEST_IP, HOST_IP = "10.77.0.2", "10.77.0.1"
CLONE_NEWNET = 0x40000000

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                                reason="needs root and /dev/net/tun to create a TAP in a network namespace")


def in_netns(ns: str, fn):
    """Run `fn` on a thread that joined network namespace `ns` (setns is per thread)."""
    out = {}

    def run():
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            out["v"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            out["e"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out["v"]


@pytest.fixture
def netns():
    ns = f"mmvirtio{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        fd = in_netns(ns, lambda: open_tap("mmtap0"))
        sh = lambda *a: subprocess.run(["ip", "netns", "exec", ns, *a], check=True)
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", "mmtap0")
        sh("ip", "link", "set", "mmtap0", "up")
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        yield ns, fd
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def net(netns, memory, interrupt, loop, queue_cls):
    ns, fd = netns
    t = MmioTransport(NetDevice(fd, GUEST_MAC, "mmtap0"), memory, interrupt, loop)
    d = MockDriver(t, memory, queue_size=64)
    for _ in range(16):
        d.queues[0].add([], [2048])
    d.kick(0)
    yield ns, t.device, d
    t.close()


def ip4(s):
    return socket.inet_aton(s)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def send_frame(d, frame: bytes, vnet: bytes = bytes(12)):
    d.queues[1].add([vnet + frame], [])
    d.kick(1)
    d.queues[1].wait_used()


def recv_frames(d, want, timeout=5.0):
    q = d.queues[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for head, n in q.get_used():
            frame = q.written(head, n)
            q.add([], [2048])
            d.kick(0)
            if want(frame[12:]):
                return frame
        time.sleep(0.002)
    raise TimeoutError("no matching frame from the TAP")


def arp_request() -> bytes:
    mac = parse_mac(GUEST_MAC)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip4(GUEST_IP), bytes(6), ip4(HOST_IP))
    return b"\xff" * 6 + mac + b"\x08\x06" + arp


def test_config_mac_and_features(net):
    _, dev, d = net
    assert bytes(d.config(i, 1) for i in range(6)) == parse_mac(GUEST_MAC)
    assert d.features & bit(F_MAC) and d.features & bit(F_GUEST_CSUM)


def test_arp_then_udp_both_ways(net):
    ns, dev, d = net
    send_frame(d, arp_request())
    reply = recv_frames(d, lambda f: f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02")
    host_mac = reply[12 + 6:12 + 12]
    sock = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.bind((HOST_IP, 5555))
    sock.settimeout(5)
    # guest -> host: UDP with a partial checksum the kernel completes (NEEDS_CSUM offload)
    payload = b"hello from the guest"
    udp_len = 8 + len(payload)
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0, ip4(GUEST_IP), ip4(HOST_IP))
    iph = iph[:10] + struct.pack("!H", 0xFFFF - checksum(iph)) + iph[12:]
    pseudo = checksum(ip4(GUEST_IP) + ip4(HOST_IP) + struct.pack("!BBH", 0, 17, udp_len))
    udp = struct.pack("!HHHH", 4444, 5555, udp_len, pseudo) + payload
    vnet = struct.pack("<BBHHHHH", HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6, 0)
    send_frame(d, host_mac + parse_mac(GUEST_MAC) + b"\x08\x00" + iph + udp, vnet)
    data, addr = sock.recvfrom(100)
    assert data == payload and addr == (GUEST_IP, 4444)
    # host -> guest
    sock.sendto(b"hello guest", (GUEST_IP, 4444))
    frame = recv_frames(d, lambda f: f.endswith(b"hello guest"))
    assert frame[12:18] == parse_mac(GUEST_MAC)
    assert dev.metrics.tx_packets == 2 and dev.metrics.rx_packets >= 2
    sock.close()


def test_malformed_tx_dropped(net):
    _, dev, d = net
    send_frame(d, b"", vnet=b"short")
    assert dev.metrics.tx_malformed == 1


def test_bad_mac():
    with pytest.raises(NetError):
        parse_mac("52:54:00")


def test_save_restore_compare(net):
    ns, dev, d = net
    state = dev.save()
    fd2 = in_netns(ns, lambda: open_tap("mmtap1"))
    dev2 = NetDevice.restore(state, tap_fd=fd2)
    try:
        assert dev2.save() == state
    finally:
        dev2.close()


def test_tx_rate_limited_frames_still_leave(netns, memory, interrupt, loop, queue_cls):
    from devices.ratelimiter import BucketConfig, RateLimiter
    ns, fd = netns
    dev = NetDevice(fd, GUEST_MAC, "mmtap0", tx_rate_limiter=RateLimiter(ops=BucketConfig(1, 30)))
    t = MmioTransport(dev, memory, interrupt, loop)
    try:
        d = MockDriver(t, memory, queue_size=16)
        for _ in range(3):
            d.queues[1].add([bytes(12) + arp_request()], [])
        d.kick(1)
        assert len(d.queues[1].wait_used(3)) == 3
        assert dev.metrics.tx_packets == 3 and dev.metrics.tx_throttled >= 1
    finally:
        t.close()


def test_mergeable_rx_buffers_span_a_large_frame(net):
    ns, dev, d = net
    subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "mmtap0", "mtu", "9000"], check=True)
    send_frame(d, arp_request())  # teaches the host our MAC
    recv_frames(d, lambda f: f[12:14] == b"\x08\x06")
    sock = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    payload = bytes(range(256)) * 20  # 5120 bytes: one 5174-byte frame over three 2 KiB buffers
    sock.sendto(payload, (GUEST_IP, 4444))
    q = d.queues[0]
    deadline = time.monotonic() + 5
    got = []
    while time.monotonic() < deadline:
        for head, n in q.get_used():
            got.append(q.written(head, n))
            q.add([], [2048])
        if got and int.from_bytes(got[0][10:12], "little") <= len(got):
            nbuf = int.from_bytes(got[0][10:12], "little")
            if nbuf > 1:
                frame = b"".join(got[:nbuf])
                assert frame[12:].endswith(payload) and nbuf == 3
                sock.close()
                return
            got = []  # some other single-buffer frame
        time.sleep(0.002)
    raise AssertionError("no multi-buffer frame arrived")


def test_rx_and_tx_through_the_c_path(net, queue_cls, monkeypatch):
    """With room for the largest frame posted, frames go TAP -> guest and guest -> TAP in C
    (the Python per-frame paths are not used with the compiled queue); results are the same."""
    from devices.virtio import _queue

    ns, dev, d = net
    if queue_cls is _queue.SplitQueue:
        def python_path(*_):
            raise AssertionError("a plain frame took the Python path")
        monkeypatch.setattr(NetDevice, "_rx_frame", python_path)
        monkeypatch.setattr(NetDevice, "_tx_frame", python_path)
    for _ in range(40):  # 56 x 2 KiB: more than a 64 KiB GSO frame
        d.queues[0].add([], [2048])
    d.kick(0)
    send_frame(d, arp_request())
    reply = recv_frames(d, lambda f: f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02")
    assert int.from_bytes(reply[10:12], "little") == 1  # num_buffers
    sock = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.sendto(b"through C", (GUEST_IP, 4444))
    frame = recv_frames(d, lambda f: f.endswith(b"through C"))
    assert frame[12:18] == parse_mac(GUEST_MAC)
    assert dev.metrics.tx_packets == 1 and dev.metrics.rx_packets >= 2 and dev.metrics.tap_errors == 0
    sock.close()
