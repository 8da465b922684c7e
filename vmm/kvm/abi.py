"""The one table of KVM ioctl numbers and constants (from linux/kvm.h, x86-64).

Ioctl numbers are computed with the kernel's _IO/_IOR/_IOW/_IOWR encoding from the
struct sizes in `vmm.kvm.structs`; tests/unit/kvm/test_abi.py checks every number and
constant here against the C preprocessor, so this table cannot drift from the header.
"""
from __future__ import annotations

import ctypes as C

from vmm.kvm import structs as S

KVMIO = 0xAE
_NONE, _WRITE, _READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _IO(nr: int) -> int:
    return _ioc(_NONE, nr, 0)


def _IOR(nr: int, t) -> int:
    return _ioc(_READ, nr, C.sizeof(t))


def _IOW(nr: int, t) -> int:
    return _ioc(_WRITE, nr, C.sizeof(t))


def _IOWR(nr: int, t) -> int:
    return _ioc(_READ | _WRITE, nr, C.sizeof(t))


IOCTLS: dict[str, int] = {
    # system (/dev/kvm)
    "KVM_GET_API_VERSION": _IO(0x00),
    "KVM_CREATE_VM": _IO(0x01),
    "KVM_GET_MSR_INDEX_LIST": _IOWR(0x02, S.kvm_msr_list),
    "KVM_CHECK_EXTENSION": _IO(0x03),
    "KVM_GET_VCPU_MMAP_SIZE": _IO(0x04),
    "KVM_GET_SUPPORTED_CPUID": _IOWR(0x05, S.kvm_cpuid2),
    "KVM_GET_MSR_FEATURE_INDEX_LIST": _IOWR(0x0A, S.kvm_msr_list),
    # VM
    "KVM_CREATE_VCPU": _IO(0x41),
    "KVM_GET_DIRTY_LOG": _IOW(0x42, S.kvm_dirty_log),
    "KVM_SET_USER_MEMORY_REGION": _IOW(0x46, S.kvm_userspace_memory_region),
    "KVM_SET_TSS_ADDR": _IO(0x47),
    "KVM_SET_IDENTITY_MAP_ADDR": _IOW(0x48, C.c_uint64),
    "KVM_CREATE_IRQCHIP": _IO(0x60),
    "KVM_IRQ_LINE": _IOW(0x61, S.kvm_irq_level),
    "KVM_GET_IRQCHIP": _IOWR(0x62, S.kvm_irqchip),
    "KVM_SET_IRQCHIP": _IOR(0x63, S.kvm_irqchip),
    "KVM_IRQFD": _IOW(0x76, S.kvm_irqfd),
    "KVM_CREATE_PIT2": _IOW(0x77, S.kvm_pit_config),
    "KVM_IOEVENTFD": _IOW(0x79, S.kvm_ioeventfd),
    "KVM_SET_CLOCK": _IOW(0x7B, S.kvm_clock_data),
    "KVM_GET_CLOCK": _IOR(0x7C, S.kvm_clock_data),
    "KVM_GET_PIT2": _IOR(0x9F, S.kvm_pit_state2),
    "KVM_SET_PIT2": _IOW(0xA0, S.kvm_pit_state2),
    "KVM_ENABLE_CAP": _IOW(0xA3, S.kvm_enable_cap),
    # vCPU
    "KVM_RUN": _IO(0x80),
    "KVM_GET_REGS": _IOR(0x81, S.kvm_regs),
    "KVM_SET_REGS": _IOW(0x82, S.kvm_regs),
    "KVM_GET_SREGS": _IOR(0x83, S.kvm_sregs),
    "KVM_SET_SREGS": _IOW(0x84, S.kvm_sregs),
    "KVM_GET_MSRS": _IOWR(0x88, S.kvm_msrs),
    "KVM_SET_MSRS": _IOW(0x89, S.kvm_msrs),
    "KVM_GET_FPU": _IOR(0x8C, S.kvm_fpu),
    "KVM_SET_FPU": _IOW(0x8D, S.kvm_fpu),
    "KVM_GET_LAPIC": _IOR(0x8E, S.kvm_lapic_state),
    "KVM_SET_LAPIC": _IOW(0x8F, S.kvm_lapic_state),
    "KVM_SET_CPUID2": _IOW(0x90, S.kvm_cpuid2),
    "KVM_GET_CPUID2": _IOWR(0x91, S.kvm_cpuid2),
    "KVM_GET_MP_STATE": _IOR(0x98, S.kvm_mp_state),
    "KVM_SET_MP_STATE": _IOW(0x99, S.kvm_mp_state),
    "KVM_GET_VCPU_EVENTS": _IOR(0x9F, S.kvm_vcpu_events),
    "KVM_SET_VCPU_EVENTS": _IOW(0xA0, S.kvm_vcpu_events),
    "KVM_GET_DEBUGREGS": _IOR(0xA1, S.kvm_debugregs),
    "KVM_SET_DEBUGREGS": _IOW(0xA2, S.kvm_debugregs),
    "KVM_SET_TSC_KHZ": _IO(0xA2),
    "KVM_GET_TSC_KHZ": _IO(0xA3),
    "KVM_GET_XSAVE": _IOR(0xA4, S.kvm_xsave),
    "KVM_SET_XSAVE": _IOW(0xA5, S.kvm_xsave),
    "KVM_GET_XCRS": _IOR(0xA6, S.kvm_xcrs),
    "KVM_SET_XCRS": _IOW(0xA7, S.kvm_xcrs),
    "KVM_KVMCLOCK_CTRL": _IO(0xAD),
    "KVM_GET_XSAVE2": _IOR(0xCF, S.kvm_xsave),
}
globals().update(IOCTLS)

CONSTANTS: dict[str, int] = {
    "KVM_API_VERSION": 12,
    # capabilities
    "KVM_CAP_IRQCHIP": 0, "KVM_CAP_HLT": 1, "KVM_CAP_USER_MEMORY": 3,
    "KVM_CAP_SET_TSS_ADDR": 4, "KVM_CAP_EXT_CPUID": 7, "KVM_CAP_NR_VCPUS": 9,
    "KVM_CAP_NR_MEMSLOTS": 10, "KVM_CAP_MP_STATE": 14, "KVM_CAP_IRQ_ROUTING": 25,
    "KVM_CAP_IRQFD": 32, "KVM_CAP_PIT2": 33, "KVM_CAP_PIT_STATE2": 35,
    "KVM_CAP_IOEVENTFD": 36, "KVM_CAP_SET_IDENTITY_MAP_ADDR": 37,
    "KVM_CAP_ADJUST_CLOCK": 39, "KVM_CAP_VCPU_EVENTS": 41, "KVM_CAP_DEBUGREGS": 50,
    "KVM_CAP_XSAVE": 55, "KVM_CAP_XCRS": 56, "KVM_CAP_TSC_CONTROL": 60,
    "KVM_CAP_GET_TSC_KHZ": 61, "KVM_CAP_MAX_VCPUS": 66, "KVM_CAP_TSC_DEADLINE_TIMER": 72,
    "KVM_CAP_KVMCLOCK_CTRL": 76,
    "KVM_CAP_READONLY_MEM": 81, "KVM_CAP_IMMEDIATE_EXIT": 136,
    "KVM_CAP_GET_MSR_FEATURES": 153, "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2": 168,
    "KVM_CAP_XSAVE2": 208, "KVM_CAP_SYSTEM_EVENT_DATA": 215,
    # exit reasons
    "KVM_EXIT_UNKNOWN": 0, "KVM_EXIT_EXCEPTION": 1, "KVM_EXIT_IO": 2,
    "KVM_EXIT_HYPERCALL": 3, "KVM_EXIT_DEBUG": 4, "KVM_EXIT_HLT": 5, "KVM_EXIT_MMIO": 6,
    "KVM_EXIT_IRQ_WINDOW_OPEN": 7, "KVM_EXIT_SHUTDOWN": 8, "KVM_EXIT_FAIL_ENTRY": 9,
    "KVM_EXIT_INTR": 10, "KVM_EXIT_NMI": 16, "KVM_EXIT_INTERNAL_ERROR": 17,
    "KVM_EXIT_SYSTEM_EVENT": 24, "KVM_EXIT_IO_IN": 0, "KVM_EXIT_IO_OUT": 1,
    "KVM_SYSTEM_EVENT_SHUTDOWN": 1, "KVM_SYSTEM_EVENT_RESET": 2, "KVM_SYSTEM_EVENT_CRASH": 3,
    "KVM_INTERNAL_ERROR_EMULATION": 1,
    # mp states
    "KVM_MP_STATE_RUNNABLE": 0, "KVM_MP_STATE_UNINITIALIZED": 1,
    "KVM_MP_STATE_INIT_RECEIVED": 2, "KVM_MP_STATE_HALTED": 3,
    "KVM_MP_STATE_SIPI_RECEIVED": 4,
    # flags
    "KVM_MEM_LOG_DIRTY_PAGES": 1, "KVM_MEM_READONLY": 2,
    "KVM_PIT_SPEAKER_DUMMY": 1,
    "KVM_IRQFD_FLAG_DEASSIGN": 1, "KVM_IRQFD_FLAG_RESAMPLE": 2,
    "KVM_IOEVENTFD_FLAG_DATAMATCH": 1, "KVM_IOEVENTFD_FLAG_PIO": 2,
    "KVM_IOEVENTFD_FLAG_DEASSIGN": 4,
    "KVM_IRQCHIP_PIC_MASTER": 0, "KVM_IRQCHIP_PIC_SLAVE": 1, "KVM_IRQCHIP_IOAPIC": 2,
    "KVM_CPUID_FLAG_SIGNIFCANT_INDEX": 1,
    "KVM_VCPUEVENT_VALID_NMI_PENDING": 1, "KVM_VCPUEVENT_VALID_SIPI_VECTOR": 2,
    "KVM_VCPUEVENT_VALID_SHADOW": 4, "KVM_VCPUEVENT_VALID_SMM": 8,
}
globals().update(CONSTANTS)

EXIT_REASON_NAMES = {v: k[len("KVM_EXIT_"):] for k, v in CONSTANTS.items()
                     if k.startswith("KVM_EXIT_") and not k.startswith("KVM_EXIT_IO_")}


def name_of(request: int) -> str:
    """The KVM_* name of an ioctl number (for error messages)."""
    for name, number in IOCTLS.items():
        if number == request:
            return name
    return hex(request)
