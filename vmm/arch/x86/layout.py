"""Guest-physical addresses the x86 boot code uses (one table, so nothing overlaps).

Low memory below 1 MiB holds the boot structures; the kernel goes where its ELF program
headers (or the bzImage protocol) say, normally 16 MiB; the initrd goes at the top of
RAM below the 32-bit MMIO hole. Devices live in the hole [3 GiB, 4 GiB).
"""
from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# -- low memory (all below the EBDA at 0x9FC00, inside e820 RAM) -----------------------
# 0x500-0x547: GDT + IDT, 0x9000-0xEFFF: identity page tables (vmm.arch.x86.regs)
PVH_INFO_ADDR = 0x6000       # hvm_start_info
PVH_MODLIST_ADDR = 0x6040    # hvm_modlist_entry[1] (the initrd)
PVH_MEMMAP_ADDR = 0x6080     # hvm_memmap_table_entry[...] (up to 128 entries, 3 KiB)
ZERO_PAGE_ADDR = 0x7000      # boot_params for the 64-bit boot protocol
BOOT_STACK_TOP = 0x8FF0
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 64 * KiB       # well below the next structure; the kernel caps it anyway

# -- legacy BIOS area (e820 reserved): ACPI tables, where Linux also scans for RSDP ----
ACPI_ADDR = 0xE0000
ACPI_MAX = 0x20000

HIGH_MEMORY = 1 * MiB
DEFAULT_KERNEL_ADDR = 16 * MiB   # bzImage: where the protected-mode kernel is loaded

# -- the 32-bit MMIO hole --------------------------------------------------------------
MMIO_HOLE_START = 3 * GiB
MMIO_HOLE_END = 4 * GiB
VIRTIO_MMIO_BASE = 0xD000_0000   # first virtio-mmio window; one 4 KiB page each
VIRTIO_MMIO_SIZE = 0x1000
IOAPIC_ADDR = 0xFEC0_0000
LAPIC_ADDR = 0xFEE0_0000

# -- legacy I/O ports and IRQs ---------------------------------------------------------
COM1_PORT = 0x3F8
COM1_IRQ = 4
I8042_DATA_PORT = 0x60
I8042_CMD_PORT = 0x64
PVPANIC_PORT = 0x505
ACPI_RESET_PORT = 0x3C0      # FADT reset register (one byte)
ACPI_PM1A_EVT_PORT = 0x600   # PM1a status (2 bytes) + enable (2 bytes)
ACPI_PM1A_CNT_PORT = 0x604   # PM1a control (2 bytes): SCI_EN, SLP_TYP, SLP_EN
ACPI_SCI_IRQ = 9
# ISA IRQs Linux maps identically to I/O APIC pins (legacy PIC platform), so a command
# line's `virtio_mmio.device=...:IRQ` works. Not ours to give: 0 (PIT), 2 (cascade),
# 4 (COM1), 8 (RTC slot), 9 (SCI); 1 and 12 stay free because the FADT says "no 8042".
VIRTIO_IRQS = (5, 6, 7, 10, 11, 12, 13, 14, 15, 3, 1)
