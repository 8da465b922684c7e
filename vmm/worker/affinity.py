"""Where a VM's threads run: `mm run --cpuset-cpus`, and the one-CPU placement the lab asks for.

The spec's `cpuset` (vmm.worker.spec) is applied by the VMM to its main thread before it
builds the VM; every thread it starts later (vCPUs, device and I/O threads) inherits it.

`MM_WORKER_CPUSET=single` in the environment of `mm run` (the lab's agent sets it, see
vmm/lab/agent.py) gives a machine without --cpuset-cpus one CPU of those `mm run` may use,
picked by its id, so machines spread over the CPUs while each keeps all its threads on
one. Why the lab wants that: under QEMU's TCG emulation of SVM, a device thread
interrupting a vCPU that runs the guest on another lab CPU corrupts the guest now and then
(docs/lab.md, "One CPU per VM"); with the VM's threads on one CPU that never happened.
"""
from __future__ import annotations

import os

from vmm.errors import MMError

ENV = "MM_WORKER_CPUSET"
SINGLE = "single"


class AffinityError(MMError):
    """The VMM cannot run on the CPUs its spec names."""

    hint = "pick CPUs this host has online (`nproc --all`, /sys/devices/system/cpu/online) with --cpuset-cpus"


def default_cpuset(machine_id: str, env: dict[str, str] | None = None) -> list[int] | None:
    """The cpuset of a machine started without --cpuset-cpus: None (any CPU), or with
    MM_WORKER_CPUSET=single one CPU picked by `machine_id` (hex) from our own affinity."""
    mode = (os.environ if env is None else env).get(ENV, "")
    if mode != SINGLE:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return [cpus[int(machine_id[:8], 16) % len(cpus)]]


def apply(cpuset: list[int] | None) -> None:
    """Confine the calling thread, and so every thread it starts, to `cpuset` (None: no change)."""
    if not cpuset:
        return
    try:
        os.sched_setaffinity(0, cpuset)
    except (OSError, ValueError) as e:
        raise AffinityError(f"cannot run the VM on CPUs {cpuset}: {getattr(e, 'strerror', None) or e}") from None
