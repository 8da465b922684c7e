"""x86 vCPU register setup: FPU, XCR0, LAPIC LINT pins, GDT, identity page tables,
and the two entry states a boot uses: 64-bit long mode and 32-bit flat protected mode.

Guest-physical layout used by the defaults (all below 64 KiB, clear of the zero page
at 0x7000, the command line and the EBDA):
  GDT_ADDR 0x500 (8 entries), IDT_ADDR 0x540 (empty), PML4_ADDR 0x9000, PDPT 0xA000,
  four page directories 0xB000-0xEFFF identity-mapping the first 4 GiB with 2 MiB pages.
GDT selectors: CODE32_SEL 0x08 (flat 32-bit), CODE64_SEL 0x10, DATA_SEL 0x18, TSS_SEL 0x20
(0x10/0x18 are the kernel's __BOOT_CS/__BOOT_DS).
"""
from __future__ import annotations

import ctypes as C
import struct

from vmm.kvm import structs as S

GDT_ADDR = 0x500
IDT_ADDR = 0x540
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000
IDENTITY_MAP_GIB = 4

CODE32_SEL, CODE64_SEL, DATA_SEL, TSS_SEL = 0x08, 0x10, 0x18, 0x20

X86_CR0_PE, X86_CR0_MP, X86_CR0_ET, X86_CR0_NE = 1 << 0, 1 << 1, 1 << 4, 1 << 5
X86_CR0_WP, X86_CR0_AM, X86_CR0_PG = 1 << 16, 1 << 18, 1 << 31
X86_CR4_PAE = 1 << 5
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1 << 0, 1 << 8, 1 << 10, 1 << 11

APIC_LVT0, APIC_LVT1 = 0x350, 0x360
APIC_MODE_NMI, APIC_MODE_EXTINT = 0x4, 0x7

XFEATURE_X87, XFEATURE_SSE, XFEATURE_AVX = 1 << 0, 1 << 1, 1 << 2


def gdt_entry(flags: int, base: int, limit: int) -> int:
    """A GDT descriptor from (flags = access byte | granularity nibble << 12, base, limit)."""
    return (((base & 0xFF000000) << (56 - 24)) | ((flags & 0xF0FF) << 40)
            | ((limit & 0xF0000) << (48 - 16)) | ((base & 0x00FFFFFF) << 16) | (limit & 0xFFFF))


GDT = [
    0,                                  # null
    gdt_entry(0xC09B, 0, 0xFFFFF),      # 0x08 code32: flat, 4 KiB granular, D=1
    gdt_entry(0xA09B, 0, 0xFFFFF),      # 0x10 code64: L=1
    gdt_entry(0xC093, 0, 0xFFFFF),      # 0x18 data: flat read/write
    gdt_entry(0x008B, 0, 0x67),         # 0x20 TSS (busy, 64-bit); KVM wants a valid TR
]


def segment_from_gdt(entry: int, selector: int) -> S.kvm_segment:
    """The kvm_segment (hidden part) a CPU would load from GDT entry `entry`."""
    base = ((entry >> 16) & 0xFFFFFF) | (((entry >> 56) & 0xFF) << 24)
    limit = (entry & 0xFFFF) | (((entry >> 48) & 0xF) << 16)
    g = (entry >> 55) & 1
    if g:
        limit = (limit << 12) | 0xFFF
    return S.kvm_segment(
        base=base, limit=limit, selector=selector, type=(entry >> 40) & 0xF,
        present=(entry >> 47) & 1, dpl=(entry >> 45) & 3, db=(entry >> 54) & 1,
        s=(entry >> 44) & 1, l=(entry >> 53) & 1, g=g, avl=(entry >> 52) & 1,
        unusable=0 if (entry >> 47) & 1 else 1)


def write_gdt(mem, addr: int = GDT_ADDR, idt_addr: int = IDT_ADDR) -> None:
    mem.write(addr, b"".join(struct.pack("<Q", e) for e in GDT))
    mem.write(idt_addr, b"\0" * 8)


def write_identity_page_tables(mem, pml4: int = PML4_ADDR, gib: int = IDENTITY_MAP_GIB) -> int:
    """Identity-map [0, gib GiB) with 2 MiB pages; returns the CR3 value."""
    if not 1 <= gib <= 64:
        raise ValueError(f"identity map of {gib} GiB: 1-64 supported")
    pdpt = pml4 + 0x1000
    pd = pml4 + 0x2000
    mem.write(pml4, struct.pack("<Q", pdpt | 0x3) + b"\0" * (4096 - 8))
    mem.write(pdpt, b"".join(struct.pack("<Q", (pd + i * 0x1000) | 0x3) for i in range(gib))
              + b"\0" * (4096 - 8 * gib))
    # Present | writable | page size (2 MiB).
    entries = b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(512 * gib))
    mem.write(pd, entries)
    return pml4


def _load_flat_segments(sregs: S.kvm_sregs, code_sel: int, gdt_addr: int, idt_addr: int) -> None:
    sregs.cs = segment_from_gdt(GDT[code_sel >> 3], code_sel)
    data = segment_from_gdt(GDT[DATA_SEL >> 3], DATA_SEL)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = segment_from_gdt(GDT[TSS_SEL >> 3], TSS_SEL)
    sregs.gdt.base, sregs.gdt.limit = gdt_addr, len(GDT) * 8 - 1
    sregs.idt.base, sregs.idt.limit = idt_addr, 0


def setup_long_mode(vcpu, mem, entry: int, stack: int = 0x8FF0, rsi: int = 0,
                    gdt_addr: int = GDT_ADDR, idt_addr: int = IDT_ADDR,
                    pml4: int = PML4_ADDR, identity_gib: int = IDENTITY_MAP_GIB) -> None:
    """64-bit mode with paging (identity map of the first `identity_gib` GiB, at most
    64: the tables then need 2 + identity_gib pages from `pml4`), CS=0x10, rip=entry.
    `rsi` carries the boot_params address for the Linux 64-bit boot protocol."""
    write_gdt(mem, gdt_addr, idt_addr)
    cr3 = write_identity_page_tables(mem, pml4, identity_gib)
    sregs = vcpu.get_sregs()
    _load_flat_segments(sregs, CODE64_SEL, gdt_addr, idt_addr)
    sregs.cr3 = cr3
    sregs.cr4 |= X86_CR4_PAE
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET | X86_CR0_NE
    sregs.efer |= EFER_LME | EFER_LMA
    vcpu.set_sregs(sregs)
    vcpu.set_regs(S.kvm_regs(rip=entry, rsp=stack, rbp=stack, rsi=rsi, rflags=0x2))


def setup_protected_mode(vcpu, mem, entry: int, rbx: int = 0, gdt_addr: int = GDT_ADDR,
                         idt_addr: int = IDT_ADDR) -> None:
    """32-bit flat protected mode, paging off, CS=0x08 (the PVH entry state; `rbx` is
    the hvm_start_info address)."""
    write_gdt(mem, gdt_addr, idt_addr)
    sregs = vcpu.get_sregs()
    _load_flat_segments(sregs, CODE32_SEL, gdt_addr, idt_addr)
    sregs.cr0 = (sregs.cr0 | X86_CR0_PE | X86_CR0_ET) & ~X86_CR0_PG
    sregs.cr4 = 0
    sregs.efer = 0
    vcpu.set_sregs(sregs)
    vcpu.set_regs(S.kvm_regs(rip=entry, rbx=rbx, rflags=0x2))


def setup_fpu(vcpu) -> None:
    """The x87/SSE state after FNINIT: control word 0x37f, MXCSR 0x1f80."""
    vcpu.set_fpu(S.kvm_fpu(fcw=0x37F, mxcsr=0x1F80))


def setup_xcr0(vcpu, supported_cpuid, want: int | None = None) -> int:
    """Set XCR0 to `want` (default: every state component CPUID.0xD.0 lists, which is
    what Linux enables) & what CPUID.0xD.0 allows, x87 always; returns the value set.
    Call after set_cpuid2.

    Why all of them rather than x87/SSE/AVX: the guest's own XSETBV is intercepted on
    hardware, so KVM learns the guest's XCR0 there, but nested under QEMU TCG (the lab)
    it is not, and KVM then answers CPUID.0xD.0 EBX (the XSAVE area size) for our initial
    value; Linux compares that with its own sum and warns ("XSAVE consistency problem").
    Starting with the value Linux will set keeps both views equal."""
    allowed = XFEATURE_X87
    for e in supported_cpuid:
        if e.function == 0xD and e.index == 0:
            allowed = e.eax | (e.edx << 32)
    value = ((allowed if want is None else want) & allowed) | XFEATURE_X87
    if value & XFEATURE_AVX and not value & XFEATURE_SSE:
        value &= ~XFEATURE_AVX
    xcrs = S.kvm_xcrs(nr_xcrs=1)
    xcrs.xcrs[0].xcr = 0
    xcrs.xcrs[0].value = value
    vcpu.set_xcrs(xcrs)
    return value


def _lvt_mode(reg: int, mode: int) -> int:
    return (reg & ~0x700) | (mode << 8)


def setup_lapic(vcpu) -> None:
    """LINT0 as ExtINT (the PIC's output), LINT1 as NMI, like a PC's BIOS leaves them."""
    lapic = vcpu.get_lapic()
    regs = bytearray(bytes(lapic))  # not lapic.regs: a c_char array stops at the first NUL
    lvt0 = int.from_bytes(regs[APIC_LVT0:APIC_LVT0 + 4], "little")
    lvt1 = int.from_bytes(regs[APIC_LVT1:APIC_LVT1 + 4], "little")
    regs[APIC_LVT0:APIC_LVT0 + 4] = _lvt_mode(lvt0, APIC_MODE_EXTINT).to_bytes(4, "little")
    regs[APIC_LVT1:APIC_LVT1 + 4] = _lvt_mode(lvt1, APIC_MODE_NMI).to_bytes(4, "little")
    C.memmove(C.addressof(lapic), bytes(regs), len(regs))
    vcpu.set_lapic(lapic)
