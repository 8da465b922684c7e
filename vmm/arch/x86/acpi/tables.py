"""ACPI tables for the x86 microVM: RSDP, XSDT, FADT, FACS, MADT, DSDT.

Layouts from the ACPI 6.5 specification: the RSDP (36 bytes, revision 2), the common
36-byte SDT header, FADT revision 6 (276 bytes), FACS (64 bytes), MADT (local APIC per
vCPU, one I/O APIC, the SCI's interrupt source override, LINT1 as NMI). Each function
returns the table's bytes with its checksum set.

Why the FADT is *not* hardware-reduced: on a HW_REDUCED_ACPI platform Linux drops the
legacy PIC (`legacy_pic = &null_legacy_pic`), so no ISA IRQ gets an identity mapping
and every interrupt number is allocated dynamically through ACPI GSIs. The 8250's fixed
IRQ 4 and the IRQs of command-line virtio-mmio devices (`virtio_mmio.device=...:5`)
then have no descriptor: request_irq fails (-EINVAL), user space never reaches the
console and virtio probes fail. A classic FADT (PM1a event/control blocks, SCI on
IRQ 9, SMI_CMD 0 = always in ACPI mode) keeps the 16 ISA IRQs identity-mapped through
the I/O APIC, which is what the command-line device list relies on.
"""
from __future__ import annotations

import struct

OEM_ID = b"MMVMM "
OEM_TABLE_ID = b"MMMICROV"
CREATOR_ID = b"MMPY"
SDT_HEADER_SIZE = 36
FADT_SIZE = 276
RSDP_SIZE = 36

FACS_SIZE = 64

FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_PWR_BUTTON = 1 << 4   # set: no fixed-feature power button
FADT_SLP_BUTTON = 1 << 5   # set: no fixed-feature sleep button
FADT_RESET_REG_SUP = 1 << 10
FADT_HW_REDUCED_ACPI = 1 << 20
FADT_FLAGS = FADT_WBINVD | FADT_PROC_C1 | FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_RESET_REG_SUP
# IAPC_BOOT_ARCH: no VGA, no CMOS RTC; the 8042 bit is left clear so Linux does not
# probe a keyboard controller (ours only serves `reboot=k`, which writes port 0x64
# directly) and IRQs 1 and 12 stay free.
IAPC_VGA_NOT_PRESENT = 1 << 2
IAPC_CMOS_RTC_NOT_PRESENT = 1 << 5
GAS_SYSTEM_IO = 1
GAS_ACCESS_UNDEFINED, GAS_ACCESS_BYTE = 0, 1
SLEEP_TYPE_S5 = 5          # the value \_S5 holds; the guest writes it into PM1a_CNT.SLP_TYP
RESET_VALUE = 0x01
PM1_EVT_LEN, PM1_CNT_LEN = 4, 2
# C2/C3 latencies above these limits mean "not supported".
P_LVL2_LAT_NONE, P_LVL3_LAT_NONE = 101, 1001

MADT_LOCAL_APIC, MADT_IO_APIC, MADT_INT_SRC_OVERRIDE, MADT_LOCAL_APIC_NMI = 0, 1, 2, 4
MADT_PCAT_COMPAT = 1
# MPS INTI flags: active high (01), level triggered (11 << 2).
MPS_ACTIVE_HIGH_LEVEL = 0x01 | (0x03 << 2)


def checksum(data: bytes) -> int:
    """The byte that makes `data` (with it in place of a 0) sum to 0 mod 256."""
    return (-sum(data)) & 0xFF


def _with_checksum(table: bytearray, offset: int) -> bytes:
    table[offset] = 0
    table[offset] = checksum(table)
    return bytes(table)


def sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A System Description Table: header + body, length and checksum filled in."""
    assert len(signature) == 4
    length = SDT_HEADER_SIZE + len(body)
    header = struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID, OEM_TABLE_ID,
                         1, CREATOR_ID, 1)
    return _with_checksum(bytearray(header + body), 9)


def rsdp(xsdt_addr: int) -> bytes:
    """ACPI 2.0+ RSDP: the first 20 bytes and all 36 have their own checksums."""
    t = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, 0, RSDP_SIZE, xsdt_addr,
                              0, b"\0\0\0"))
    t[8] = checksum(t[:20])
    t[32] = checksum(t)
    return bytes(t)


def xsdt(table_addrs: list[int]) -> bytes:
    return sdt(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in table_addrs))


def gas(address: int, space: int = GAS_SYSTEM_IO, bit_width: int = 8,
        access: int = GAS_ACCESS_BYTE) -> bytes:
    """Generic Address Structure (12 bytes)."""
    return struct.pack("<BBBBQ", space, bit_width, 0, access, address)


def fadt(dsdt_addr: int, facs_addr: int, *, sci_irq: int, pm1a_evt: int, pm1a_cnt: int,
         reset_port: int) -> bytes:
    """FADT revision 6.5 for a classic (not hardware-reduced) platform: PM1a event block
    (4 bytes at `pm1a_evt`), PM1a control block (2 bytes at `pm1a_cnt`), SCI on
    `sci_irq`, SMI_CMD 0 (the platform is always in ACPI mode), no PM timer, no GPEs,
    the reset register as one byte at `reset_port`."""
    body = bytearray(FADT_SIZE - SDT_HEADER_SIZE)

    def put(offset: int, fmt: str, *values) -> None:
        struct.pack_into("<" + fmt, body, offset - SDT_HEADER_SIZE, *values)

    def put_gas(offset: int, blob: bytes) -> None:
        body[offset - SDT_HEADER_SIZE:offset - SDT_HEADER_SIZE + len(blob)] = blob

    put(36, "I", facs_addr)                        # FIRMWARE_CTRL
    put(40, "I", dsdt_addr)                        # DSDT (32-bit)
    put(46, "H", sci_irq)                          # SCI_INT
    put(56, "I", pm1a_evt)                         # PM1a_EVT_BLK
    put(64, "I", pm1a_cnt)                         # PM1a_CNT_BLK
    put(88, "BB", PM1_EVT_LEN, PM1_CNT_LEN)
    put(96, "HH", P_LVL2_LAT_NONE, P_LVL3_LAT_NONE)
    put(109, "H", IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT)
    put(112, "I", FADT_FLAGS)
    put_gas(116, gas(reset_port))                  # RESET_REG
    put(128, "B", RESET_VALUE)
    put(131, "B", 5)                               # FADT minor version (6.5)
    put(132, "Q", facs_addr)                       # X_FIRMWARE_CTRL
    put(140, "Q", dsdt_addr)                       # X_DSDT
    put_gas(148, gas(pm1a_evt, bit_width=8 * PM1_EVT_LEN, access=GAS_ACCESS_UNDEFINED))
    put_gas(172, gas(pm1a_cnt, bit_width=8 * PM1_CNT_LEN, access=GAS_ACCESS_UNDEFINED))
    put(268, "8s", b"MMPYVMM\0")                   # hypervisor vendor identity
    return sdt(b"FACP", 6, bytes(body))


def facs() -> bytes:
    """Firmware ACPI Control Structure (version 2): no waking vector, no global lock.
    It has no checksum; the FADT points at it (64-byte aligned)."""
    return struct.pack("<4sIIIIIQB3sI24s", b"FACS", FACS_SIZE, 0, 0, 0, 0, 0, 2, b"\0" * 3, 0,
                       b"\0" * 24)


def madt(ncpus: int, lapic_addr: int, ioapic_addr: int, ioapic_id: int | None = None,
         sci_irq: int | None = None) -> bytes:
    """One enabled local APIC per vCPU (UID = APIC ID = index), one I/O APIC at GSI 0,
    the SCI's override (ISA `sci_irq` -> the same GSI, active high, level: without it
    Linux programs the SCI active low, a line our I/O APIC would see as asserted), and
    LINT1 of every processor as NMI."""
    if not 1 <= ncpus <= 254:
        raise ValueError("MADT: 1-254 vCPUs (8-bit APIC IDs, 0xFF is broadcast)")
    body = struct.pack("<II", lapic_addr, MADT_PCAT_COMPAT)
    for i in range(ncpus):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, i, i, 1)
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, ncpus if ioapic_id is None else ioapic_id,
                        0, ioapic_addr, 0)
    if sci_irq is not None:
        body += struct.pack("<BBBBIH", MADT_INT_SRC_OVERRIDE, 10, 0, sci_irq, sci_irq,
                            MPS_ACTIVE_HIGH_LEVEL)
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, 0xFF, 0, 1)
    return sdt(b"APIC", 5, body)


def dsdt(aml_body: bytes) -> bytes:
    return sdt(b"DSDT", 2, aml_body)
