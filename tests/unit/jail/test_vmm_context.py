"""What the VMM reads from its supervisor before its jail (vmm.jail.supervisor.VmmContext):
nothing before guest RAM when it joins its cgroup itself (v1) or was born in it (v2), the
"cgroup" message when the supervisor attaches it (v2 without clone3), then the seccomp
program with the network namespace made for it; and the supervisor's own start-up work
at a lower priority than the VMM's."""
from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from vmm.jail import channel
from vmm.jail.config import JailSpec
from vmm.jail.supervisor import VmmContext
from vmm.machines.layout import MachinePaths


def _context(tmp_path: Path, cgroup: tuple[list[str], str, bool]):
    sup, vmm = channel.pair()
    limits = JailSpec().resolved({"cpus": 1, "memory": 64 << 20}, os.getpid())
    paths = MachinePaths.for_id("0123456789abcdef", tmp_path)
    return sup, VmmContext(vmm, os.getpid(), paths, tmp_path, JailSpec(), limits, cgroup)


def _send_program(sup) -> int:
    r, w = os.pipe()  # stands in for the network namespace's fd
    channel.send(sup, {"op": "seccomp", "program": base64.b64encode(b"\0" * 8).decode()}, fd=r)
    os.close(r)
    return w


def test_a_vmm_born_in_its_cgroup_waits_for_nothing_before_guest_ram(tmp_path):
    sup, ctx = _context(tmp_path, ([], "born in it (clone3)", False))
    ctx.wait_for_cgroup()  # returns at once: nothing was sent, and nothing is read
    assert ctx.joined
    w = _send_program(sup)
    assert ctx.wait_for_program() == b"\0" * 8 and ctx.netns >= 0 and os.fstat(ctx.netns)
    os.close(ctx.netns)
    os.close(w)


def test_a_vmm_the_supervisor_attaches_waits_for_it_first(tmp_path):
    sup, ctx = _context(tmp_path, ([], "attached (cgroup.procs)", True))
    w = _send_program(sup)
    with pytest.raises(RuntimeError, match="expected the supervisor's cgroup message"):
        ctx.wait_for_cgroup()  # the program came first: out of order
    os.close(w)
    sup, ctx = _context(tmp_path, ([], "attached (cgroup.procs)", True))
    channel.send(sup, {"op": "cgroup"})
    w = _send_program(sup)
    ctx.wait_for_cgroup()
    assert ctx.joined and ctx.program is None
    assert ctx.wait_for_program() == b"\0" * 8 and ctx.netns >= 0
    os.close(ctx.netns)
    os.close(w)


def test_the_supervisors_store_work_gives_way_to_the_vmm_and_its_priority_comes_back():
    from vmm.jail.supervisor import behind_the_vmm

    before = os.getpriority(os.PRIO_PROCESS, 0)
    with behind_the_vmm():
        inside = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
    assert inside == (min(before + 10, 19) if os.geteuid() == 0 else before)  # only where it can be undone
