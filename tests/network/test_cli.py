"""`mm network ...` as a user types it, inside the private host namespace."""
from __future__ import annotations

import json
import subprocess
import sys

from vmm.network import attachment as net
from tests.network.conftest import BRIDGE0, BRIDGE1


def mm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmm", "network", *args], capture_output=True, text=True)


def test_create_ls_inspect_rm(host):
    assert mm("create", "lab", "--subnet", "10.89.0.0/24", "--internal").stdout == "lab\n"
    rows = json.loads(mm("ls", "--json").stdout)
    assert [(r["name"], r["bridge"], r["subnet"], r["internal"]) for r in rows] == [
        ("mm", BRIDGE0, "10.88.0.0/16", False), ("lab", BRIDGE1, "10.89.0.0/24", True)]
    table = mm("ls").stdout.splitlines()
    assert table[0].split() == ["NAME", "BRIDGE", "SUBNET", "GATEWAY", "INTERNAL", "MACHINES"]
    net.attach("vm1", network="lab", publish=["18090:80"])
    info = json.loads(mm("inspect", "lab").stdout)
    assert info["machines"][0]["ip"] == "10.89.0.2" and info["machines"][0]["ports"][0]["host_port"] == 18090
    busy = mm("rm", "lab")
    assert busy.returncode != 0 and "error: network 'lab' is used by 1 machine(s)" in busy.stderr
    assert "hint:" in busy.stderr
    net.detach("vm1")
    assert mm("rm", "lab").returncode == 0
    assert [r["name"] for r in json.loads(mm("ls", "--json").stdout)] == ["mm"]


def test_errors_are_clear(host):
    for args, text in [(("create", "x", "--subnet", "10.0.0.0/33"), "bad subnet"),
                       (("inspect", "nope"), "no network named 'nope'"),
                       (("rm", "mm"), "cannot be removed")]:
        proc = mm(*args)
        assert proc.returncode != 0 and "error: " in proc.stderr and text in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_prune_json(host):
    net.attach("vm1")
    net.set_owner("vm1", 2**22 + 7)  # a pid that does not exist
    report = json.loads(mm("prune", "--json").stdout)
    assert report["leases"] == ["vm1"] and BRIDGE0 in report["links"]
    assert json.loads(mm("prune", "--json").stdout) == {"leases": [], "links": [], "namespaces": []}


def test_prune_keeps_the_lease_of_an_existing_machine(host):
    from vmm.machines.db import open_control

    rec = open_control().machines.create("mm/default", name="keeper", labels={}, auto_remove=False, config={})
    net.attach(rec.id)
    net.set_owner(rec.id, 2**22 + 7)  # the `mm run -d` that attached it has ended
    net.attach("orphan")
    net.set_owner("orphan", 2**22 + 7)
    report = json.loads(mm("prune", "--json").stdout)
    assert report["leases"] == ["orphan"]
    assert net.lookup(rec.id) is not None
    net.detach(rec.id)
