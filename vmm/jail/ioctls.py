"""Every ioctl request the jailed VMM may issue, by name, with its number from our tables.

The seccomp policy (vmm.jail.policy) allows ioctl(2) only with these request numbers.
No number is typed here: KVM requests come from `vmm.kvm.abi.IOCTLS`, TUN requests from
the virtio-net TAP code (`devices.virtio.net.tap`), terminal and fd requests from
Python's `termios` (the C headers, through CPython), and userfaultfd requests are
encoded below from their ctypes struct sizes exactly as <linux/userfaultfd.h> does.
tests/unit/jail/test_constants.py checks the TUN, terminal, userfaultfd and seccomp
numbers against the C headers with gcc (tests/unit/kvm/test_abi.py does the KVM ones).
"""
from __future__ import annotations

import ctypes as C
import termios

from devices.virtio.net import tap
from vmm.kvm.abi import IOCTLS as KVM

_NONE, _WRITE, _READ = 0, 1, 2


def ioc(direction: int, kind: int, nr: int, size: int) -> int:
    """The kernel's _IOC() encoding (asm-generic/ioctl.h)."""
    return (direction << 30) | (size << 16) | (kind << 8) | nr


# -- userfaultfd (<linux/userfaultfd.h>): lazy snapshot restore and live branch -------------
UFFDIO = 0xAA


class uffdio_range(C.Structure):
    _fields_ = [("start", C.c_uint64), ("len", C.c_uint64)]


class uffdio_api(C.Structure):
    _fields_ = [("api", C.c_uint64), ("features", C.c_uint64), ("ioctls", C.c_uint64)]


class uffdio_register(C.Structure):
    _fields_ = [("range", uffdio_range), ("mode", C.c_uint64), ("ioctls", C.c_uint64)]


class uffdio_copy(C.Structure):
    _fields_ = [("dst", C.c_uint64), ("src", C.c_uint64), ("len", C.c_uint64),
                ("mode", C.c_uint64), ("copy", C.c_int64)]


class uffdio_zeropage(C.Structure):
    _fields_ = [("range", uffdio_range), ("mode", C.c_uint64), ("zeropage", C.c_int64)]


class uffdio_writeprotect(C.Structure):
    _fields_ = [("range", uffdio_range), ("mode", C.c_uint64)]


class uffdio_continue(C.Structure):
    _fields_ = [("range", uffdio_range), ("mode", C.c_uint64), ("mapped", C.c_int64)]


class uffdio_move(C.Structure):
    _fields_ = [("dst", C.c_uint64), ("src", C.c_uint64), ("len", C.c_uint64),
                ("mode", C.c_uint64), ("move", C.c_int64)]


RW = _READ | _WRITE
USERFAULTFD: dict[str, int] = {
    "UFFDIO_REGISTER": ioc(RW, UFFDIO, 0x00, C.sizeof(uffdio_register)),
    "UFFDIO_UNREGISTER": ioc(_READ, UFFDIO, 0x01, C.sizeof(uffdio_range)),
    "UFFDIO_WAKE": ioc(_READ, UFFDIO, 0x02, C.sizeof(uffdio_range)),
    "UFFDIO_COPY": ioc(RW, UFFDIO, 0x03, C.sizeof(uffdio_copy)),
    "UFFDIO_ZEROPAGE": ioc(RW, UFFDIO, 0x04, C.sizeof(uffdio_zeropage)),
    "UFFDIO_MOVE": ioc(RW, UFFDIO, 0x05, C.sizeof(uffdio_move)),
    "UFFDIO_WRITEPROTECT": ioc(RW, UFFDIO, 0x06, C.sizeof(uffdio_writeprotect)),
    "UFFDIO_CONTINUE": ioc(RW, UFFDIO, 0x07, C.sizeof(uffdio_continue)),
    "UFFDIO_API": ioc(RW, UFFDIO, 0x3F, C.sizeof(uffdio_api)),
    # on a /dev/userfaultfd fd opened before the jail: a new userfaultfd that may also
    # handle kernel-mode faults (KVM touching guest RAM), which after the uid drop the
    # userfaultfd(2) call alone no longer grants (vm.unprivileged_userfaultfd=0)
    "USERFAULTFD_IOC_NEW": ioc(_NONE, UFFDIO, 0x00, 0),
}

# -- the requests the VMM issues after the jail, by role --------------------------------------
# KVM, on /dev/kvm: capability and CPUID/MSR queries made while configuring vCPUs.
KVM_SYSTEM = ("KVM_GET_API_VERSION", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
              "KVM_GET_SUPPORTED_CPUID", "KVM_GET_MSR_INDEX_LIST", "KVM_GET_MSR_FEATURE_INDEX_LIST")
# KVM, on the VM fd: vCPUs are created by Machine.start() (after the jail); interrupts,
# irqfds/ioeventfds of devices the guest activates; clock, irqchip and PIT state and the
# dirty log for snapshots; memory slots for dirty logging and restore. Not KVM_CREATE_VM,
# KVM_CREATE_IRQCHIP/PIT2, KVM_SET_TSS_ADDR/IDENTITY_MAP_ADDR: done once, before the jail.
KVM_VM = ("KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION", "KVM_GET_DIRTY_LOG", "KVM_IRQ_LINE",
          "KVM_GET_IRQCHIP", "KVM_SET_IRQCHIP", "KVM_IRQFD", "KVM_IOEVENTFD", "KVM_SET_CLOCK",
          "KVM_GET_CLOCK", "KVM_GET_PIT2", "KVM_SET_PIT2", "KVM_ENABLE_CAP")
# KVM, on vCPU fds: running, configuring at start, and saving/restoring every piece of
# vCPU state for snapshots.
KVM_VCPU = ("KVM_RUN", "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS",
            "KVM_GET_MSRS", "KVM_SET_MSRS", "KVM_GET_FPU", "KVM_SET_FPU", "KVM_GET_LAPIC",
            "KVM_SET_LAPIC", "KVM_SET_CPUID2", "KVM_GET_CPUID2", "KVM_GET_MP_STATE",
            "KVM_SET_MP_STATE", "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS", "KVM_GET_DEBUGREGS",
            "KVM_SET_DEBUGREGS", "KVM_SET_TSC_KHZ", "KVM_GET_TSC_KHZ", "KVM_GET_XSAVE",
            "KVM_SET_XSAVE", "KVM_GET_XSAVE2", "KVM_GET_XCRS", "KVM_SET_XCRS", "KVM_KVMCLOCK_CTRL")
# TUN, on the TAP fd opened before the jail: virtio-net sets the vnet header size and
# offloads when the guest driver activates the device. Not TUNSETIFF (attach: before).
TUN = {"TUNSETVNETHDRSZ": tap.TUNSETVNETHDRSZ, "TUNSETOFFLOAD": tap.TUNSETOFFLOAD}
# Terminal and fd requests CPython issues on its own: TCGETS is isatty(), which io.open()
# asks of every file it opens (line buffering); FIONBIO is socket.setblocking() and
# settimeout(); FIOCLEX/FIONCLEX are os.set_inheritable().
TERMINAL = {"TCGETS": termios.TCGETS, "FIONBIO": termios.FIONBIO,
            "FIOCLEX": termios.FIOCLEX, "FIONCLEX": termios.FIONCLEX}


def kvm(names: tuple[str, ...]) -> dict[str, int]:
    return {n: KVM[n] for n in names}


def name_of(request: int) -> str:
    """The name of an ioctl request we know, else its hex number (for kill reports)."""
    tables = (KVM, TUN, TERMINAL, USERFAULTFD,
              {k: v for k, v in vars(termios).items() if k.isupper() and isinstance(v, int)
               and k.startswith(("TC", "TIO", "FIO"))})
    for table in tables:
        for name, number in table.items():
            if number == request:
                return name
    return hex(request)
