"""`Vcpu`: a KVM vCPU fd and its mmapped kvm_run, with every state get/set a boot or a
snapshot needs (regs, sregs, fpu, xsave, xcrs, msrs, lapic, cpuid2, mp_state,
vcpu_events, debugregs). Running it is the run loop's job (vmm._fast.runloop).
"""
from __future__ import annotations

import ctypes as C
import mmap
import os

from vmm.errors import KvmError
from vmm.kvm import structs as S
from vmm.kvm.ioctl import _ioctl


def _getter(name: str, struct: type):
    def get(self):
        obj = struct()
        _ioctl(self.fd, name, obj)
        return obj
    get.__doc__ = f"{name} -> {struct.__name__}"
    return get


def _setter(name: str):
    def set_(self, obj) -> None:
        _ioctl(self.fd, name, obj)
    set_.__doc__ = f"{name}(struct)"
    return set_


class Vcpu:
    """A vCPU fd owned by this object; made by `Vm.create_vcpu(index)`.

    `run` is the kvm_run ctypes view; `run_address` its host address for C code.
    The state ioctls wait for the vCPU's mutex: called while its thread is inside
    KVM_RUN they block until the guest exits, so pause the vCPUs first (Vcpus.pause).
    """

    def __init__(self, vm, index: int, fd: int) -> None:
        self.vm = vm
        self.index = index
        self.fd = fd
        size = vm.kvm.vcpu_mmap_size
        self._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run = S.kvm_run.from_buffer(self._mmap)
        self.run_address = C.addressof(self.run)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            self.run = None  # drop the buffer export before unmapping
            self._mmap.close()
            os.close(self.fd)
            self.fd = -1

    get_regs = _getter("KVM_GET_REGS", S.kvm_regs)
    set_regs = _setter("KVM_SET_REGS")
    get_sregs = _getter("KVM_GET_SREGS", S.kvm_sregs)
    set_sregs = _setter("KVM_SET_SREGS")
    get_fpu = _getter("KVM_GET_FPU", S.kvm_fpu)
    set_fpu = _setter("KVM_SET_FPU")
    get_xcrs = _getter("KVM_GET_XCRS", S.kvm_xcrs)
    set_xcrs = _setter("KVM_SET_XCRS")
    get_lapic = _getter("KVM_GET_LAPIC", S.kvm_lapic_state)
    set_lapic = _setter("KVM_SET_LAPIC")
    get_vcpu_events = _getter("KVM_GET_VCPU_EVENTS", S.kvm_vcpu_events)
    set_vcpu_events = _setter("KVM_SET_VCPU_EVENTS")
    get_debugregs = _getter("KVM_GET_DEBUGREGS", S.kvm_debugregs)
    set_debugregs = _setter("KVM_SET_DEBUGREGS")

    def get_mp_state(self) -> int:
        st = S.kvm_mp_state()
        _ioctl(self.fd, "KVM_GET_MP_STATE", st)
        return st.mp_state

    def set_mp_state(self, state: int) -> None:
        _ioctl(self.fd, "KVM_SET_MP_STATE", S.kvm_mp_state(mp_state=state))

    # -- xsave: the 4 KiB form, or KVM_GET_XSAVE2 with the size the VM reports --------
    def xsave_size(self) -> int:
        return max(4096, self.vm.check_extension("KVM_CAP_XSAVE2"))

    def get_xsave(self) -> bytes:
        size = self.xsave_size()
        buf = S.xsave_buffer(size)
        _ioctl(self.fd, "KVM_GET_XSAVE2" if size > 4096 else "KVM_GET_XSAVE", buf)
        return bytes(buf)

    def set_xsave(self, data: bytes) -> None:
        buf = S.xsave_buffer(len(data))
        C.memmove(buf, data, len(data))
        _ioctl(self.fd, "KVM_SET_XSAVE", buf)

    # -- MSRs ----------------------------------------------------------------------------
    def get_msrs(self, indices) -> dict[int, int]:
        """Read MSRs; raises KvmError naming the first one KVM refused."""
        indices = list(indices)
        if not indices:
            return {}
        buf = S.msrs_buffer(indices)
        n = _ioctl(self.fd, "KVM_GET_MSRS", buf)
        if n != len(indices):
            raise KvmError("KVM_GET_MSRS", 0, f"KVM_GET_MSRS: KVM refused MSR {indices[n]:#x}")
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def set_msrs(self, values: dict[int, int]) -> None:
        """Write MSRs; raises KvmError naming the first one KVM refused."""
        items = list(values.items())
        if not items:
            return
        buf = S.msrs_buffer(items)
        n = _ioctl(self.fd, "KVM_SET_MSRS", buf)
        if n != len(items):
            raise KvmError("KVM_SET_MSRS", 0, f"KVM_SET_MSRS: KVM refused MSR {items[n][0]:#x} "
                           f"= {items[n][1]:#x}", "only set MSRs from KVM_GET_MSR_INDEX_LIST")

    # -- CPUID ---------------------------------------------------------------------------
    def set_cpuid2(self, entries) -> None:
        entries = list(entries)
        buf = S.cpuid_buffer(len(entries))
        for i, e in enumerate(entries):
            buf.entries[i] = e
        _ioctl(self.fd, "KVM_SET_CPUID2", buf)

    def get_cpuid2(self, max_entries: int = 256) -> list[S.kvm_cpuid_entry2]:
        buf = S.cpuid_buffer(max_entries)
        _ioctl(self.fd, "KVM_GET_CPUID2", buf)
        return [S.kvm_cpuid_entry2.from_buffer_copy(buf.entries[i]) for i in range(buf.nent)]

    # -- misc -----------------------------------------------------------------------------
    def kvmclock_ctrl(self) -> None:
        """Tell the guest's kvm-clock it was paused (avoids soft-lockup warnings)."""
        _ioctl(self.fd, "KVM_KVMCLOCK_CTRL", 0)

    def get_tsc_khz(self) -> int:
        return _ioctl(self.fd, "KVM_GET_TSC_KHZ", 0)
