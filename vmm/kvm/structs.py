"""ctypes layouts of the KVM ABI structs (linux/kvm.h + asm/kvm.h, x86-64).

Every struct names its C tag in `_c_name_`; tests/unit/kvm/test_abi.py compiles a C
program that prints sizeof/offsetof of every struct and (nested) field defined here
and compares them with ctypes, so a mistake here fails a unit test, not a guest.
Flexible-array structs (kvm_msrs, kvm_cpuid2, kvm_msr_list) have a fixed header
class here and a sized-buffer factory (`msrs_buffer(n)` ...).
"""
from __future__ import annotations

import ctypes as C

u8, u16, u32, u64, s32, s64 = C.c_uint8, C.c_uint16, C.c_uint32, C.c_uint64, C.c_int32, C.c_int64

KVM_NR_INTERRUPTS = 256
KVM_MAX_XCRS = 16
KVM_APIC_REG_SIZE = 0x400
KVM_IOAPIC_NUM_PINS = 24


class _S(C.Structure):
    _c_name_: str | None = None

    def __repr__(self) -> str:
        parts = []
        for name, *_ in self._fields_:
            v = getattr(self, name)
            if isinstance(v, int):
                parts.append(f"{name}={v:#x}")
        return f"{type(self).__name__}({', '.join(parts)})"


class _U(C.Union):
    _c_name_: str | None = None


class kvm_regs(_S):
    _c_name_ = "kvm_regs"
    _fields_ = [(n, u64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(_S):
    _c_name_ = "kvm_segment"
    _fields_ = [("base", u64), ("limit", u32), ("selector", u16), ("type", u8),
                ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8),
                ("g", u8), ("avl", u8), ("unusable", u8), ("padding", u8)]


class kvm_dtable(_S):
    _c_name_ = "kvm_dtable"
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class kvm_sregs(_S):
    _c_name_ = "kvm_sregs"
    _fields_ = ([(n, kvm_segment) for n in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")]
                + [("gdt", kvm_dtable), ("idt", kvm_dtable)]
                + [(n, u64) for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")]
                + [("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64))])


class kvm_fpu(_S):
    _c_name_ = "kvm_fpu"
    _fields_ = [("fpr", (u8 * 16) * 8), ("fcw", u16), ("fsw", u16), ("ftwx", u8),
                ("pad1", u8), ("last_opcode", u16), ("last_ip", u64), ("last_dp", u64),
                ("xmm", (u8 * 16) * 16), ("mxcsr", u32), ("pad2", u32)]


class kvm_xsave(_S):
    """The fixed 4 KiB form; larger (KVM_CAP_XSAVE2) areas use `xsave_buffer(size)`."""
    _c_name_ = "kvm_xsave"
    _fields_ = [("region", u32 * 1024)]


class kvm_xcr(_S):
    _c_name_ = "kvm_xcr"
    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


class kvm_xcrs(_S):
    _c_name_ = "kvm_xcrs"
    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", kvm_xcr * KVM_MAX_XCRS),
                ("padding", u64 * 16)]


class kvm_msr_entry(_S):
    _c_name_ = "kvm_msr_entry"
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(_S):
    _c_name_ = "kvm_msrs"
    _fields_ = [("nmsrs", u32), ("pad", u32)]


class kvm_msr_list(_S):
    _c_name_ = "kvm_msr_list"
    _fields_ = [("nmsrs", u32)]


class kvm_cpuid_entry2(_S):
    _c_name_ = "kvm_cpuid_entry2"
    _fields_ = [("function", u32), ("index", u32), ("flags", u32), ("eax", u32),
                ("ebx", u32), ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


class kvm_cpuid2(_S):
    _c_name_ = "kvm_cpuid2"
    _fields_ = [("nent", u32), ("padding", u32)]


class kvm_lapic_state(_S):
    _c_name_ = "kvm_lapic_state"
    _fields_ = [("regs", C.c_char * KVM_APIC_REG_SIZE)]


class kvm_mp_state(_S):
    _c_name_ = "kvm_mp_state"
    _fields_ = [("mp_state", u32)]


class _ev_exception(_S):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8),
                ("error_code", u32)]


class _ev_interrupt(_S):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _ev_nmi(_S):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _ev_smi(_S):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class _ev_triple_fault(_S):
    _fields_ = [("pending", u8)]


class kvm_vcpu_events(_S):
    _c_name_ = "kvm_vcpu_events"
    _fields_ = [("exception", _ev_exception), ("interrupt", _ev_interrupt), ("nmi", _ev_nmi),
                ("sipi_vector", u32), ("flags", u32), ("smi", _ev_smi),
                ("triple_fault", _ev_triple_fault), ("reserved", u8 * 26),
                ("exception_has_payload", u8), ("exception_payload", u64)]


class kvm_debugregs(_S):
    _c_name_ = "kvm_debugregs"
    _fields_ = [("db", u64 * 4), ("dr6", u64), ("dr7", u64), ("flags", u64), ("reserved", u64 * 9)]


class kvm_pit_config(_S):
    _c_name_ = "kvm_pit_config"
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


class kvm_pit_channel_state(_S):
    _c_name_ = "kvm_pit_channel_state"
    _fields_ = [("count", u32), ("latched_count", u16), ("count_latched", u8),
                ("status_latched", u8), ("status", u8), ("read_state", u8),
                ("write_state", u8), ("write_latch", u8), ("rw_mode", u8), ("mode", u8),
                ("bcd", u8), ("gate", u8), ("count_load_time", s64)]


class kvm_pit_state2(_S):
    _c_name_ = "kvm_pit_state2"
    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", u32), ("reserved", u32 * 9)]


class kvm_pic_state(_S):
    _c_name_ = "kvm_pic_state"
    _fields_ = [(n, u8) for n in (
        "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select",
        "poll", "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi",
        "special_fully_nested_mode", "init4", "elcr", "elcr_mask")]


class kvm_ioapic_state(_S):
    """redirtbl entries are kept as their raw 64-bit `bits` (the C side is a bitfield)."""
    _c_name_ = "kvm_ioapic_state"
    _fields_ = [("base_address", u64), ("ioregsel", u32), ("id", u32), ("irr", u32),
                ("pad", u32), ("redirtbl", u64 * KVM_IOAPIC_NUM_PINS)]


class _irqchip_u(_U):
    _fields_ = [("dummy", C.c_char * 512), ("pic", kvm_pic_state), ("ioapic", kvm_ioapic_state)]


class kvm_irqchip(_S):
    _c_name_ = "kvm_irqchip"
    _fields_ = [("chip_id", u32), ("pad", u32), ("chip", _irqchip_u)]


class kvm_clock_data(_S):
    _c_name_ = "kvm_clock_data"
    _fields_ = [("clock", u64), ("flags", u32), ("pad0", u32), ("realtime", u64),
                ("host_tsc", u64), ("pad", u32 * 4)]


class kvm_userspace_memory_region(_S):
    _c_name_ = "kvm_userspace_memory_region"
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64),
                ("memory_size", u64), ("userspace_addr", u64)]


class kvm_irqfd(_S):
    _c_name_ = "kvm_irqfd"
    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class kvm_ioeventfd(_S):
    _c_name_ = "kvm_ioeventfd"
    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", s32), ("flags", u32),
                ("pad", u8 * 36)]


class kvm_dirty_log(_S):
    _c_name_ = "kvm_dirty_log"
    _fields_ = [("slot", u32), ("padding1", u32), ("dirty_bitmap", u64)]


class kvm_irq_level(_S):
    _c_name_ = "kvm_irq_level"
    _fields_ = [("irq", u32), ("level", u32)]


class kvm_enable_cap(_S):
    _c_name_ = "kvm_enable_cap"
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


# --- kvm_run and the exit-union members we decode ---------------------------------

class _run_hw(_S):
    _fields_ = [("hardware_exit_reason", u64)]


class _run_fail_entry(_S):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class _run_ex(_S):
    _fields_ = [("exception", u32), ("error_code", u32)]


class _run_io(_S):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32),
                ("data_offset", u64)]


class _run_mmio(_S):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class _run_internal(_S):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class _run_system_event(_S):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class _run_exit_u(_U):
    _fields_ = [("hw", _run_hw), ("fail_entry", _run_fail_entry), ("ex", _run_ex),
                ("io", _run_io), ("mmio", _run_mmio), ("internal", _run_internal),
                ("system_event", _run_system_event), ("padding", C.c_char * 256)]


class kvm_run(_S):
    """The mmapped per-vCPU run area (only the fixed part; kvm_sync_regs is padding here)."""
    _c_name_ = "kvm_run"
    _anonymous_ = ("u",)
    _fields_ = [("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
                ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
                ("flags", u16), ("cr8", u64), ("apic_base", u64), ("u", _run_exit_u),
                ("kvm_valid_regs", u64), ("kvm_dirty_regs", u64), ("s", C.c_char * 2048)]


ALL_STRUCTS = [v for v in list(globals().values())
               if isinstance(v, type) and issubclass(v, (_S, _U)) and getattr(v, "_c_name_", None)]


def _sized(header: type, entry: type, n: int, field: str = "entries") -> type:
    return type(f"{header.__name__}_{n}", (_S,), {
        "_fields_": list(header._fields_) + [(field, entry * n)]})


def msrs_buffer(entries: list[tuple[int, int]] | list[int]) -> C.Structure:
    """A kvm_msrs with len(entries) entries; ints are indices (data 0), tuples (index, data)."""
    buf = _sized(kvm_msrs, kvm_msr_entry, len(entries))()
    buf.nmsrs = len(entries)
    for i, e in enumerate(entries):
        idx, data = (e, 0) if isinstance(e, int) else e
        buf.entries[i].index = idx
        buf.entries[i].data = data
    return buf


def msr_list_buffer(n: int) -> C.Structure:
    buf = _sized(kvm_msr_list, u32, n, "indices")()
    buf.nmsrs = n
    return buf


def cpuid_buffer(n: int) -> C.Structure:
    buf = _sized(kvm_cpuid2, kvm_cpuid_entry2, n)()
    buf.nent = n
    return buf


def xsave_buffer(size: int) -> C.Array:
    """A raw xsave area of `size` bytes (KVM_CAP_XSAVE2 size, at least 4096)."""
    return (C.c_uint8 * max(size, 4096))()
