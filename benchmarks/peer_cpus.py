"""The CPUs the peer VMM (QEMU) may use in a side-by-side run: the same as ours.

In the lab every VM we start keeps all its threads on one lab CPU (`MM_WORKER_CPUSET=single`,
set by the lab's agent; docs/lab.md, "One CPU per VM"), so its vCPU and its device threads
take turns on that CPU. Left alone, QEMU spreads over every lab CPU: its vCPU on one, its
main loop and, for vhost devices, the kernel's vhost worker (a kthread on the lab's 6.1
kernel, which inherits QEMU's cgroups but not its affinity) on another. That compares
one CPU against two. `--peer-cpus same` (the default) confines the peer the way we are
confined: one CPU picked by the rule ours uses (vmm.worker.affinity.default_cpuset), set
with `taskset` for QEMU's own threads and a cgroup v2 cpuset for the kernel workers it
owns. `--peer-cpus any` leaves it free. Outside the lab (the variable unset) neither
side is confined and this adds nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CHOICES = ("same", "any")


def _cpuset_cgroup(cpu: int) -> Path | None:
    """A cgroup whose cpuset is `cpu` (made once), or None where cgroup v2's cpuset is not
    available (then taskset alone confines the peer's own threads)."""
    group = CGROUP_ROOT / f"mm-bench-peer-cpu{cpu}"
    try:
        controllers = (CGROUP_ROOT / "cgroup.subtree_control").read_text().split()
        if "cpuset" not in controllers:
            (CGROUP_ROOT / "cgroup.subtree_control").write_text("+cpuset")
        group.mkdir(exist_ok=True)
        (group / "cpuset.cpus").write_text(str(cpu))
    except OSError:
        return None
    return group


def peer_prefix(mode: str, env: dict[str, str] | None = None) -> tuple[str, ...]:
    """The argv prefix that confines one peer run (a CPU picked afresh each run, as each
    of our VMs gets its own by its id). Empty when `mode` is "any" or our VMs are not
    confined either."""
    from vmm.worker.affinity import default_cpuset

    if mode not in CHOICES:
        raise ValueError(f"--peer-cpus is one of {', '.join(CHOICES)}, not {mode!r}")
    cpuset = default_cpuset(os.urandom(4).hex(), env) if mode == "same" else None
    if not cpuset:
        return ()
    cpu = cpuset[0]
    group = _cpuset_cgroup(cpu)
    if group is None:
        return ("taskset", "-c", str(cpu))
    return ("sh", "-c", f'echo $$ > {group}/cgroup.procs && exec taskset -c {cpu} "$@"', "sh")


def describe(mode: str, env: dict[str, str] | None = None) -> str:
    """What `mode` does here, in words for the results."""
    from vmm.worker.affinity import ENV, SINGLE

    ours = (os.environ if env is None else env).get(ENV) == SINGLE
    if not ours:
        return "neither VMM confined to CPUs"
    if mode == "any":
        return "each of our VMs on one lab CPU, QEMU on any"
    how = "taskset, and a cgroup cpuset for any vhost worker" if _cpuset_cgroup(0) else "taskset only"
    return f"each VM of either VMM on one lab CPU picked per run (QEMU: {how})"
