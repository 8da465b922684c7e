"""ACPI for the microVM: tables (`tables`), a small AML encoder (`aml`), and `build`,
which lays the whole set out from one base address.

    blob, rsdp_addr = build(base=0xE0000, ncpus=4)
    mem.write(0xE0000, blob)      # RSDP first (Linux also finds it by scanning 0xE0000-)

The FADT describes a classic PC (PM1a blocks, SCI) rather than a hardware-reduced one;
`tables` says why. Its registers are served by `devices.legacy.power.AcpiPm`.

The DSDT declares \\_S5 (sleep type 5: the guest's poweroff) and the pvpanic device
(QEMU0001, I/O port 0x505) so a guest panic reaches the VMM.
"""
from __future__ import annotations

from vmm.arch.x86 import layout as L
from vmm.arch.x86.acpi import aml, tables


def dsdt_aml(pvpanic_port: int = L.PVPANIC_PORT) -> bytes:
    pvpanic = aml.device("PEVT", [
        aml.name("_HID", aml.string("QEMU0001")),
        aml.name("_STA", 0x0F),
        aml.name("_CRS", aml.resource_template([aml.io_port(pvpanic_port, 1)])),
    ])
    return (aml.name("\\_S5_", aml.package([tables.SLEEP_TYPE_S5, 0]))
            + aml.scope("\\_SB_", [pvpanic]))


def _align(n: int, a: int = 16) -> int:
    return (n + a - 1) & ~(a - 1)


def build(base: int = L.ACPI_ADDR, ncpus: int = 1,
          pvpanic_port: int = L.PVPANIC_PORT) -> tuple[bytes, int]:
    """All tables laid out from `base`: RSDP, XSDT, FADT, FACS, MADT, DSDT. Returns the
    blob and the RSDP address (== base)."""
    rsdp_addr = base
    xsdt_addr = base + _align(tables.RSDP_SIZE)
    dsdt_blob = tables.dsdt(dsdt_aml(pvpanic_port))
    madt_blob = tables.madt(ncpus, L.LAPIC_ADDR, L.IOAPIC_ADDR, sci_irq=L.ACPI_SCI_IRQ)
    xsdt_len = tables.SDT_HEADER_SIZE + 8 * 2
    fadt_addr = xsdt_addr + _align(xsdt_len)
    facs_addr = _align(fadt_addr + tables.FADT_SIZE, 64)
    madt_addr = facs_addr + tables.FACS_SIZE
    dsdt_addr = madt_addr + _align(len(madt_blob))
    fadt_blob = tables.fadt(dsdt_addr, facs_addr, sci_irq=L.ACPI_SCI_IRQ, pm1a_evt=L.ACPI_PM1A_EVT_PORT,
                            pm1a_cnt=L.ACPI_PM1A_CNT_PORT, reset_port=L.ACPI_RESET_PORT)
    parts = [(rsdp_addr, tables.rsdp(xsdt_addr)), (xsdt_addr, tables.xsdt([fadt_addr, madt_addr])),
             (fadt_addr, fadt_blob), (facs_addr, tables.facs()), (madt_addr, madt_blob),
             (dsdt_addr, dsdt_blob)]
    out = bytearray(dsdt_addr + len(dsdt_blob) - base)
    for addr, blob in parts:
        out[addr - base:addr - base + len(blob)] = blob
    if len(out) > L.ACPI_MAX:
        raise ValueError("ACPI tables do not fit their area")
    return bytes(out), rsdp_addr
