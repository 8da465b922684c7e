"""`mm doctor`: what this host can do, one check per line (ok / warn / fail + hint).

File-based checks take `root` so tests can feed a fake /proc and /sys; checks that
need a syscall (userfaultfd, unshare) probe the real kernel.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

from vmm import hostinfo

OK, WARN, FAIL = "ok", "warn", "fail"

# From /usr/include/linux/userfaultfd.h (checked in tests against the header).
SYS_userfaultfd = 323
UFFD_API = 0xAA
UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFDIO_API = (3 << 30) | (24 << 16) | (0xAA << 8) | 0x3F  # _IOWR(0xAA, 0x3F, struct uffdio_api)
CLONE_NEWNET = 0x40000000

FLAVOUR_TEXT = {
    "hardware-intel": "hardware-style KVM (Intel VT-x)",
    "hardware-amd": "hardware-style KVM (AMD-V)",
    "pvm": "PVM (kvm_pvm): software KVM, runs only PVM-patched guest kernels at speed",
    "none": "no /dev/kvm",
}


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    hint: str = ""


def check_kvm(root: str | Path = "/") -> Check:
    flavour = hostinfo.kvm_flavour(root)
    text = FLAVOUR_TEXT[flavour]
    if flavour == "none":
        return Check("kvm", FAIL, text, "load kvm_intel or kvm_amd, or enable nested virtualization; else use `mm lab`")
    if flavour == "pvm":
        return Check("kvm", WARN, text, "standard guest kernels cannot run here: real guests run inside the lab (`mm lab up`)")
    if str(root) == "/" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Check("kvm", FAIL, f"{text}, but /dev/kvm is not readable and writable", "run as root or join the kvm group")
    return Check("kvm", OK, text)


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def check_userfaultfd() -> Check:
    libc = _libc()
    fd = libc.syscall(SYS_userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        err = ctypes.get_errno()
        return Check("userfaultfd", FAIL, f"userfaultfd() failed: {os.strerror(err)}",
                     "set vm.unprivileged_userfaultfd=1 or run as root; snapshot restore and branch need it")
    try:
        api = (ctypes.c_uint64 * 3)(UFFD_API, UFFD_FEATURE_PAGEFAULT_FLAG_WP, 0)
        if libc.ioctl(fd, ctypes.c_ulong(UFFDIO_API), api) != 0:
            return Check("userfaultfd", WARN, "userfaultfd without write-protect", "live branch needs a kernel with UFFD write-protect (5.7+)")
    finally:
        os.close(fd)
    return Check("userfaultfd", OK, "userfaultfd with write-protect")


def check_tun(root: str | Path = "/") -> Check:
    path = Path(root) / "dev/net/tun"
    if not path.exists():
        return Check("tun", FAIL, "/dev/net/tun missing", "modprobe tun")
    return Check("tun", OK, "/dev/net/tun present")


def check_netns() -> Check:
    pid = os.fork()
    if pid == 0:  # probe in a child so this process keeps its namespace
        os._exit(0 if _libc().unshare(CLONE_NEWNET) == 0 else 1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return Check("netns", FAIL, "cannot create a network namespace", "run as root (CAP_SYS_ADMIN)")
    return Check("netns", OK, "network namespaces work")


def check_nftables() -> Check:
    nft = shutil.which("nft")
    if not nft:
        return Check("nftables", FAIL, "the nft command is missing", "apt-get install nftables (./setup.sh does)")
    proc = subprocess.run([nft, "list", "tables"], capture_output=True, text=True)
    if proc.returncode != 0:
        return Check("nftables", FAIL, f"nft cannot list tables: {proc.stderr.strip()}", "run as root; the kernel needs nf_tables")
    return Check("nftables", OK, "nftables usable")


def check_seccomp(root: str | Path = "/") -> Check:
    try:
        actions = (Path(root) / "proc/sys/kernel/seccomp/actions_avail").read_text().split()
    except OSError:
        return Check("seccomp", FAIL, "kernel has no seccomp filter support", "the worker jail needs CONFIG_SECCOMP_FILTER")
    if "kill_process" not in actions:
        return Check("seccomp", WARN, "seccomp lacks kill_process", "a newer kernel (4.14+) is needed")
    return Check("seccomp", OK, "seccomp filters available")


def check_kernel() -> Check:
    try:
        from vmm import kernel
    except ImportError:
        return Check("guest-kernel", FAIL, "guest kernel support not installed", "reinstall micromachines")
    if kernel.is_built():
        return Check("guest-kernel", OK, f"guest kernel at {kernel.kernel_path()}")
    return Check("guest-kernel", FAIL, "guest kernel not built", "run `mm kernel build` (about 7 minutes on 2 cores)")


def check_lab(root: str | Path = "/") -> Check:
    if hostinfo.in_lab(root):
        return Check("lab", OK, "running inside the lab")
    try:
        from vmm import lab
    except ImportError:
        return Check("lab", FAIL, "lab support not installed", "reinstall micromachines")
    needed = not hostinfo.runs_standard_guests(root)
    if lab.is_prepared():
        return Check("lab", OK, "lab prepared" + (" (needed here for real guests)" if needed else ""))
    if needed:
        return Check("lab", FAIL, "lab not prepared, and this host needs it for real guests", "run `mm lab prepare`")
    return Check("lab", WARN, "lab not prepared (not needed on this host)", "`mm lab prepare` if you want it")


def run_checks() -> list[Check]:
    return [
        check_kvm(), check_userfaultfd(), check_tun(), check_netns(), check_nftables(),
        check_seccomp(), check_kernel(), check_lab(),
    ]
