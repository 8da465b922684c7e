"""The system calls the jail makes that Python's `os` module lacks, through libc (ctypes).

unshare, setns, mount, umount2, pivot_root, prctl, capget/capset, seccomp, and clone3 for
a fork straight into a cgroup (`fork_into_cgroup`). Every constant
here carries its C name and tests/unit/jail/test_constants.py checks each against the
C headers with gcc, so none can drift. Failures raise `OSError` with the errno; the
callers turn them into a `JailError` naming the step.
"""
from __future__ import annotations

import ctypes as C
import os

_libc = C.CDLL(None, use_errno=True)

# <linux/sched.h>: namespaces for unshare(2), and the clone flags the seccomp policy checks.
CONSTANTS: dict[str, int] = {
    "CLONE_VM": 0x00000100, "CLONE_FS": 0x00000200, "CLONE_FILES": 0x00000400,
    "CLONE_SIGHAND": 0x00000800, "CLONE_PTRACE": 0x00002000, "CLONE_VFORK": 0x00004000,
    "CLONE_PARENT": 0x00008000, "CLONE_THREAD": 0x00010000, "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000, "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000, "CLONE_NEWNET": 0x40000000,
    "CLONE_NEWTIME": 0x00000080, "CLONE_CHILD_SETTID": 0x01000000, "CLONE_INTO_CGROUP": 0x200000000,
    # <sys/mount.h>
    "MS_RDONLY": 1, "MS_NOSUID": 2, "MS_NODEV": 4, "MS_NOEXEC": 8, "MS_REMOUNT": 32,
    "MS_BIND": 4096, "MS_REC": 16384, "MS_PRIVATE": 1 << 18, "MNT_DETACH": 2,
    # <linux/prctl.h>
    "PR_SET_PDEATHSIG": 1, "PR_SET_DUMPABLE": 4, "PR_CAPBSET_DROP": 24,
    "PR_SET_NO_NEW_PRIVS": 38, "PR_GET_NO_NEW_PRIVS": 39, "PR_CAP_AMBIENT": 47,
    "PR_CAP_AMBIENT_CLEAR_ALL": 4,
    # <linux/capability.h>
    "_LINUX_CAPABILITY_VERSION_3": 0x20080522,
    # <linux/seccomp.h>
    "SECCOMP_SET_MODE_FILTER": 1, "SECCOMP_FILTER_FLAG_NEW_LISTENER": 8,
    # <sys/syscall.h> (x86-64): the calls glibc 2.36 has no wrapper for
    "SYS_pivot_root": 155, "SYS_seccomp": 317, "SYS_capset": 126, "SYS_capget": 125, "SYS_clone3": 435,
}
globals().update(CONSTANTS)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = C.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


_libc.syscall.restype = C.c_long
_libc.mount.argtypes = [C.c_char_p, C.c_char_p, C.c_char_p, C.c_ulong, C.c_char_p]
_libc.umount2.argtypes = [C.c_char_p, C.c_int]
_libc.unshare.argtypes = [C.c_int]
_libc.setns.argtypes = [C.c_int, C.c_int]
_libc.prctl.argtypes = [C.c_int, C.c_ulong, C.c_ulong, C.c_ulong, C.c_ulong]


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def new_netns() -> int:
    """A new, empty network namespace, open as an fd, while the caller (one thread only)
    stays in its own: the VMM enters it with setns at its jail, which costs it ~0.1 ms
    where making one costs ~0.7 ms (the kernel sets up loopback, sysctls, nf tables)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare(CLONE_NEWNET)
        try:
            return os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            setns(own, CLONE_NEWNET)
    finally:
        os.close(own)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(_libc.mount(enc(source), target.encode(), enc(fstype), flags, enc(data)), f"mount {target}")


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(C.c_long(SYS_pivot_root), new_root.encode(), put_old.encode()), "pivot_root")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


class _CapHeader(C.Structure):
    _fields_ = [("version", C.c_uint32), ("pid", C.c_int)]


class _CapData(C.Structure):
    _fields_ = [("effective", C.c_uint32), ("permitted", C.c_uint32), ("inheritable", C.c_uint32)]


def clear_capabilities() -> None:
    """Empty this thread's effective, permitted and inheritable sets (capset, v3: 2 words)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(C.c_long(SYS_capset), C.byref(header), data), "capset")


def capabilities() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this thread as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(C.c_long(SYS_capget), C.byref(header), data), "capget")
    join = (lambda f: getattr(data[0], f) | getattr(data[1], f) << 32)
    return join("effective"), join("permitted"), join("inheritable")


class _SockFprog(C.Structure):
    _fields_ = [("len", C.c_ushort), ("filter", C.c_void_p)]


def load_seccomp(bpf: bytes, flags: int) -> int:
    """Install a classic-BPF seccomp program on this thread; the listener fd with
    SECCOMP_FILTER_FLAG_NEW_LISTENER, else 0. no_new_privs must be set already."""
    if len(bpf) % 8:
        raise ValueError("a BPF program is a whole number of 8-byte instructions")
    buf = C.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, C.cast(buf, C.c_void_p))
    return _check(_libc.syscall(C.c_long(SYS_seccomp), C.c_uint(SECCOMP_SET_MODE_FILTER),
                                C.c_uint(flags), C.byref(prog)), "seccomp")


class _CloneArgs(C.Structure):
    """struct clone_args (<linux/sched.h>, CLONE_ARGS_SIZE_VER2: up to `cgroup`)."""

    _fields_ = [(name, C.c_uint64) for name in ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal",
                                                 "stack", "stack_size", "tls", "set_tid", "set_tid_size",
                                                 "cgroup")]


# Called with the GIL held (PyDLL, not CDLL): the child of a raw clone3 starts holding it,
# as the child of os.fork() does, and PyOS_AfterFork_Child() expects exactly that.
_pylibc = C.PyDLL(None, use_errno=True)
_pylibc.syscall.restype = C.c_long
_pylibc.pthread_self.restype = C.c_void_p
_python = C.pythonapi


def _tid_slot() -> int:
    """The address of glibc's cached thread id in the calling thread's descriptor (what
    fork() has the kernel fill in for the child, CLONE_CHILD_SETTID: glibc reads it for
    mutex ownership and errorcheck locks); 0 if it cannot be found for certain."""
    import threading

    base, tid = _pylibc.pthread_self(), threading.get_native_id()
    words = (C.c_int32 * 256).from_address(base)  # the first 1 KiB; the descriptor is larger
    hits = [i for i in range(256) if words[i] == tid]
    return base + 4 * hits[0] if len(hits) == 1 else 0


def fork_into_cgroup(cgroup_fd: int) -> int:
    """os.fork(), the child born in the cgroup v2 directory open as `cgroup_fd` (clone3
    with CLONE_INTO_CGROUP, Linux >= 5.7): no migration afterwards, so none of the
    cgroup.procs write's waits for RCU grace periods. The same bookkeeping as os.fork
    (PyOS_BeforeFork / AfterFork_*: at-fork hooks, the import lock, thread states);
    call it with one thread only (as the supervisor is), since glibc's own at-fork work
    is not done. 0 in the child, its pid in the parent; OSError (nothing forked) if the
    kernel refuses: ENOSYS, E2BIG or EINVAL before 5.7, EBADF/EOPNOTSUPP/EBUSY for a
    directory that is not a usable cgroup v2 one."""
    slot = _tid_slot()
    if not slot:
        raise OSError(0, "cannot find glibc's thread id slot")
    args = _CloneArgs(flags=CLONE_INTO_CGROUP | CLONE_CHILD_SETTID, child_tid=slot,
                      exit_signal=17, cgroup=cgroup_fd)  # SIGCHLD, as fork()
    _python.PyOS_BeforeFork()
    pid = _pylibc.syscall(C.c_long(SYS_clone3), C.byref(args), C.c_size_t(C.sizeof(args)))
    err = C.get_errno()
    if pid == 0:
        _python.PyOS_AfterFork_Child()
        return 0
    _python.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, os.strerror(err))
    return pid
