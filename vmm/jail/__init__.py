"""The jail: a worker's VMM runs in a cell with almost nothing, so a guest that breaks out
of KVM into it finds no way further.

A worker is two processes (vmm.jail.supervisor): an unjailed supervisor, which alone
writes the store, holds the seccomp listener and reaps; and the VMM, forked into a new
PID namespace, which opens everything it needs (/dev/kvm, guest memory, disks, taps,
sockets) and then jails itself for the rest of its life (vmm.jail.enter):

    namespaces   mount, PID, IPC, UTS, cgroup, and a new empty network namespace
    cell         pivot_root into a read-only tmpfs holding only the machine directory,
                 the Python code, the kernel/initrd and a PID-only /proc (vmm.jail.cell)
    identity     a per-VM uid/gid, no capabilities (bounding set emptied too),
                 no_new_privs, not dumpable, rlimits (vmm.jail.privileges)
    seccomp      a default-deny allowlist, one table per thread role with every rule's
                 reason (vmm.jail.policy); ioctl only for the KVM, TUN, terminal and
                 userfaultfd requests of vmm.jail.ioctls; a denied call kills the VMM
                 and is recorded for `mm ps`/`mm inspect` (vmm.jail.seccomp)
    resources    a cgroup (v2 or v1) with CPU quota, memory (guest + overhead) and pids
                 limits (vmm.jail.cgroups)

`mm run --no-jail` (JailSpec.enabled False) skips all of it, for debugging only.
The spec's `jail` part is `vmm.jail.config.JailSpec`.
"""
from __future__ import annotations

from vmm.jail.config import NO_JAIL_WARNING, JailSpec, for_machine
from vmm.jail.errors import JailError

__all__ = ["JailError", "JailSpec", "NO_JAIL_WARNING", "for_machine"]
