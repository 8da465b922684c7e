"""Networking with real guests through `mm run` (the lab on a PVM host), as a user types it.

Four machines boot once for the module, in parallel, from the default busybox image, in
a private store (MM_STATE on the guest host's own tmpfs) with their own namespace prefix,
hence their own bridges and host nft table (vmm.network.scope), and their own default
subnet, so other engineers' machines in the shared lab are neither counted nor touched:

| machine | network | workload |
| --- | --- | --- |
| web | default, `-p 127.0.0.1:HOSTPORT:80` | busybox httpd serving `hello-from-web` |
| peer | default | sleep |
| inner | an `--internal` network | sleep |
| none | `--network none` | sleep |

The checks run on the guest host (ping, wget, a TCP listener) and in the guests through
`mm exec`. An "outside" namespace (a documentation subnet behind a veth of the guest
host) stands for the world beyond the host: the default network reaches it masqueraded,
the internal network does not. The last test removes everything and compares what our
store's scope owns on the host (namespaces, links, nft tables, leases) before and after.
Bad input (`mm run` with a taken port, an exhausted pool, an overlapping subnet) fails
before any guest boots and is tested on this host: tests/network/test_run_errors.py.

Every `mm` call in the lab costs a Python start-up there (seconds under TCG), so each
test is one bash script batching its checks. MM_E2E_NO_JAIL=1 runs the machines with
`--no-jail`.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.e2e.mm_shell import free_subnet
from vmm import paths

# Four boots and a Python start-up per `mm` call in the lab: the module's set-up alone
# takes minutes under TCG, and counts against its first test.
pytestmark = pytest.mark.timeout(1800)
MM = str(paths.REPO_ROOT / ".venv" / "bin" / "mm")
IMAGE = "mm/default"
GUEST_IP, GATEWAY, GUEST_MAC = "172.31.255.2", "172.31.255.1", "52:54:00:6d:6d:02"
SLEEP = "sleep 2147483647"
WEB = "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www"
# A one-shot TCP server on the guest host: prints the peer's address and what it sent.
LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(300)
print("listening", flush=True)
c, peer = s.accept(); c.settimeout(60)
data = b""
while not data.endswith(b"\\n"):
    chunk = c.recv(100)
    if not chunk:
        break
    data += chunk
print(f"peer={peer[0]} data={data.decode().strip()}", flush=True)
"""


# HTTP GET on the guest host (busybox-static's wget crashes in the lab's chroot): the body,
# or a line naming the error; exit status 0 only for a 200.
HGET = """hget() { python3 -c '
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode().strip())
except Exception as e:
    print("error:", e)
    sys.exit(1)' "$1"; }; """


# The store's leases on every network (none before the store exists), read directly.
LEASES = """
import sqlite3, sys
try:
    print("\\n".join(r[0] for r in sqlite3.connect(sys.argv[1]).execute("SELECT vm_id FROM leases")))
except sqlite3.OperationalError:
    pass
"""


def values(result: subprocess.CompletedProcess) -> dict[str, str]:
    """key=value words a script printed (later ones win)."""
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", result.stdout))


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


class NetLab:
    """A private mm on the guest host plus the "outside" namespace; scripts in bash."""

    def __init__(self, guest_host) -> None:
        self.gh = guest_host
        token = secrets.token_hex(3)
        self.tag = f"mn{token}"
        self.state = f"/tmp/mm-e2e-net-{token}"          # the lab's own tmpfs: sockets bind there
        self.subnet = ipaddress.ip_network(free_subnet(guest_host))
        self.inner_subnet = ipaddress.ip_network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        base = 4 * random.randint(0, 63)
        self.outside_host, self.outside_ip = f"198.51.100.{base + 1}", f"198.51.100.{base + 2}"
        self.outside_ns = f"mo{token}"
        self.host_port = random.randint(20000, 29999)
        self.outdir = Path(guest_host.workdir) / f"net-{token}"
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.env = {"MM_STATE": self.state, "MM_NETNS_PREFIX": f"{self.tag}-", "MM_NETWORK_SUBNET": str(self.subnet)}
        self.info: dict[str, dict] = {}

    @property
    def gateway(self) -> str:
        return str(self.subnet[1])

    def sh(self, script: str, timeout: float = 900) -> subprocess.CompletedProcess:
        jail = "--no-jail" if os.environ.get("MM_E2E_NO_JAIL") == "1" else ""
        prelude = f'set -u; mkdir -p "$MM_STATE"; cd "$OUT"; run() {{ "$MM" run {jail} "$@"; }}; ' + HGET
        env = {**self.env, "MM": MM, "OUT": str(self.outdir)}
        return self.gh.run(["bash", "-c", prelude + script], env=env, timeout=timeout)

    def out(self, name: str) -> str:
        path = self.outdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def ip(self, machine: str) -> str:
        return self.info[machine]["ip"]

    def ours(self) -> dict[str, list[str]]:
        """What this store's scope owns on the guest host now (names, sorted)."""
        r = self.sh(f"""
            ls /run/netns 2>/dev/null | grep '^{self.tag}-' > own.netns
            ip -o link | awk -F': ' '{{print $2}}' | cut -d@ -f1 | grep -E '^({self.tag}[0-9]+|mmv.*)$' > own.links
            nft list tables | grep -F 'mm_{self.tag}' > own.tables
            python3 -c '{LEASES}' "$MM_STATE/mm.db" > own.leases
        """)
        assert r.returncode == 0, explain(r)
        mine = {m["id"][:12] for m in self.info.values()}
        links = [n for n in self.out("own.links").split() if not n.startswith("mmv") or n[3:] in mine]
        return {"netns": sorted(self.out("own.netns").split()), "links": sorted(links),
                "nft": sorted(self.out("own.tables").splitlines()), "leases": sorted(self.out("own.leases").split())}

    def start(self) -> subprocess.CompletedProcess:
        """The outside namespace, the internal network and the four machines (booted in parallel)."""
        ns, vh, vo = self.outside_ns, f"{self.outside_ns}h", f"{self.outside_ns}o"
        return self.sh(f"""
            ip netns add {ns} && ip -n {ns} link set lo up &&
            ip link add {vh} type veth peer name {vo} netns {ns} &&
            ip addr add {self.outside_host}/30 dev {vh} && ip link set {vh} up &&
            ip -n {ns} addr add {self.outside_ip}/30 dev {vo} && ip -n {ns} link set {vo} up || echo outside=failed
            "$MM" network create inner --subnet {self.inner_subnet} --internal >/dev/null || echo inner=failed
            run -d --name web -p 127.0.0.1:{self.host_port}:80 {IMAGE} sh -c '{WEB}' >web.id 2>web.err &
            run -d --name peer {IMAGE} {SLEEP} >peer.id 2>peer.err &
            run -d --name inner --network inner {IMAGE} {SLEEP} >inner.id 2>inner.err &
            run -d --name none --network none {IMAGE} {SLEEP} >none.id 2>none.err &
            wait
            for vm in web peer inner none; do
                [ -s $vm.id ] || {{ echo "start_$vm=failed"; cat $vm.err; }}
            done
            # The first exec waits for the booting guest's agent; a guest booting for longer
            # than exec's own wait (minutes under TCG in a busy lab) is asked again.
            for vm in web peer inner none; do {{
                ok=no
                for try in 1 2 3 4 5 6; do
                    "$MM" exec $vm true 2>$vm.exec && {{ ok=yes; break; }}
                    grep -q "not running" $vm.exec && break
                done
                [ $ok = yes ] || {{ echo "agent_$vm=down"; cat $vm.exec; "$MM" logs --console -n 15 $vm; }}
            }} & done
            wait
            "$MM" ps -a
            "$MM" inspect web peer inner none > inspect.json
        """)

    def close(self) -> None:
        self.sh(f"""
            ids=$("$MM" ps -aq 2>/dev/null); [ -z "$ids" ] || "$MM" rm -f $ids >/dev/null 2>&1
            "$MM" network rm inner >/dev/null 2>&1; "$MM" network prune >/dev/null 2>&1
            ip netns del {self.outside_ns} 2>/dev/null; rm -rf "$MM_STATE"
        """, timeout=600)


@pytest.fixture(scope="module")
def lab(guest_host):
    net = NetLab(guest_host)
    net.before = net.ours()
    try:
        r = net.start()
        failed = {k: v for k, v in values(r).items() if v in ("failed", "down")}
        assert r.returncode == 0 and not failed, f"setting up failed: {failed}\n{explain(r)}"
        net.info = {m["name"]: m for m in json.loads(net.out("inspect.json"))}
        yield net
    finally:
        net.close()


def test_guest_has_its_fixed_address_gateway_and_dns(lab):
    r = lab.sh(f"""
        "$MM" exec web sh -c 'ip -o -4 addr show dev eth0; ip route; cat /sys/class/net/eth0/address
                               ping -c 1 -W 5 {GATEWAY} >/dev/null && echo gwping=ok
                               grep nameserver /etc/resolv.conf' > web.net; echo rc=$?
    """)
    out = lab.out("web.net")
    assert values(r).get("rc") == "0", explain(r) + out
    assert f"inet {GUEST_IP}/30" in out and f"default via {GATEWAY} dev eth0" in out, out
    assert GUEST_MAC in out and "gwping=ok" in out, out
    network = lab.info["web"]["config"]["network"]
    assert re.findall(r"nameserver (\S+)", out) == network["dns"], "the guest got the host's DNS servers"
    web_ip = ipaddress.ip_address(lab.ip("web"))
    assert web_ip in lab.subnet and str(web_ip) != lab.gateway, "a unique address from our subnet"
    assert len({lab.ip(m) for m in ("web", "peer", "inner")}) == 3
    assert ipaddress.ip_address(lab.ip("inner")) in lab.inner_subnet


def test_host_reaches_the_guest_by_ping_and_tcp(lab):
    r = lab.sh(f"""
        busybox ping -c 1 -W 10 {lab.ip('web')} >/dev/null && echo ping=ok
        echo "http=$(hget http://{lab.ip('web')}/)"
    """)
    v = values(r)
    assert v.get("ping") == "ok", explain(r)
    assert v.get("http") == "hello-from-web", explain(r)


def test_published_port_answers_on_the_host_loopback_only(lab):
    r = lab.sh(f"""
        echo "loopback=$(hget http://127.0.0.1:{lab.host_port}/)"
        hget http://{lab.gateway}:{lab.host_port}/ >/dev/null; echo other_address_rc=$?
        nft list table ip mm_{lab.tag} | grep -c '127.0.0.1 . {lab.host_port} : {lab.ip('web')} . 80' | sed 's/^/rules=/'
    """)
    v = values(r)
    assert v.get("loopback") == "hello-from-web", explain(r)
    assert v.get("other_address_rc") != "0", "published on 127.0.0.1 only, not on the bridge address"
    assert v.get("rules") == "1", explain(r)


def test_guest_reaches_a_host_service_from_its_unique_address(lab):
    port = random.randint(30000, 39999)
    r = lab.sh(f"""
        python3 -c '{LISTENER}' {port} > listener.out 2>&1 & server=$!
        for i in $(seq 100); do grep -q listening listener.out && break; sleep 0.2; done
        "$MM" exec web sh -c 'echo hi-from-web | nc -w 10 {lab.gateway} {port}'; echo exec_rc=$?
        wait $server; echo server_rc=$?
        cat listener.out
    """)
    v = values(r)
    assert (v.get("exec_rc"), v.get("server_rc")) == ("0", "0"), explain(r)
    assert v.get("data") == "hi-from-web", explain(r)
    assert v.get("peer") == lab.ip("web"), "the host sees the VM's unique address, not 172.31.255.2"


def test_two_vms_talk_over_the_bridge(lab):
    r = lab.sh(f"""
        "$MM" exec peer sh -c 'echo "http=$(timeout 20 wget -q -O - http://{lab.ip('web')}/)"
                               ping -c 1 -W 10 {lab.ip('web')} >/dev/null && echo ping=ok'
    """)
    v = values(r)
    assert v.get("http") == "hello-from-web" and v.get("ping") == "ok", explain(r)


def test_outbound_is_masqueraded_and_the_internal_network_has_none(lab):
    r = lab.sh(f"""
        "$MM" exec web sh -c 'ping -c 1 -W 10 {lab.outside_ip} >/dev/null && echo web_out=ok || echo web_out=no'
        "$MM" exec inner sh -c 'ping -c 1 -W 5 {lab.outside_ip} >/dev/null && echo inner_out=ok || echo inner_out=no
                                timeout 10 wget -q -O - http://{lab.ip('web')}/ >/dev/null 2>&1 && echo inner_web=ok || echo inner_web=no
                                echo "inner_dns=$(grep -c nameserver /etc/resolv.conf 2>/dev/null)"'
        busybox ping -c 1 -W 10 {lab.ip('inner')} >/dev/null && echo host_inner=ok || echo host_inner=no
        "$MM" ps -a >&2
    """)
    v = values(r)
    if "inner_out" not in v:  # the exec failed: say what became of the machine
        r.stderr += lab.sh('"$MM" logs --console -n 25 inner; "$MM" logs -n 10 inner').stdout
    assert v.get("web_out") == "ok", "the default network reaches beyond the host\n" + explain(r)
    assert v.get("inner_out") == "no", "an internal network has no outbound access\n" + explain(r)
    assert v.get("inner_web") == "no", "no connection crosses from one network to another\n" + explain(r)
    assert v.get("inner_dns") in ("0", ""), "an internal network gets no DNS servers"
    assert v.get("host_inner") == "ok", "the host still reaches an internal network"


def test_network_none_has_only_loopback(lab):
    # sit0 is the guest kernel's IPv6-in-IPv4 tunnel, there in every guest: no NIC, no address.
    script = """"$MM" exec none sh -c 'for l in /sys/class/net/*; do echo "link=${l##*/}:$([ -e $l/device ] && echo nic)"; done
                                     ip -o -4 addr; ip route; echo rc=$?'"""
    r = lab.sh(script)
    assert values(r).get("rc") == "0", explain(r)
    found = re.findall(r"link=(\S+)", r.stdout)
    assert "lo:" in found and not [f for f in found if f.endswith(":nic")], explain(r)
    assert set(found) <= {"lo:", "sit0:"}, explain(r)
    assert re.findall(r"inet (\S+)", r.stdout) == ["127.0.0.1/8"] and "default" not in r.stdout, explain(r)
    assert lab.info["none"]["ip"] is None and lab.info["none"]["config"]["network"] is None


def test_rm_and_prune_leave_nothing_behind(lab):
    during = lab.ours()
    assert len(during["netns"]) == 3 and len(during["leases"]) == 3, during
    assert f"{lab.tag}0" in during["links"] and f"{lab.tag}1" in during["links"], during
    r = lab.sh("""
        "$MM" rm -f web peer inner none >/dev/null; echo rm_rc=$?
        "$MM" network rm inner; echo netrm_rc=$?
        "$MM" network prune --json > prune.json; echo prune_rc=$?
    """)
    v = values(r)
    assert (v.get("rm_rc"), v.get("netrm_rc"), v.get("prune_rc")) == ("0", "0", "0"), explain(r)
    after = lab.ours()
    # The kernel destroys a namespace (and its veth) asynchronously: give it a moment.
    for _ in range(20):
        if after == lab.before:
            break
        lab.sh("sleep 0.5")
        after = lab.ours()
    assert after == lab.before == {"netns": [], "links": [], "nft": [], "leases": []}, (lab.before, after)
