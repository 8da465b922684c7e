"""What the VMM reads from its supervisor before its jail (vmm.jail.supervisor.VmmContext):
the "cgroup" message (waited for before guest RAM unless the VMM was born in its cgroup),
then the seccomp program with the network namespace it made, in that order; and the
supervisor's own start-up work at a lower priority than the VMM's."""
from __future__ import annotations

import base64
import os
from pathlib import Path

from vmm.jail import channel
from vmm.jail.config import JailSpec
from vmm.jail.supervisor import VmmContext
from vmm.machines.layout import MachinePaths


def _context(tmp_path: Path, born_inside: bool):
    sup, vmm = channel.pair()
    limits = JailSpec().resolved({"cpus": 1, "memory": 64 << 20}, os.getpid())
    paths = MachinePaths.for_id("0123456789abcdef", tmp_path)
    return sup, VmmContext(vmm, os.getpid(), paths, tmp_path, JailSpec(), limits, born_inside)


def _send_both(sup) -> int:
    r, w = os.pipe()  # stands in for the network namespace's fd
    channel.send(sup, {"op": "cgroup", "tasks": [], "how": "born in it (clone3)"})
    channel.send(sup, {"op": "seccomp", "program": base64.b64encode(b"\0" * 8).decode()}, fd=r)
    os.close(r)
    return w


def test_a_vmm_born_in_its_cgroup_does_not_wait_before_guest_ram(tmp_path):
    sup, ctx = _context(tmp_path, born_inside=True)
    ctx.wait_for_cgroup()  # returns at once: nothing was sent yet, and nothing is read
    assert not ctx.joined
    w = _send_both(sup)
    assert ctx.wait_for_program() == b"\0" * 8  # the cgroup message first, then the program's
    assert ctx.joined and ctx.cgroup_how == "born in it (clone3)"
    assert ctx.netns >= 0 and os.fstat(ctx.netns)
    os.close(ctx.netns)
    os.close(w)


def test_a_vmm_outside_its_cgroup_waits_for_it_first(tmp_path):
    sup, ctx = _context(tmp_path, born_inside=False)
    w = _send_both(sup)
    ctx.wait_for_cgroup()
    assert ctx.joined and ctx.cgroup_how == "born in it (clone3)" and ctx.program is None
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
