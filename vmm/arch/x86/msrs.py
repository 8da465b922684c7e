"""Which MSRs we write at boot and which we save in snapshots: only MSRs KVM lists.

KVM_GET_MSR_INDEX_LIST is the set a vCPU can save/restore; feature MSRs (e.g. 0x10a
IA32_ARCH_CAPABILITIES, the one QEMU 7.2 `-cpu host` dies on under PVM) are read on
the system fd and never forced onto a vCPU here. A boot MSR KVM does not list is
left at KVM's reset value rather than failing the boot.
"""
from __future__ import annotations

MSR_IA32_TSC = 0x10
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_MTRR_DEF_TYPE = 0x2FF
MSR_ARCH_CAPABILITIES = 0x10A
MSR_STAR = 0xC000_0081
MSR_LSTAR = 0xC000_0082
MSR_CSTAR = 0xC000_0083
MSR_SYSCALL_MASK = 0xC000_0084
MSR_KERNEL_GS_BASE = 0xC000_0102
MSR_KVM_SYSTEM_TIME_NEW = 0x4B56_4D01
MSR_KVM_WALL_CLOCK_NEW = 0x4B56_4D00

MISC_ENABLE_FAST_STRING = 1 << 0
MTRR_ENABLE = 1 << 11
MTRR_TYPE_WRBACK = 6

BOOT_MSRS = {
    MSR_IA32_SYSENTER_CS: 0,
    MSR_IA32_SYSENTER_ESP: 0,
    MSR_IA32_SYSENTER_EIP: 0,
    MSR_STAR: 0,
    MSR_CSTAR: 0,
    MSR_KERNEL_GS_BASE: 0,
    MSR_SYSCALL_MASK: 0,
    MSR_LSTAR: 0,
    MSR_IA32_TSC: 0,
    MSR_IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRING,
    # Without MTRRs enabled and defaulting to write-back, Linux maps all RAM uncached.
    MSR_MTRR_DEF_TYPE: MTRR_ENABLE | MTRR_TYPE_WRBACK,
}


def boot_msrs(kvm) -> dict[int, int]:
    """BOOT_MSRS restricted to what this KVM lists for vCPUs."""
    listed = set(kvm.msr_index_list)
    return {i: v for i, v in BOOT_MSRS.items() if i in listed}


def save_list(kvm, vcpu) -> list[int]:
    """MSRs to save for a snapshot: every listed MSR this vCPU can actually read
    (KVM lists some that depend on CPUID bits the guest does not have)."""
    readable = []
    for idx in kvm.msr_index_list:
        try:
            vcpu.get_msrs([idx])
        except Exception:  # KvmError: this MSR is not readable for this vCPU
            continue
        readable.append(idx)
    return readable
