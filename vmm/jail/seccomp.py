"""Compiling the policy tables into a seccomp filter, loading it, and reading its reports.

Why a denied call notifies instead of killing outright: a process killed by
SECCOMP_RET_KILL_PROCESS dies by SIGSYS and can say nothing about what it called, and
the kernel's audit line about it is rate-limited and not always on. So the filter's
default action is SECCOMP_RET_USER_NOTIF: the calling thread stops inside the kernel
before the call does anything, and the *supervisor* (the unjailed parent, which holds
the filter's listener fd) reads the syscall number and arguments, kills the VMM with
SIGKILL and records "killed by seccomp: execve (syscall 59)" in the store. The call
never runs. The VMM cannot answer its own notifications: it closes its copy of the
listener right after handing it over, and its ioctl allowlist has no SECCOMP_IOCTL_*.
If the supervisor is gone, the kernel fails notified calls with ENOSYS, and the VMM
has a parent-death signal (SIGKILL) anyway. Calls from a foreign architecture (i386,
x32) kill the process outright.

The filter is built with pyseccomp (libseccomp), exported as classic BPF and loaded
with our own seccomp(2) call so we get the listener fd back (pyseccomp does not expose
it). `restrict_thread(role)` stacks a tighter per-role filter on the calling thread; a
stacked filter cannot have a second listener, so its default is KILL_PROCESS.
"""
from __future__ import annotations

import ctypes as C
import fcntl
import functools
import os
import socket

from vmm.jail import ioctls, libc, policy
from vmm.jail.errors import JailError
from vmm.plain import REQUIRED, Frozen


@functools.lru_cache(maxsize=None)
def _sc():
    """pyseccomp, imported on first use: only compiling a filter or naming a syscall
    needs it, and it pulls in typing and ctypes.util (subprocess, shutil, tempfile):
    ~10 ms that the VMM, which only loads the program the supervisor compiled, skips.

    pyseccomp finds libc and libseccomp with ctypes.util.find_library, which runs
    `ldconfig -p` in a subprocess each time (20-40 ms of every worker's start). Both
    have stable sonames: try those first, and fall back to the real search."""
    import ctypes.util

    search = ctypes.util.find_library
    sonames = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}

    def find_library(name: str):
        soname = sonames.get(name)
        if soname is not None:
            try:
                C.CDLL(soname)
                return soname
            except OSError:
                pass
        return search(name)

    ctypes.util.find_library = find_library
    try:
        import pyseccomp
    finally:
        ctypes.util.find_library = search
    return pyseccomp



class seccomp_data(C.Structure):
    _fields_ = [("nr", C.c_int), ("arch", C.c_uint32), ("instruction_pointer", C.c_uint64),
                ("args", C.c_uint64 * 6)]


class seccomp_notif(C.Structure):
    _fields_ = [("id", C.c_uint64), ("pid", C.c_uint32), ("flags", C.c_uint32), ("data", seccomp_data)]


SECCOMP_IOCTL_NOTIF_RECV = ioctls.ioc(3, ord("!"), 0, C.sizeof(seccomp_notif))


def _add(flt, rule: policy.Rule) -> None:
    sc = _sc()
    action = sc.ALLOW if rule.action == "allow" else sc.ERRNO(rule.errno)
    if rule.arg is None:
        flt.add_rule(action, rule.syscall)
    elif rule.values:
        for value in rule.values:
            flt.add_rule(action, rule.syscall, sc.Arg(rule.arg, sc.EQ, value))
    else:
        flt.add_rule(action, rule.syscall, sc.Arg(rule.arg, sc.MASKED_EQ, rule.mask, rule.value))


def build(rules: tuple[policy.Rule, ...], default: int):
    """A libseccomp filter (pyseccomp.SyscallFilter) for `rules` with `default` for
    everything else."""
    sc = _sc()
    flt = sc.SyscallFilter(default)
    flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    flt.set_attr(sc.Attr.CTL_NNP, 0)  # we set no_new_privs ourselves, before loading
    flt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # a binary tree: O(log n) comparisons per syscall, not O(n)
    for rule in rules:
        try:
            _add(flt, rule)
        except OSError as exc:
            raise JailError(f"seccomp rule for {rule.syscall} was refused by libseccomp: {exc}") from None
    return flt


def to_bpf(flt) -> bytes:
    fd = os.memfd_create("mm-seccomp", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as f:
            flt.export_bpf(f)
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=None)
def process_program() -> bytes:
    """The VMM's filter as BPF: every role's rules, unlisted calls notify the supervisor."""
    return to_bpf(build(policy.process_rules(), _sc().NOTIFY))


@functools.lru_cache(maxsize=None)
def cache_key() -> str:
    """The hash of the policy's rules that names the cached program: once per process,
    and once per fork server (vmm.worker.main.prewarm), not in every supervisor."""
    # _blake2 rather than hashlib: hashlib loads OpenSSL first (~3 ms); same function.
    from _blake2 import blake2b

    return blake2b(repr(policy.process_rules()).encode(), digest_size=16).hexdigest()


def process_program_cached(directory: str) -> bytes:
    """process_program(), kept in `directory` (root's, outside every cell) between
    starts. Compiling takes ~3 ms on a quiet host and over 20 under load, plus
    pyseccomp's import, all while the VMM waits for it; the program is a function of the
    policy's rules alone, and the file is named by their hash. A missing file is
    compiled and written (atomically: a racing start writes the same). The directory
    and file must be ours and writable by nobody else (whoever could write them could
    loosen every VMM's filter): otherwise a JailError says so."""
    path = os.path.join(directory, f"process-{cache_key()}.bpf")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    _check_private(os.stat(directory), directory, directory)
    try:
        with open(path, "rb") as f:
            _check_private(os.fstat(f.fileno()), path, directory)
            program = f.read()
        if program and len(program) % 8 == 0:  # whole sock_filter instructions
            return program
    except FileNotFoundError:
        pass
    program = process_program()
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, program)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return program


def _check_private(st: os.stat_result, path: str, cache: str) -> None:
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise JailError(f"the seccomp filter cache {path} is not private to uid {os.geteuid()}",
                        f"remove {cache} (mm compiles the filter again)")


@functools.lru_cache(maxsize=None)
def role_program(role: str) -> bytes:
    return to_bpf(build(policy.role_rules(role), _sc().KILL_PROCESS))


def install(program: bytes | None = None) -> int:
    """Load the VMM's filter on the calling (only) thread; returns the listener fd, which
    the caller must hand to the supervisor and close. no_new_privs must be set."""
    try:
        return libc.load_seccomp(program or process_program(), libc.SECCOMP_FILTER_FLAG_NEW_LISTENER)
    except OSError as exc:
        raise JailError(f"cannot load the seccomp filter: {exc.strerror}",
                        "needs Linux >= 5.0 with seccomp user notification") from None


def restrict_thread(role: str) -> None:
    """Stack `role`'s own (tighter) filter on the calling thread; denials kill the VMM."""
    try:
        libc.load_seccomp(role_program(role), 0)
    except OSError as exc:
        raise JailError(f"cannot load the {role} seccomp filter: {exc.strerror}") from None


# -- the supervisor's side ------------------------------------------------------------------

class Violation(Frozen):
    """One denied call, as the kernel reported it."""

    FIELDS = {"nr": REQUIRED, "args": REQUIRED, "tid": REQUIRED,  # int, tuple[int, ...], int
              "arch": 0, "ip": 0}

    @property
    def name(self) -> str:
        try:
            sc = _sc()
            return sc.resolve_syscall(sc.Arch.NATIVE, self.nr).decode()
        except Exception:
            return f"syscall_{self.nr}"

    def detail(self) -> str:
        """What was asked, where an argument says more than the number."""
        if self.name == "ioctl":
            return f"ioctl {ioctls.name_of(self.args[1])} on fd {self.args[0]}"
        if self.name in ("socket", "socketpair"):
            try:
                family = socket.AddressFamily(self.args[0]).name
            except ValueError:
                family = str(self.args[0])
            return f"{self.name} of family {family}"
        if self.name == "clone":
            return f"clone with flags {self.args[0]:#x}"
        return self.name

    def text(self) -> str:
        return f"killed by seccomp: {self.detail()} (syscall {self.nr}) on thread {self.tid}"


def receive(listener: int) -> Violation:
    """Read one pending notification (the fd polled readable)."""
    buf = bytearray(C.sizeof(seccomp_notif))
    fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
    n = seccomp_notif.from_buffer(buf)
    return Violation(n.data.nr, tuple(n.data.args), n.pid, n.data.arch, n.data.instruction_pointer)
