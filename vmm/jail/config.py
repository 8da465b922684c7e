"""What a worker's jail looks like: `JailSpec`, the `jail` part of the worker spec.

Plain data (it is written into spec.json by the CLI). Every field has a default, so a
spec without a `jail` part (an older CLI, the worker tests) gets a full jail with no
CPU or memory limit beyond what the machine's own settings imply:

    enabled        False only for `mm run --no-jail` (debugging: the VMM then runs as a
                   plain root process, with no namespaces, seccomp, uid drop or cgroup)
    uid, gid       the unprivileged ids the VMM drops to; None: JAIL_ID_BASE + the
                   supervisor's host pid, unique among running workers without any
                   allocation table (a pid is unique while its process lives)
    cpus           CPU-time limit of the whole VMM in CPUs (a CFS quota per 100 ms
                   period, shared by its vCPU threads and its device I/O threads); None:
                   no limit, the default (see "CPU time" below)
    memory         hard memory limit in bytes for the VMM (guest RAM + overhead); None:
                   the machine's memory plus `memory_overhead`, or no limit when the
                   machine does not say how much RAM it has. `mm run` writes guest RAM +
                   overhead, or MM_JAIL_MEMORY when set (`for_machine`; testing only)
    memory_overhead  what the VMM needs besides guest RAM (Python, page tables, queues)
    pids           most tasks (threads) the VMM may have; None: vCPUs + PIDS_OVERHEAD
    nofile         RLIMIT_NOFILE of the VMM
    ro_paths       host files or directories the VM still reads after the jail, bound
                   read-only into the cell at the same path (the kernel and initrd are
                   added from the machine's settings: `Machine.start()` loads them)

CPU time: a VMM gets no CPU-time limit unless its user asks for one, as Docker gives a
container none without --cpus and Firecracker's jailer sets only the cgroup values its
operator passes. The guest's compute is already bounded by its vCPU count (`--cpus N`:
N vCPU threads), and the VMM's device threads do block and network I/O on the guest's
behalf. A quota of N CPUs over both would make the guest pay for its own I/O: a 1-vCPU
guest doing I/O would be throttled by the threads serving it, so a jailed VM would be
slower than the same VM with --no-jail (which has no cgroup at all). A limit is set when
asked for (`for_machine`'s `cpus`, from RunOptions.cpu_quota):

    mm run --cpus 2 IMAGE                    2 vCPUs, no CPU-time limit (cpu.max "max")
    mm run --cpus 0.5 IMAGE                  1 vCPU, the VMM limited to 0.5 CPU (Docker's
                                             fractional --cpus: less than a whole CPU)
    mm run --cpus 2 --cpu-limit 2.5 IMAGE    2 vCPUs, the VMM (vCPUs + I/O) limited to 2.5

The limit in effect is in the spec (`mm inspect`: config.worker.jail.cpus, null for
none), in worker.log's "jailed in" line, and in the cgroup (MachineCgroup.limits()).
"""
from __future__ import annotations

import os

from vmm.jail.errors import JailError
from vmm.plain import REQUIRED, Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~4 ms of import time; annotations here are strings
    from typing import Any

MiB = 1 << 20
# Above every uid/gid a Debian host hands out (system < 1000, users < 60000, subuid
# ranges from 100000, systemd's dynamic users below 65536): 0x4d4d ("MM") << 16.
JAIL_ID_BASE = 0x4D4D0000
DEFAULT_MEMORY_OVERHEAD = 256 * MiB  # the VMM measured ~18 MiB beyond guest RAM (no devices); room for
# device queues, vsock stream buffers (256 KiB each), page tables and bursts: an OOM kill ends the VM
PIDS_OVERHEAD = 64  # loop, vm-wait, device I/O, exec bridges, agent helpers besides the vCPUs
DEFAULT_NOFILE = 4096
MIN_CPUS = 0.01  # 1 ms of CPU time per 100 ms period: the least CFS quota that still runs a VMM

NO_JAIL_WARNING = ("--no-jail: the VMM runs as a plain root process (no namespaces, seccomp, "
                   "uid drop or resource limits); a guest that escapes KVM owns this host. "
                   "Use it for debugging only.")


class JailSpec(Frozen):
    FIELDS = {
        "enabled": True,
        "uid": None,               # int | None
        "gid": None,               # int | None
        "cpus": None,              # float | None
        "memory": None,            # int | None
        "memory_overhead": DEFAULT_MEMORY_OVERHEAD,
        "pids": None,              # int | None
        "nofile": DEFAULT_NOFILE,
        "ro_paths": (),            # tuple[str, ...]
    }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "JailSpec":
        data = dict(data or {})
        unknown = set(data) - set(cls.FIELDS)
        if unknown:
            raise JailError(f"unknown jail settings: {', '.join(sorted(unknown))}",
                            "the spec was written by a newer mm; restart the machine with this one")
        if "ro_paths" in data:
            data["ro_paths"] = tuple(data["ro_paths"])
        spec = cls(**data)
        spec.check()
        return spec

    def to_dict(self) -> dict[str, Any]:
        d = self.asdict()
        d["ro_paths"] = list(self.ro_paths)
        return d

    def check(self) -> None:
        if self.cpus is not None and not self.cpus >= MIN_CPUS:
            raise JailError(f"jail cpus {self.cpus} is below {MIN_CPUS}", "the cgroup's smallest quota is 1 ms per 100 ms")
        if self.memory is not None and self.memory < 16 * MiB:
            raise JailError(f"jail memory limit {self.memory} bytes is below 16 MiB", "give the VMM room")
        if self.pids is not None and self.pids < 8:
            raise JailError(f"jail pids limit {self.pids} is below 8", "the VMM needs a few threads")
        for p in self.ro_paths:
            if not p.startswith("/"):
                raise JailError(f"jail path {p!r} is not absolute")
        for name in ("uid", "gid"):
            v = getattr(self, name)
            if v is not None and not 0 < v < 2**32 - 1:
                raise JailError(f"jail {name} {v} must be an unprivileged id (1..2^32-2)")

    def resolved(self, machine: dict[str, Any], supervisor_pid: int) -> "Limits":
        """The concrete ids and limits for a machine config (MachineConfig's names:
        `cpus` vCPUs, `memory` bytes of RAM, `kernel`, `initrd`)."""
        vcpus = int(machine.get("cpus") or 1)
        guest = machine.get("memory")
        memory = self.memory
        if memory is None and isinstance(guest, int):
            memory = guest + self.memory_overhead
        ident = JAIL_ID_BASE + supervisor_pid
        files = [machine[k] for k in ("kernel", "initrd") if isinstance(machine.get(k), str)]
        return Limits(
            uid=self.uid if self.uid is not None else ident,
            gid=self.gid if self.gid is not None else ident,
            cpus=self.cpus,
            memory=memory,
            pids=self.pids if self.pids is not None else vcpus + PIDS_OVERHEAD,
            nofile=self.nofile,
            ro_paths=tuple(dict.fromkeys([*self.ro_paths, *files])),
        )


class Limits(Frozen):
    """A JailSpec made concrete for one start of one machine."""

    FIELDS = {"uid": REQUIRED, "gid": REQUIRED, "cpus": REQUIRED,  # int, int, float | None
              "memory": REQUIRED,                                   # int | None
              "pids": REQUIRED, "nofile": REQUIRED,                  # int, int
              "ro_paths": REQUIRED}                                  # tuple[str, ...]


MEMORY_ENV = "MM_JAIL_MEMORY"


def for_machine(vcpus: int, memory_mib: int, cpus: float | None = None, enabled: bool = True,
                pids: int | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The spec's `jail` part for `mm run` options (RunOptions.vcpus, .memory_mib,
    .cpu_quota, .no_jail, .pids_limit): what the CLI writes into spec.json.

    `cpus` is the VMM's CPU-time limit, None (the default) for none: the vCPU count alone
    does not set one (see "CPU time" in the module doc).

    The memory limit is guest RAM + DEFAULT_MEMORY_OVERHEAD unless MM_JAIL_MEMORY (a
    size: 300m, 1g) in `env` (default: ours) says otherwise. That knob is for testing the
    OOM path (tests/e2e/test_jail.py sets it below guest RAM, so a guest touching all its
    memory gets the VMM OOM-killed) and for overcommit experiments; it is not a `mm run`
    option because below guest RAM it trades a guest's memory for a kill, which a user
    should not meet by accident. It is written into the spec, so `mm inspect` shows it
    under config.worker.jail and a restart keeps it."""
    env = os.environ if env is None else env
    memory = memory_mib * MiB + DEFAULT_MEMORY_OVERHEAD
    if env.get(MEMORY_ENV):
        memory = _memory_from_env(env[MEMORY_ENV])
    return JailSpec(enabled=enabled, cpus=cpus, memory=memory,
                    pids=pids if pids is not None else vcpus + PIDS_OVERHEAD).to_dict()


def _memory_from_env(text: str) -> int:
    from vmm.errors import ConfigError, UsageError
    from vmm.machines.options import parse_size

    try:
        memory = parse_size(text, MEMORY_ENV)
    except UsageError as exc:
        raise ConfigError(exc.message, f"{exc.hint}; or unset {MEMORY_ENV}") from None
    if memory < 16 * MiB:
        raise ConfigError(f"{MEMORY_ENV}={text} is below the 16 MiB the VMM needs",
                          f"give e.g. {MEMORY_ENV}=300m, or unset it")
    return memory
