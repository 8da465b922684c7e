"""The seccomp policy tables themselves: reasons, names, what is absent, argument filters."""
from __future__ import annotations

import socket
import termios

import pyseccomp as sc
import pytest

from devices.virtio.net import tap
from vmm.jail import ioctls, policy, seccomp
from vmm.jail.libc import CONSTANTS as K
from vmm.kvm.abi import IOCTLS as KVM

ALL = policy.process_rules()

# Calls a VMM that a guest has taken over must not make, whatever its arguments.
FORBIDDEN = (
    "execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "setuid", "setgid", "setreuid",
    "setregid", "setresuid", "setresgid", "setgroups", "capset", "seccomp", "prctl", "bpf",
    "perf_event_open", "keyctl", "add_key", "request_key", "io_uring_setup", "init_module",
    "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon",
    "bind", "listen", "kill", "personality", "mknodat", "chmod", "fchmod", "fchmodat", "chown",
    "fchown", "fchownat", "link", "linkat", "symlink", "symlinkat", "rename", "renameat2",
    "mkdir", "mkdirat", "open_by_handle_at", "name_to_handle_at", "userfaultfd_x", "iopl", "ioperm",
    "pidfd_open", "pidfd_getfd", "move_mount", "fsopen", "fsmount", "open_tree", "quotactl",
    "acct", "settimeofday", "clock_settime", "adjtimex", "sethostname", "setdomainname",
)


def _rules(syscall: str) -> list[policy.Rule]:
    return [r for r in ALL if r.syscall == syscall]


def test_every_rule_says_why():
    for rule in ALL:
        assert len(rule.why) >= 8, rule  # a reason, not a placeholder


def test_every_syscall_name_exists_on_this_architecture():
    for rule in ALL:
        assert sc.resolve_syscall(sc.Arch.NATIVE, rule.syscall) >= 0, rule.syscall


@pytest.mark.parametrize("syscall", [s for s in FORBIDDEN if not s.endswith("_x")])
def test_forbidden_calls_are_absent(syscall):
    assert not _rules(syscall), f"{syscall} must not be in the allowlist"


def test_sockets_only_of_the_unix_family():
    for name in ("socket", "socketpair"):
        rules = _rules(name)
        assert rules and all(r.arg == 0 and r.values == (socket.AF_UNIX,) for r in rules)


def test_clone_only_makes_threads():
    (rule,) = _rules("clone")
    assert rule.arg == 0 and rule.value == K["CLONE_THREAD"]
    for flag in ("CLONE_THREAD", "CLONE_NEWNS", "CLONE_NEWPID", "CLONE_NEWUSER", "CLONE_NEWNET",
                 "CLONE_NEWIPC", "CLONE_NEWUTS", "CLONE_NEWCGROUP", "CLONE_NEWTIME"):
        assert rule.mask & K[flag], flag
    glibc_thread = sum(K[f] for f in ("CLONE_VM", "CLONE_FS", "CLONE_FILES", "CLONE_SIGHAND", "CLONE_THREAD"))
    assert glibc_thread & rule.mask == rule.value
    (clone3,) = _rules("clone3")
    assert clone3.action == "errno" and clone3.errno == 38  # ENOSYS: glibc falls back to clone


def test_ioctl_requests_come_from_our_tables_by_name():
    known = {**KVM, **ioctls.TUN, **ioctls.TERMINAL, **ioctls.USERFAULTFD}
    allowed = {}
    for rule in _rules("ioctl"):
        assert rule.arg == 1 and len(rule.names) == len(rule.values)
        allowed.update(zip(rule.names, rule.values))
    assert all(known[name] == number for name, number in allowed.items())
    assert ioctls.TUN == {"TUNSETVNETHDRSZ": tap.TUNSETVNETHDRSZ, "TUNSETOFFLOAD": tap.TUNSETOFFLOAD}
    assert allowed["TCGETS"] == termios.TCGETS and allowed["KVM_RUN"] == KVM["KVM_RUN"]
    for name in ("KVM_CREATE_VM", "KVM_CREATE_IRQCHIP", "KVM_CREATE_PIT2", "KVM_SET_TSS_ADDR"):
        assert name not in allowed, f"{name} is done once, before the jail"
    for number in (tap.TUNSETIFF, termios.TIOCSTI, termios.TIOCSCTTY, seccomp.SECCOMP_IOCTL_NOTIF_RECV):
        assert number not in allowed.values()


def test_future_memory_work_is_allowed():
    """Snapshot restore and live branch (userfaultfd, memfd) must stay possible in the jail."""
    names = {r.syscall for r in ALL}
    assert {"userfaultfd", "memfd_create", "mmap", "eventfd2", "madvise", "ftruncate"} <= names
    uffd = set(ioctls.USERFAULTFD)
    assert {"UFFDIO_API", "UFFDIO_REGISTER", "UFFDIO_COPY", "UFFDIO_WRITEPROTECT", "UFFDIO_CONTINUE"} <= uffd
    allowed = {n for r in _rules("ioctl") for n in r.names}
    assert uffd <= allowed


def test_roles_and_their_union():
    assert set(policy.ROLES) == {"runtime", "loop", "vcpu", "device", "memory"}
    for role in policy.ROLES:
        rules = policy.role_rules(role)
        assert rules[: len(policy.RUNTIME)] == policy.RUNTIME
    assert set(ALL) == {r for rules in policy.ROLES.values() for r in rules}
    assert "KVM_RUN" in {n for r in policy.VCPU for n in r.names}
    assert not {r.syscall for r in policy.VCPU} - {"ioctl"}  # vCPU threads add only ioctls
    with pytest.raises(KeyError):
        policy.role_rules("gpu")


def test_the_tables_compile_to_bpf():
    program = seccomp.process_program()
    assert len(program) % 8 == 0 and 0 < len(program) // 8 < 4096  # the kernel's BPF_MAXINSNS
    for role in policy.ROLES:
        assert len(seccomp.role_program(role)) // 8 < 4096
