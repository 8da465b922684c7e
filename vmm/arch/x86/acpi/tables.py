"""ACPI tables for a hardware-reduced x86 microVM: RSDP, XSDT, FADT, MADT, DSDT.

Layouts from the ACPI 6.5 specification: the RSDP (36 bytes, revision 2), the common
36-byte SDT header, FADT revision 6 (276 bytes; HW_REDUCED_ACPI, sleep control/status
registers and the reset register on one I/O port), MADT (local APIC per vCPU, one I/O
APIC, LINT1 as NMI). Each function returns the table's bytes with its checksum set.
"""
from __future__ import annotations

import struct

OEM_ID = b"MMVMM "
OEM_TABLE_ID = b"MMMICROV"
CREATOR_ID = b"MMPY"
SDT_HEADER_SIZE = 36
FADT_SIZE = 276
RSDP_SIZE = 36

FADT_HW_REDUCED_ACPI = 1 << 20
FADT_RESET_REG_SUP = 1 << 10
IAPC_VGA_NOT_PRESENT = 1 << 2
IAPC_CMOS_RTC_NOT_PRESENT = 1 << 5
GAS_SYSTEM_IO = 1
GAS_ACCESS_BYTE = 1
SLEEP_TYPE_S5 = 5          # the value \_S5 holds and the guest writes back
SLEEP_ENABLE = 1 << 5      # SLP_EN in the extended sleep control register
RESET_VALUE = 0x01

MADT_LOCAL_APIC, MADT_IO_APIC, MADT_LOCAL_APIC_NMI = 0, 1, 4
MADT_PCAT_COMPAT = 1


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


def fadt(dsdt_addr: int, sleep_port: int) -> bytes:
    """Hardware-reduced FADT, revision 6.5. Sleep control, sleep status and the reset
    register are all the byte at `sleep_port` (the VMM tells the writes apart)."""
    body = bytearray(FADT_SIZE - SDT_HEADER_SIZE)

    def put(offset: int, fmt: str, *values) -> None:
        struct.pack_into("<" + fmt, body, offset - SDT_HEADER_SIZE, *values)

    put(40, "I", dsdt_addr)                        # DSDT (32-bit)
    put(109, "H", IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT)
    put(112, "I", FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP)
    body[116 - SDT_HEADER_SIZE:128 - SDT_HEADER_SIZE] = gas(sleep_port)   # RESET_REG
    put(128, "B", RESET_VALUE)
    put(131, "B", 5)                               # FADT minor version (6.5)
    put(140, "Q", dsdt_addr)                       # X_DSDT
    body[244 - SDT_HEADER_SIZE:256 - SDT_HEADER_SIZE] = gas(sleep_port)   # SLEEP_CONTROL_REG
    body[256 - SDT_HEADER_SIZE:268 - SDT_HEADER_SIZE] = gas(sleep_port)   # SLEEP_STATUS_REG
    put(268, "8s", b"MMPYVMM\0")                   # hypervisor vendor identity
    return sdt(b"FACP", 6, bytes(body))


def madt(ncpus: int, lapic_addr: int, ioapic_addr: int, ioapic_id: int | None = None) -> bytes:
    """One enabled local APIC per vCPU (UID = APIC ID = index), one I/O APIC at GSI 0,
    and LINT1 of every processor as NMI."""
    if not 1 <= ncpus <= 254:
        raise ValueError("MADT: 1-254 vCPUs (8-bit APIC IDs, 0xFF is broadcast)")
    body = struct.pack("<II", lapic_addr, MADT_PCAT_COMPAT)
    for i in range(ncpus):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, i, i, 1)
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, ncpus if ioapic_id is None else ioapic_id,
                        0, ioapic_addr, 0)
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, 0xFF, 0, 1)
    return sdt(b"APIC", 5, body)


def dsdt(aml_body: bytes) -> bytes:
    return sdt(b"DSDT", 2, aml_body)
