"""Resource limits for one VMM: a cgroup per machine, on cgroup v2 or v1 (detected).

    cg = MachineCgroup.create(machine_id, cpus=None, memory=768 << 20, pids=66)  # before the fork
    pid, why = cg.fork_into()  # v2: fork the VMM straight into it ((None, why): not possible here)
    tasks = cg.place(pid, born_inside=...)  # else put it in, before it allocates guest RAM
                       # (memory is charged to the cgroup of the thread that first touches it)
    cg.limits()        # read back from the cgroup files
    cg.oom_kills()     # how often the kernel's OOM killer struck inside it
    cg.remove()        # by the supervisor, once the VMM has been reaped

Getting the VMM in, the cheapest way each version allows (`place`, `fork_into`):
The supervisor makes the cgroup before it forks the VMM (~0.5 ms), so the VMM never
waits for it, then:
- v1: the VMM moves its own single thread by writing "0" to each hierarchy's `tasks`
  (vmm.jail.supervisor.join_cgroup), the one move that skips the kernel's threadgroup
  lock and its RCU grace periods (5-15 ms each on this host);
- v2 has no such move (cgroup.threads cannot cross domains): the VMM is born in it
  (clone3 with CLONE_INTO_CGROUP, Linux >= 5.7).
  Where the kernel refuses that, the supervisor forks as usual and attaches the VMM
  through cgroup.procs (the slow move, but a correct one), and worker.log says so.

Layout: `<v2 root>/mm/<id12>` with cpu, memory and pids enabled in the subtree, or on
v1 `<controller mount>/mm/<id12>` in each of the cpu, memory and pids hierarchies.
CPU is a CFS quota of `cpus` CPUs per 100 ms period over all the VMM's threads (vCPUs
and device I/O alike), or none ("max", v1 -1) when `cpus` is None, the default: the
vCPU count bounds the guest, and a quota would throttle the guest by the I/O threads
that serve it (vmm.jail.config, "CPU time"). The cpu controller is enabled either way,
so the machine's CPU use is accounted (cpu.stat). Memory is a hard limit (guest RAM +
the VMM's overhead; on v2 with memory.oom.group so an OOM kill takes the whole VMM,
never one thread), pids the most tasks (threads). Only the VMM is
inside; the supervisor stays outside, so it can report an OOM kill.

What a user sees: a workload asking for more memory than `--memory` meets the guest
kernel's own OOM killer (the guest has no more RAM than that), and the machine runs on.
The cgroup's limit is `--memory` + the VMM's overhead (256 MiB), so it is reached only
when the VMM itself grows past its overhead, or when MM_JAIL_MEMORY (vmm.jail.config)
set it below guest RAM and the guest touches more than that. The kernel then kills the
whole VMM (the guest RAM it holds cannot be reclaimed without swap), and the machine is
recorded as exited with reason "oom", exit code 137 (128 + SIGKILL, Docker's
"OOMKilled" code) and "killed by the kernel's OOM killer: the VMM reached its memory
limit of N MiB ..." (`mm ps -a`, `mm inspect`); an attached `mm run` prints
"mm: machine NAME ended by oom: ..." and exits 137. tests/e2e/test_jail.py provokes it.
"""
from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from vmm.jail.errors import JailError

ROOT = "/sys/fs/cgroup"
CONTROLLERS = ("cpu", "memory", "pids")
PERIOD_US = 100_000
PARENT = "mm"


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, super options) of every cgroup mount, from mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, superopts = (right.split() + ["", "", ""])[:3]
            if fstype in ("cgroup", "cgroup2"):
                out.append((left.split()[4], fstype, set(superopts.split(","))))
    return out


def detect() -> tuple[int, dict[str, Path]]:
    """(version, {controller: hierarchy root}) for cpu, memory and pids. v2 when the
    unified hierarchy offers all three (a hybrid host's unified mount offers none)."""
    mounts = _mounts()
    for point, fstype, _ in mounts:
        if fstype == "cgroup2":
            try:
                offered = set(Path(point, "cgroup.controllers").read_text().split())
            except OSError:
                continue
            if offered.issuperset(CONTROLLERS):
                return 2, {c: Path(point) for c in CONTROLLERS}
    v1 = {c: Path(point) for c in CONTROLLERS for point, fstype, opts in mounts if fstype == "cgroup" and c in opts}
    missing = [c for c in CONTROLLERS if c not in v1]
    if missing:
        raise JailError(f"no cgroup hierarchy offers the {', '.join(missing)} controller(s)",
                        "mount cgroup2 on /sys/fs/cgroup (or the v1 controllers)")
    return 1, v1


def write_file(path, data: bytes) -> None:
    """One open and one write(2), no io layer (fstat, ioctl, seeks): cgroup files are
    written before the VMM's fork (v2) and by the VMM on its way to its first KVM_RUN
    (v1's `tasks`, vmm.jail.supervisor.join_cgroup). OSError as the kernel says it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _write(path: Path, value: str) -> None:
    try:
        write_file(path, value.encode())
    except OSError as exc:
        raise JailError(f"cannot write {value.strip()!r} to {path}: {exc.strerror}",
                        "mm needs root to set resource limits") from None


class MachineCgroup:
    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version = version
        self.dirs = dirs  # controller -> this machine's directory (one shared dir on v2)

    @classmethod
    def for_machine(cls, machine_id: str) -> "MachineCgroup":
        version, roots = detect()
        return cls(version, {c: roots[c] / PARENT / machine_id[:12] for c in CONTROLLERS})

    @classmethod
    def create(cls, machine_id: str, cpus: float | None, memory: int | None, pids: int) -> "MachineCgroup":
        cg = cls.for_machine(machine_id)
        cg.remove()  # a previous start's worker may have been killed before it cleaned up
        for d in cg.unique_dirs():
            if cg.version == 2:
                _write(d.parent.parent / "cgroup.subtree_control", "+cpu +memory +pids")
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise JailError(f"cannot create cgroup {d}: {exc.strerror}", "mm needs root") from None
            if cg.version == 2:
                _write(d.parent / "cgroup.subtree_control", "+cpu +memory +pids")
        cg._set(cpus, memory, pids)
        return cg

    def unique_dirs(self) -> list[Path]:
        return list(dict.fromkeys(self.dirs.values()))

    def _set(self, cpus: float | None, memory: int | None, pids: int) -> None:
        quota = None if cpus is None else max(1000, round(cpus * PERIOD_US))
        if self.version == 2:
            d = self.dirs["cpu"]
            _write(d / "cpu.max", f"{'max' if quota is None else quota} {PERIOD_US}")
            _write(d / "memory.max", str(memory) if memory is not None else "max")
            _write(d / "memory.oom.group", "1")
            _write(d / "pids.max", str(pids))
        else:
            _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(PERIOD_US))
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", "-1" if quota is None else str(quota))
            _write(self.dirs["memory"] / "memory.limit_in_bytes", str(memory) if memory is not None else "-1")
            _write(self.dirs["pids"] / "pids.max", str(pids))

    def attach(self, pid: int) -> None:
        """Move process `pid` (all its threads: cgroup.procs) in."""
        for d in self.unique_dirs():
            _write(d / "cgroup.procs", str(pid))

    def fork_into(self) -> tuple[int | None, str]:
        """Fork, the child born in this (v2) cgroup: (0 in the child or the child's pid,
        ""), or (None, why) with nothing forked when it cannot be done here (v1, or the
        kernel refuses clone3 into it); call with one thread only."""
        from vmm.jail import libc

        if self.version != 2:
            return None, "cgroup v1"
        try:
            fd = os.open(self.dirs["cpu"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            return None, f"cannot open {self.dirs['cpu']}: {exc.strerror}"
        try:
            return libc.fork_into_cgroup(fd), ""
        except OSError as exc:
            return None, f"clone3 into the cgroup refused ({exc.strerror or exc})"
        finally:
            os.close(fd)

    def place(self, pid: int, born_inside: bool = False) -> list[str]:
        """Put the just-forked VMM `pid` in (see "Getting the VMM in" above); the `tasks`
        files the VMM writes "0" to itself (v1), none on v2: born inside (`fork_into`),
        or attached here now."""
        if self.version == 1:
            return [str(d / "tasks") for d in self.unique_dirs()]
        if not born_inside:
            self.attach(pid)
        return []

    def limits(self) -> dict[str, float | int | None]:
        """{"cpus": CPUs of quota or None, "memory": bytes or None, "pids": int or None}."""
        def num(text: str, unlimited: tuple[str, ...]) -> int | None:
            text = text.strip()
            return None if text in unlimited else int(text)

        if self.version == 2:
            d = self.dirs["cpu"]
            quota, period = (d / "cpu.max").read_text().split()
            memory = num((d / "memory.max").read_text(), ("max",))
            pids = num((d / "pids.max").read_text(), ("max",))
        else:
            quota = (self.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip()
            period = (self.dirs["cpu"] / "cpu.cfs_period_us").read_text()
            memory = num((self.dirs["memory"] / "memory.limit_in_bytes").read_text(), ("9223372036854771712",))
            pids = num((self.dirs["pids"] / "pids.max").read_text(), ("max",))
        cpus = None if quota in ("max", "-1") else int(quota) / int(period)
        return {"cpus": cpus, "memory": memory, "pids": pids}

    def oom_kills(self) -> int:
        """OOM kills inside this cgroup so far (0 when the kernel does not say)."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = (self.dirs["memory"] / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self, wait: float = 2.0) -> None:
        """rmdir this machine's cgroup(s); the kernel refuses while a task is inside, and
        a just-reaped VMM may take a moment to leave (EBUSY), so retry briefly."""
        deadline = time.monotonic() + wait
        for d in self.unique_dirs():
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise JailError(f"cannot remove cgroup {d}: {exc.strerror}") from None
                    time.sleep(0.01)


def unified_root() -> bool:
    """Whether /sys/fs/cgroup is the cgroup v2 root (a pure v2 host: where it pays to make
    the cgroup before the VMM's fork, so it can be born in it). One stat; `detect` is
    the authority, and on a hybrid host says v1."""
    return os.path.exists(f"{ROOT}/cgroup.controllers")


def remove_stale(min_age: float = 60.0) -> list[Path]:
    """Remove machine cgroups left by supervisors that were killed (SIGKILL leaves no
    chance to clean up): empty ones created more than `min_age` seconds ago. The kernel
    refuses to remove a cgroup with a task in it, and a live VMM is moved into its
    cgroup milliseconds after it is made, so this never takes a live machine's. Called
    by every supervisor on its way out, and fit for `mm system prune`."""
    try:
        _, roots = detect()
    except JailError:
        return []
    removed, now = [], time.time()
    for root in dict.fromkeys(roots.values()):
        try:
            entries = list((root / PARENT).iterdir())
        except FileNotFoundError:
            continue
        for d in entries:
            try:
                if now - d.stat().st_mtime > min_age:
                    d.rmdir()
                    removed.append(d)
            except OSError:
                pass  # in use (EBUSY), or gone already
    return removed
