"""Dropping everything root gave the VMM: rlimits, capabilities, ids, no_new_privs.

Order matters and is the kernel's, not ours:
1. rlimits first: lowering a hard limit is always allowed, and after the drop the VMM
   could not raise one anyway. RLIMIT_NOFILE bounds fds, RLIMIT_NPROC (per uid, and the
   uid is this VM's alone) bounds threads next to the cgroup's pids.max, RLIMIT_CORE=0
   because a core dump would write out guest RAM. Memory is the cgroup's job: an
   RLIMIT_AS would count the guest's whole mapping and Python's reservations.
2. The capability bounding set and ambient set are emptied while we still hold
   CAP_SETPCAP, so nothing can ever regain a capability (there is no execve anyway).
3. setgroups([]), setresgid, setresuid to the VM's own ids: the kernel clears the
   permitted and effective sets when every uid leaves 0; we clear them explicitly
   with capset too and check with capget.
4. The parent-death signal is set again (a credential change clears it) and
   dumpable is 0 (no core, no ptrace by same-uid processes, /proc/self owned by root).
5. no_new_privs, which seccomp requires of an unprivileged process.
No user namespace: the VMM is started by root and drops to a real unprivileged uid,
which is what makes the kernel refuse it other processes, files and devices; a user
namespace would restrict nothing further (the VMM holds no capability in any
namespace) and would open the kernel's namespaced-root code paths to it.
"""
from __future__ import annotations

import os
import resource
import signal

from vmm.jail import libc as L
from vmm.jail.config import Limits
from vmm.jail.errors import JailError


def last_capability() -> int:
    """The highest capability number this kernel knows (read before the cell hides /proc/sys)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def set_rlimits(limits: Limits) -> None:
    for res, value in ((resource.RLIMIT_NOFILE, limits.nofile), (resource.RLIMIT_NPROC, limits.pids),
                       (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))


def drop(limits: Limits, cap_last: int) -> None:
    """Become limits.uid/gid with no capability and no way back (steps 2-5 above)."""
    for cap in range(cap_last + 1):
        L.prctl(L.PR_CAPBSET_DROP, cap)
    L.prctl(L.PR_CAP_AMBIENT, L.PR_CAP_AMBIENT_CLEAR_ALL)
    os.setgroups([])
    os.setresgid(limits.gid, limits.gid, limits.gid)
    os.setresuid(limits.uid, limits.uid, limits.uid)
    L.clear_capabilities()
    if any(L.capabilities()) or os.getresuid() != (limits.uid,) * 3 or os.getgroups():
        raise JailError("the VMM still holds privileges after dropping them", "report this as a bug")
    L.prctl(L.PR_SET_PDEATHSIG, signal.SIGKILL)
    L.prctl(L.PR_SET_DUMPABLE, 0)
    L.prctl(L.PR_SET_NO_NEW_PRIVS, 1)
