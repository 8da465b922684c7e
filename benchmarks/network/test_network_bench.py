"""Network set-up and tear-down per VM: `attach` and `detach`, target ≤ 20 ms each (issue 7).

A detach that unpublishes ports pays one nft deletion, which waits for an RCU grace
period in the kernel (see docs/network.md); without ports it deletes nothing in nft.

Runs as root inside a private namespace playing the host (nothing touches the real
host's networking). Each round attaches (or detaches) one VM while 10 others stay
attached, with no or one published port, so the figures include the store transaction, the
namespace, bridge, veth, TAP, routes and both nft tables. Run:
    .venv/bin/python -m pytest benchmarks/network --benchmark-only -p no:cacheprovider
"""
from __future__ import annotations

import itertools
import os
import subprocess

import pytest

from vmm.network import attachment as net
from vmm.network import ipam, netns

TAG = f"mmb{os.getpid() % 100000}"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, links, nftables)")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    os.environ["MM_STATE"] = str(tmp_path_factory.mktemp("state"))
    os.environ["MM_NETNS_PREFIX"] = f"{TAG}-"
    netns.create(f"{TAG}host")
    entered = netns.entered(f"{TAG}host")
    entered.__enter__()
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        conn = ipam.open_db()
        for i in range(10):
            net.attach(f"bg{i}", conn=conn)
        yield conn
    finally:
        entered.__exit__(None, None, None)
        for name in netns.names(TAG):
            netns.remove(name)
        os.environ.pop("MM_NETNS_PREFIX")


@pytest.mark.parametrize("ports", [0, 1])
def test_attach(benchmark, host, ports):
    ids = (f"a{ports}x{i}" for i in itertools.count())
    made = []

    def attach():
        vm = next(ids)
        made.append(vm)
        net.attach(vm, publish=[f"{20000 + len(made)}:80"][:ports], conn=host)

    benchmark.pedantic(attach, rounds=30, iterations=1, warmup_rounds=2)
    for vm in made:
        net.detach(vm, conn=host)


@pytest.mark.parametrize("ports", [0, 1])
def test_detach(benchmark, host, ports):
    ids = iter(range(40))

    def setup():
        i = next(ids)
        vm = f"d{ports}x{i}"
        net.attach(vm, publish=[f"{30000 + i}:80"][:ports], conn=host)
        return (vm,), {}

    benchmark.pedantic(lambda vm: net.detach(vm, conn=host), setup=setup, rounds=30, iterations=1, warmup_rounds=2)
