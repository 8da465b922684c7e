"""`Kvm`: the /dev/kvm system fd (API version, capabilities, supported CPUID, MSR lists).

Opening checks the API version and the capabilities the VMM cannot work without, so a
host that lacks one fails up front with a clear error and hint, not mid-boot.
"""
from __future__ import annotations

import ctypes as C
import errno as E
import os
from functools import cached_property

from vmm.errors import HostError, KvmError
from vmm.kvm import abi as A
from vmm.kvm import structs as S
from vmm.kvm.ioctl import _ioctl

# Capabilities we rely on everywhere (x86 microVM with in-kernel irqchip and PIT).
REQUIRED_CAPS = (
    "KVM_CAP_USER_MEMORY", "KVM_CAP_SET_TSS_ADDR", "KVM_CAP_EXT_CPUID", "KVM_CAP_IRQCHIP",
    "KVM_CAP_PIT2", "KVM_CAP_IRQFD", "KVM_CAP_IOEVENTFD", "KVM_CAP_MP_STATE",
    "KVM_CAP_VCPU_EVENTS", "KVM_CAP_DEBUGREGS", "KVM_CAP_XSAVE", "KVM_CAP_XCRS",
    "KVM_CAP_IMMEDIATE_EXIT", "KVM_CAP_ADJUST_CLOCK", "KVM_CAP_SET_IDENTITY_MAP_ADDR",
)


class KvmUnavailable(HostError):
    """/dev/kvm is missing, not accessible, or too old."""


class KvmCapabilityError(HostError):
    """/dev/kvm lacks a capability the VMM needs."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(
            f"/dev/kvm lacks required capabilities: {', '.join(missing)}",
            "use a host whose KVM supports them (Linux >= 5.x with kvm_intel/kvm_amd or "
            "kvm_pvm); `mm doctor` shows what this host has")


class Kvm:
    """The /dev/kvm fd. `Kvm()` opens and checks it; `create_vm()` makes a `Vm`."""

    def __init__(self, path: str = "/dev/kvm", check: bool = True) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(f"{path} does not exist",
                                 "load kvm_intel / kvm_amd (or run in a VM with nested "
                                 "virtualisation); `mm doctor` explains") from None
        except PermissionError:
            raise KvmUnavailable(f"no permission to open {path}",
                                 "run as root or add this user to the kvm group") from None
        self.path = path
        if check:
            try:
                self.check()
            except BaseException:
                self.close()
                raise

    # -- lifecycle ------------------------------------------------------------------
    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Kvm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- queries ----------------------------------------------------------------------
    def api_version(self) -> int:
        return _ioctl(self.fd, "KVM_GET_API_VERSION", 0)

    def check_extension(self, cap: int | str) -> int:
        if isinstance(cap, str):
            cap = A.CONSTANTS[cap]
        return _ioctl(self.fd, "KVM_CHECK_EXTENSION", cap)

    def missing_caps(self, caps=REQUIRED_CAPS) -> list[str]:
        return [c for c in caps if self.check_extension(c) <= 0]

    def check(self) -> None:
        """Raise KvmUnavailable / KvmCapabilityError unless this KVM can run our VMs."""
        try:
            version = self.api_version()
        except KvmError as e:
            if e.errno == E.ENOTTY:
                raise KvmUnavailable(f"{self.path} is not a KVM device",
                                     "pass /dev/kvm (or leave the path at its default)") from None
            raise
        if version != A.KVM_API_VERSION:
            raise KvmUnavailable(f"{self.path} speaks KVM API {version}, we need 12",
                                 "use a newer host kernel")
        missing = self.missing_caps()
        if missing:
            raise KvmCapabilityError(missing)

    @cached_property
    def vcpu_mmap_size(self) -> int:
        return _ioctl(self.fd, "KVM_GET_VCPU_MMAP_SIZE", 0)

    @cached_property
    def max_vcpus(self) -> int:
        return self.check_extension("KVM_CAP_MAX_VCPUS") or self.check_extension("KVM_CAP_NR_VCPUS")

    def supported_cpuid(self) -> list[S.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID, as fresh copies the caller may edit."""
        return [S.kvm_cpuid_entry2.from_buffer_copy(e) for e in self._supported_cpuid]

    @cached_property
    def _supported_cpuid(self) -> tuple:
        n = 64
        while True:
            buf = S.cpuid_buffer(n)
            try:
                _ioctl(self.fd, "KVM_GET_SUPPORTED_CPUID", buf)
            except KvmError as e:
                if e.errno == E.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise
            return tuple(S.kvm_cpuid_entry2.from_buffer_copy(buf.entries[i]) for i in range(buf.nent))

    def _msr_list(self, name: str) -> tuple[int, ...]:
        probe = S.msr_list_buffer(0)
        try:
            _ioctl(self.fd, name, probe)
        except KvmError as e:
            if e.errno != E.E2BIG:
                raise
        buf = S.msr_list_buffer(probe.nmsrs)
        _ioctl(self.fd, name, buf)
        return tuple(buf.indices[i] for i in range(buf.nmsrs))

    @cached_property
    def msr_index_list(self) -> tuple[int, ...]:
        """MSRs KVM saves/restores for a vCPU (KVM_GET_MSR_INDEX_LIST)."""
        return self._msr_list("KVM_GET_MSR_INDEX_LIST")

    @cached_property
    def msr_feature_list(self) -> tuple[int, ...]:
        """Feature MSRs readable on the system fd (KVM_GET_MSR_FEATURE_INDEX_LIST)."""
        if self.check_extension("KVM_CAP_GET_MSR_FEATURES") <= 0:
            return ()
        return self._msr_list("KVM_GET_MSR_FEATURE_INDEX_LIST")

    def get_feature_msrs(self, indices) -> dict[int, int]:
        """Values of feature MSRs (read on the system fd); unreadable ones are left out."""
        out: dict[int, int] = {}
        for idx in indices:
            buf = S.msrs_buffer([idx])
            if _ioctl(self.fd, "KVM_GET_MSRS", buf) == 1:
                out[idx] = buf.entries[0].data
        return out

    def create_vm(self, vm_type: int = 0) -> "Vm":
        from vmm.kvm.vm import Vm

        return Vm(self, _ioctl(self.fd, "KVM_CREATE_VM", vm_type))
