"""The jailed VMM's seccomp allowlist: one table per thread role, every rule with its reason.

Anything not listed is denied: the kernel stops the calling thread and notifies the
supervisor, which kills the VMM and records the call (see vmm.jail.seccomp). A rule
either allows a syscall outright, allows it only for listed values of one argument
(`allow_if`: ioctl requests, socket families), allows it when the argument has some bits
set and others clear (`allow_masked`: clone flags), or makes it fail with an errno
(`refuse`) where the C library is known to try it and fall back.

Roles are the kinds of threads the VMM has: `runtime` (what the Python interpreter and
glibc do on any thread), `loop` (the event loop: control API, console, exec bridges,
VM start and stop, snapshots), `vcpu` (KVM_RUN and the device emulation that runs on
vCPU exits), `device` (device I/O threads: block, net, vsock backends) and `memory`
(snapshot restore and live branch: userfaultfd and memfd). Python threads all run the
same interpreter and device code can run on any of them, so the filter installed on
the whole VMM is the union of the roles (`process_rules()`); a thread that wants less
can stack its own role's filter on top with `vmm.jail.seccomp.restrict_thread(role)`.

What is deliberately absent: execve/execveat, fork/vfork and clone without
CLONE_THREAD (no new programs or processes), ptrace and process_vm_*, socket() of any
family but AF_UNIX (the jail's network namespace is empty, and this closes the rest),
bind/listen (every listener exists before the jail), mount/pivot_root/chroot/unshare/
setns, set*uid/set*gid/capset, seccomp/prctl, bpf, perf_event_open, keyctl, io_uring,
module and kexec calls, and every ioctl not in vmm.jail.ioctls.
"""
from __future__ import annotations

import errno
import fcntl
import socket
from collections import namedtuple

from vmm.jail import ioctls
from vmm.jail.libc import CONSTANTS as K


# A namedtuple, not typing.NamedTuple: the jailed VMM imports this module before its
# first KVM_RUN, and typing costs ~4 ms of import time there.
Rule = namedtuple("Rule", [
    "syscall",   # str
    "why",       # str
    "action",    # str: allow | errno
    "arg",       # int | None: index of the checked argument
    "values",    # tuple[int, ...]: allow_if: allowed values of that argument
    "mask",      # int: allow_masked: (arg & mask) == value
    "value",     # int
    "names",     # tuple[str, ...]: names of `values` (ioctl requests), for reports and tests
    "errno",     # int
], defaults=("allow", None, (), 0, 0, (), 0))


def allow(syscall: str, why: str) -> Rule:
    return Rule(syscall, why)


def allow_if(syscall: str, arg: int, values: dict[str, int], why: str) -> Rule:
    return Rule(syscall, why, arg=arg, values=tuple(values.values()), names=tuple(values))


def allow_masked(syscall: str, arg: int, mask: int, value: int, why: str) -> Rule:
    return Rule(syscall, why, arg=arg, mask=mask, value=value)


def refuse(syscall: str, err: int, why: str) -> Rule:
    return Rule(syscall, why, action="errno", errno=err)


_NAMESPACES = sum(K[n] for n in ("CLONE_NEWNS", "CLONE_NEWCGROUP", "CLONE_NEWUTS", "CLONE_NEWIPC",
                                 "CLONE_NEWUSER", "CLONE_NEWPID", "CLONE_NEWNET", "CLONE_NEWTIME"))
_AF_UNIX = {"AF_UNIX": socket.AF_UNIX}


def _fcntl(*names: str) -> dict[str, int]:
    return {n: getattr(fcntl, n) for n in names}

RUNTIME: tuple[Rule, ...] = (
    allow("read", "fds, pipes, eventfds, files; CPython's own reads"),
    allow("write", "console.log, worker.log (stderr), the loop's wake-up pipe, eventfds"),
    allow("close", "every fd the VMM lets go of"),
    allow("lseek", "file offsets (the console log replay, imports)"),
    allow("fstat", "CPython stats every fd it wraps in a file object"),
    allow("newfstatat", "stat() of paths inside the cell (imports, os.path checks)"),
    allow("statx", "glibc's stat() on newer kernels"),
    allow("openat", "files inside the cell only: lazy imports, /proc/self/status; the cell, not "
                    "seccomp, decides what exists"),
    allow("getdents64", "the import system lists package directories"),
    allow("readlink", "os.path.realpath of code paths"),
    allow("getcwd", "os.getcwd / os.path.abspath"),
    allow("mmap", "the allocator, thread stacks, guest RAM views; PROT_EXEC stays allowed: "
                  "importing an extension module maps its code"),
    allow("munmap", "the allocator, thread stacks"),
    allow("mprotect", "thread stack guard pages, the dynamic loader"),
    allow("mremap", "the allocator growing large blocks"),
    allow("madvise", "the allocator returning memory; MADV_DONTNEED/REMOVE for balloon and restore"),
    allow("brk", "the allocator"),
    allow("futex", "the GIL, locks, conditions, thread joins"),
    allow("set_robust_list", "glibc, at every thread start"),
    allow("rseq", "glibc, at every thread start"),
    allow_masked("clone", 0, K["CLONE_THREAD"] | _NAMESPACES, K["CLONE_THREAD"],
                 "threads only: CLONE_THREAD set and no namespace flag (no new process)"),
    refuse("clone3", errno.ENOSYS, "glibc tries clone3 first and falls back to clone on ENOSYS; "
                                   "clone3's flags sit in memory where seccomp cannot see them"),
    allow("exit", "a thread ends"),
    allow("exit_group", "the VMM ends"),
    allow("rt_sigaction", "signal handlers (the vCPU kick signal)"),
    allow("rt_sigprocmask", "glibc blocks signals around thread creation"),
    allow("rt_sigreturn", "returning from a signal handler"),
    allow("sigaltstack", "CPython's and glibc's signal stacks"),
    allow("restart_syscall", "a syscall interrupted by the kick signal resumes"),
    allow("tgkill", "pthread_kill: kicking vCPU threads out of KVM_RUN; the VMM is alone in its "
                    "PID namespace, so it can signal only itself"),
    allow("getpid", "CPython and glibc ask often"),
    allow("gettid", "threading.get_native_id, glibc"),
    allow("getuid", "harmless identity queries"),
    allow("geteuid", "harmless identity queries"),
    allow("getgid", "harmless identity queries"),
    allow("getegid", "harmless identity queries"),
    allow("getrandom", "os.urandom, hash seeds, secrets"),
    allow("clock_gettime", "time.monotonic/time.time when the vDSO falls back to the syscall"),
    allow("clock_getres", "time.get_clock_info"),
    allow("gettimeofday", "glibc time fallback"),
    allow("clock_nanosleep", "time.sleep, the tiny guest's halt naps"),
    allow("nanosleep", "time.sleep on older glibc"),
    allow("sched_yield", "glibc spin locks"),
    allow("sched_getaffinity", "os.sched_getaffinity / os.cpu_count"),
    allow("getrusage", "the stats op reports the worker's CPU time"),
    allow("sysinfo", "glibc's get_phys_pages"),
    allow("uname", "platform queries"),
    allow_if("ioctl", 1, ioctls.TERMINAL, "CPython's isatty (io.open), setblocking, set_inheritable"),
    allow_if("fcntl", 1, _fcntl("F_GETFD", "F_SETFD", "F_GETFL", "F_SETFL", "F_DUPFD_CLOEXEC"),
             "fd and status flags (O_NONBLOCK, FD_CLOEXEC), dup; not locks, leases or owners"),
    allow("dup", "os.dup of a stream handed over"),
    allow("dup3", "os.dup2 (glibc makes dup2 a dup3)"),
)

LOOP: tuple[Rule, ...] = (
    allow("epoll_create1", "selectors.DefaultSelector"),
    allow("epoll_ctl", "registering fds with the loop"),
    allow("epoll_wait", "the loop waits"),
    allow("epoll_pwait", "the loop waits (glibc's epoll_wait on some kernels)"),
    allow("poll", "select.poll in device and helper threads"),
    allow("ppoll", "glibc poll"),
    allow("pselect6", "select.select"),
    allow("pipe2", "wake-up pipes"),
    allow("eventfd2", "device notification eventfds created at activation"),
    allow("accept4", "control API clients, host-initiated vsock streams"),
    allow_if("socket", 0, _AF_UNIX, "AF_UNIX only: exec bridges to the vsock socket, guest-initiated "
                                    "vsock streams to <socket>_PORT"),
    allow_if("socketpair", 0, _AF_UNIX, "AF_UNIX only: in-process stream pairs"),
    allow("connect", "to Unix sockets inside the cell (the machine directory)"),
    allow("sendto", "socket writes (send/sendall)"),
    allow("recvfrom", "socket reads (recv)"),
    allow("sendmsg", "SCM_RIGHTS: the exec stream handed to the client; the supervisor channel"),
    allow("recvmsg", "the supervisor channel"),
    allow("shutdown", "half-closing vsock streams"),
    allow("getsockname", "CPython's socket.accept"),
    allow("getpeername", "socket diagnostics"),
    allow("getsockopt", "SO_ERROR after a non-blocking connect"),
    allow("setsockopt", "buffer sizes, timeouts"),
    allow("unlink", "removing our sockets at the end; the cell is read-only, so the kernel refuses "
                    "with EROFS and the supervisor removes them"),
    allow("unlinkat", "unlink relative to a directory fd; refused by the cell as unlink is"),
    allow_if("ioctl", 1, ioctls.kvm(ioctls.KVM_SYSTEM + ioctls.KVM_VM + ioctls.KVM_VCPU),
             "KVM: creating and configuring vCPUs at start, reading and writing VM and vCPU "
             "state for pause and snapshot"),
)

VCPU: tuple[Rule, ...] = (
    allow_if("ioctl", 1, ioctls.kvm(("KVM_RUN", "KVM_IRQ_LINE", "KVM_GET_REGS", "KVM_SET_REGS",
                                     "KVM_GET_SREGS", "KVM_SET_SREGS")),
             "KVM_RUN, interrupts raised by emulated devices, registers for exit details"),
    allow_if("ioctl", 1, ioctls.TUN, "virtio-net sets vnet header size and offloads when the "
                                     "guest activates it (on a vCPU thread)"),
)

DEVICE: tuple[Rule, ...] = (
    allow("pread64", "virtio-block reads"),
    allow("pwrite64", "virtio-block writes"),
    allow("preadv", "virtio-block scatter reads"),
    allow("pwritev", "virtio-block scatter writes"),
    allow("preadv2", "virtio-block scatter reads (glibc's preadv on this kernel)"),
    allow("pwritev2", "virtio-block scatter writes (glibc's pwritev on this kernel)"),
    allow("readv", "TAP reads into several buffers"),
    allow("writev", "TAP writes (vnet header + frame)"),
    allow("fdatasync", "virtio-block flush"),
    allow("fsync", "virtio-block flush"),
    allow("fallocate", "virtio-block discard / write-zeroes (punch hole)"),
    allow("timerfd_create", "device rate limiters and timers"),
    allow("timerfd_settime", "device rate limiters and timers"),
    allow("timerfd_gettime", "device rate limiters and timers"),
)

MEMORY: tuple[Rule, ...] = (
    allow("userfaultfd", "lazy snapshot restore and live branch (user-mode faults; kernel-mode "
                         "ones need a /dev/userfaultfd fd opened before the jail)"),
    allow_if("ioctl", 1, ioctls.USERFAULTFD, "UFFDIO_*: register, copy, zero, write-protect, "
                                            "continue, move, wake; USERFAULTFD_IOC_NEW"),
    allow("memfd_create", "guest RAM of a branch or restore"),
    allow("ftruncate", "sizing a memfd"),
    allow_if("fcntl", 1, _fcntl("F_ADD_SEALS", "F_GET_SEALS"), "sealing a shared memfd"),
    allow("mincore", "which pages of a mapping are resident (snapshot diffs)"),
)

ROLES: dict[str, tuple[Rule, ...]] = {
    "runtime": RUNTIME, "loop": LOOP, "vcpu": VCPU, "device": DEVICE, "memory": MEMORY,
}


def role_rules(role: str) -> tuple[Rule, ...]:
    """What a thread of `role` needs: the runtime's rules plus its own."""
    if role not in ROLES:
        raise KeyError(f"unknown thread role {role!r}; roles: {', '.join(ROLES)}")
    return RUNTIME if role == "runtime" else RUNTIME + ROLES[role]


def process_rules() -> tuple[Rule, ...]:
    """The union of every role: the filter installed on the whole VMM at the jail."""
    return tuple(rule for rules in ROLES.values() for rule in rules)
