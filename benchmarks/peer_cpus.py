"""The CPUs the peer VMM (QEMU) may use in a side-by-side run: the same as ours.

In the lab every VM we start keeps all its threads on one lab CPU (`MM_WORKER_CPUSET=single`,
set by the lab's agent; docs/lab.md, "One CPU per VM"), so its vCPU and its device threads
take turns on that CPU. Left alone, QEMU spreads over every lab CPU: its vCPU on one, its
main loop and, for vhost devices, the kernel's vhost worker (a kthread on the lab's 6.1
kernel, which inherits QEMU's cgroups but not its affinity) on another. That compares
one CPU against two. `--peer-cpus same` (the default) confines the peer the way we are
confined: one CPU picked by the rule ours uses (vmm.worker.affinity.default_cpuset), set
with `taskset` for QEMU's own threads and a cgroup v2 cpuset for the kernel workers it
owns. `--peer-cpus any` leaves it free. `--peer-cpus split` puts every VM of either VMM on
the same lab CPU (the last one) and the harness, with the host-side clients it runs, on
the others: a VM's CPU is then not drawn afresh per run, and the client never takes
turns with the VM it measures, which takes both sources of run-to-run spread out of
the figures for both sides alike. Outside the lab (the variable unset) neither side is
confined and this adds nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CHOICES = ("same", "any", "split")
_START_CPUS = sorted(os.sched_getaffinity(0))  # before confine_harness() narrows ours


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


def _split(env: dict[str, str] | None = None) -> tuple[int, list[int]] | None:
    """split mode's (VM CPU, harness CPUs): the last CPU we started with and the rest;
    None where our VMs are not confined or there is one CPU (then split is same)."""
    from vmm.worker.affinity import ENV, SINGLE

    if (os.environ if env is None else env).get(ENV) != SINGLE or len(_START_CPUS) < 2:
        return None
    return _START_CPUS[-1], _START_CPUS[:-1]


def confine_harness(mode: str, env: dict[str, str] | None = None) -> None:
    """split mode: move the calling process (the harness, and the clients it starts) off
    the VMs' CPU. Other modes: nothing."""
    split = _split(env) if mode == "split" else None
    if split is not None:
        os.sched_setaffinity(0, split[1])


def ours_prefix(mode: str, env: dict[str, str] | None = None) -> tuple[str, ...]:
    """The argv prefix of one of our runs: split mode gives our VMM the VMs' CPU (it then
    picks its one CPU from that set, vmm.worker.affinity); otherwise nothing."""
    split = _split(env) if mode == "split" else None
    return () if split is None else ("taskset", "-c", str(split[0]))


def peer_prefix(mode: str, env: dict[str, str] | None = None) -> tuple[str, ...]:
    """The argv prefix that confines one peer run (a CPU picked afresh each run, as each
    of our VMs gets its own by its id; in split mode the VMs' CPU). Empty when `mode` is
    "any" or our VMs are not confined either."""
    from vmm.worker.affinity import default_cpuset

    if mode not in CHOICES:
        raise ValueError(f"--peer-cpus is one of {', '.join(CHOICES)}, not {mode!r}")
    split = _split(env) if mode == "split" else None
    if split is not None:
        cpuset = [split[0]]
    else:
        cpuset = default_cpuset(os.urandom(4).hex(), env) if mode in ("same", "split") else None
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
    split = _split(env) if mode == "split" else None
    if split is not None:
        return (f"every VM of either VMM on lab CPU {split[0]}, the harness and its clients on "
                f"{','.join(map(str, split[1]))} (QEMU: {how})")
    return f"each VM of either VMM on one lab CPU picked per run (QEMU: {how})"
