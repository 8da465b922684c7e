"""Root fixtures: a private "host" namespace per test, and emulated guests behind real TAPs.

Each test runs with the main thread inside a fresh network namespace that plays the
host (its own loopback, routes and nft ruleset), so nothing touches this machine's real
networking; VM namespaces get a per-run prefix. A `Guest` stands in for the VM: a
second namespace with its own TAP at the guest's fixed address and MAC, joined to the
VM's TAP (opened with `open_tap`, as the worker will) by a thread copying frames.
"""
from __future__ import annotations

import difflib
import os
import re
import select
import socket
import subprocess
import threading
import time

import pytest

from vmm.network import links, netns

TAG = f"mmt{os.getpid() % 100000}"
# With MM_NETNS_PREFIX=TAG- our bridges and host table carry the tag (vmm.network.scope).
BRIDGE0, BRIDGE1 = f"{TAG}0", f"{TAG}1"
HOST_TABLE = f"mm_{TAG}"


def host_rules() -> str:
    """Our host table as `nft list` prints it (in the calling thread's namespace)."""
    return subprocess.run(["nft", "list", "table", "ip", HOST_TABLE], capture_output=True, text=True).stdout


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


# The namespace the session starts in is this machine's real one; the snapshot must be
# taken there, never from inside a test's private "host" namespace.
_REAL_NETNS = os.stat("/proc/thread-self/ns/net").st_ino


def host_snapshot() -> dict:
    """What the real host has that we could leave behind: namespaces, links, the whole ruleset."""
    assert os.stat("/proc/thread-self/ns/net").st_ino == _REAL_NETNS, "snapshot outside the real host namespace"
    # --stateless: counter and quota values of other tools' rules tick on their own.
    ruleset = subprocess.run(["nft", "--stateless", "list", "ruleset"], capture_output=True, text=True,
                             check=True).stdout
    return {
        "netns": {line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.strip()},
        "links": {line.split(":")[1].strip().split("@")[0] for line in _run("ip", "-o", "link").splitlines()},
        "ruleset": ruleset,
    }


def _ours(link: str) -> bool:
    """Link names our code and these tests make (other engineers share this host)."""
    return bool(re.match(rf"^(mm\d+|{TAG}\d+|mmv.*|mmeth0|mmtap0|mmup0|mmx0)$", link))


def leftovers(before: dict, after: dict) -> list[str]:
    """Why the real host is not as the session found it (empty: it is)."""
    problems = []
    namespaces = sorted(n for n in after["netns"] if n.startswith(TAG))
    if namespaces:
        problems.append(f"namespaces left behind: {', '.join(namespaces)}")
    new_links = sorted(n for n in after["links"] - before["links"] if _ours(n))
    if new_links:
        problems.append(f"links left behind: {', '.join(new_links)}")
    if after["ruleset"] != before["ruleset"]:
        diff = difflib.unified_diff(before["ruleset"].splitlines(), after["ruleset"].splitlines(),
                                    "nft list ruleset (before)", "nft list ruleset (after)", lineterm="")
        problems.append("the real host's nft ruleset changed:\n" + "\n".join(diff))
    return problems


@pytest.fixture(scope="session", autouse=True)
def real_host_left_clean():
    if os.geteuid() != 0:
        pytest.skip("network tests need root (namespaces, links, nftables)")
    before = host_snapshot()
    yield
    problems = leftovers(before, host_snapshot())
    assert not problems, "\n".join(problems)


@pytest.fixture
def host(tmp_path, monkeypatch, request):
    """Run the test inside a private host namespace with its own store."""
    name = f"{TAG}host"
    monkeypatch.setenv("MM_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("MM_NETNS_PREFIX", f"{TAG}-")
    netns.create(name)
    entered = netns.entered(name)
    entered.__enter__()
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        entered.__exit__(None, None, None)
        for leftover in netns.names(TAG):
            netns.remove(leftover)


def ns_state() -> dict:
    """Links, routes and nft ruleset of the calling thread's namespace (for before/after checks)."""
    link_names = sorted(line.split(":")[1].strip() for line in _run("ip", "-o", "link").splitlines())
    addrs = sorted(" ".join(line.split()[1:4]) for line in _run("ip", "-o", "-4", "addr").splitlines())
    return {"links": link_names, "addrs": addrs, "routes": _run("ip", "route"),
            "nft": _run("nft", "list", "ruleset"), "netns": sorted(netns.names(TAG))}


def settled(expected: dict, timeout: float = 5.0) -> dict:
    """ns_state() once it equals `expected` (the kernel destroys namespaces asynchronously)."""
    deadline = time.monotonic() + timeout
    state = ns_state()
    while state != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        state = ns_state()
    return state


class Guest:
    """A stand-in guest: a namespace with a TAP at the guest address, wired to the VM's TAP."""

    def __init__(self, attachment, index: int) -> None:
        from vmm.network.attachment import open_tap

        self.ns = f"{TAG}g{index}"
        netns.create(self.ns)
        self.vm_fd = open_tap(attachment)
        with netns.entered(self.ns):
            self.guest_fd = os.open("/dev/net/tun", os.O_RDWR)
            import fcntl
            import struct

            fcntl.ioctl(self.guest_fd, links.TUNSETIFF, struct.pack("16sH22x", b"eth0", links.TAP_FLAGS))
            for cmd in (["ip", "link", "set", "lo", "up"],
                        ["ip", "link", "set", "eth0", "address", attachment.guest_mac, "up"],
                        ["ip", "addr", "add", f"{attachment.guest_ip}/{attachment.guest_prefixlen}", "dev", "eth0"],
                        ["ip", "route", "add", "default", "via", attachment.gateway]):
                subprocess.run(cmd, check=True)
        self._stop = os.pipe()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        peer = {self.vm_fd: self.guest_fd, self.guest_fd: self.vm_fd}
        while True:
            ready, _, _ = select.select([self.vm_fd, self.guest_fd, self._stop[0]], [], [])
            if self._stop[0] in ready:
                return
            for fd in ready:
                try:
                    os.write(peer[fd], os.read(fd, 65536))
                except BlockingIOError:
                    pass

    def listen(self, port: int, proto: str = "tcp") -> socket.socket:
        """An echo-once server on the guest address, answering with a fixed greeting."""
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        with netns.entered(self.ns):
            srv = socket.socket(socket.AF_INET, kind)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        if proto == "tcp":
            srv.listen()
        threading.Thread(target=self._serve, args=(srv, proto), daemon=True).start()
        return srv

    def _serve(self, srv: socket.socket, proto: str) -> None:
        try:
            while True:
                if proto == "tcp":
                    conn, peer = srv.accept()
                    with conn:
                        conn.sendall(f"hello from {self.ns} to {peer[0]}\n".encode())
                else:
                    data, peer = srv.recvfrom(2048)
                    srv.sendto(b"udp " + data, peer)
        except OSError:
            return

    def connect(self, address: str, port: int) -> bytes:
        """TCP from inside the guest namespace."""
        with netns.entered(self.ns):
            s = socket.socket()
        with s:
            s.settimeout(5)
            s.connect((address, port))
            return s.recv(200)

    def close(self) -> None:
        os.write(self._stop[1], b"x")
        self._thread.join(5)
        for fd in (self.vm_fd, self.guest_fd, *self._stop):
            os.close(fd)
        netns.remove(self.ns)


@pytest.fixture
def guests():
    made: list[Guest] = []

    def make(attachment) -> Guest:
        made.append(Guest(attachment, len(made)))
        return made[-1]

    yield make
    for guest in made:
        guest.close()


def tcp_get(address: str, port: int) -> bytes:
    with socket.create_connection((address, port), timeout=5) as s:
        return s.recv(200)
