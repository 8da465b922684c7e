"""`mm ssh` with the real OpenSSH client against a real guest started with `mm run --ssh`
(dropbear in the guest, the per-VM key, the VM's host key pinned: no prompts), where real
guests run (the lab on this PVM host)."""
from __future__ import annotations

import re

import pytest

from tests.e2e import exec_machine
from tests.e2e.exec_machine import release_machines  # noqa: F401 (fixture)


@pytest.fixture
def ssh_vm(guest_host, release_machines):
    return exec_machine.shared(guest_host, "sshvm", run_args=("--ssh",))


def test_ssh_runs_a_command(ssh_vm):
    r = ssh_vm.sh("""
        $MM ssh $VM echo hello over ssh; echo rc=$?
        $MM ssh $VM 'exit 3'; echo rc_exit=$?
        $MM ssh $VM -- id -u; echo rc_id=$?
        echo "known=$(cut -d' ' -f2 $MM_STATE/machines/*/ssh/known_hosts)"
    """, timeout=900)
    assert "hello over ssh" in r.stdout, r.stdout + r.stderr
    v = dict(re.findall(r"(\w+)=(\S*)", r.stdout))
    assert (v["rc"], v["rc_exit"], v["rc_id"]) == ("0", "3", "0"), r.stdout + r.stderr
    assert "\n0\n" in r.stdout
    assert v["known"] == "ssh-ed25519"
    assert "yes/no" not in r.stderr and "password" not in r.stderr.lower()
