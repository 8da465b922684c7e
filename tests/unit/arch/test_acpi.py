"""ACPI tables: checksums, lengths, FADT/MADT fields at their spec offsets, AML bytes."""
import struct

import pytest

from vmm.arch.x86 import acpi, layout
from vmm.arch.x86.acpi import aml, tables


def _tables(blob: bytes, base: int) -> dict[bytes, bytes]:
    """Walk RSDP -> XSDT -> tables (and FADT -> DSDT) like a guest would."""
    assert blob[:8] == b"RSD PTR "
    xsdt_addr = struct.unpack_from("<Q", blob, 24)[0]

    def table_at(addr):
        length = struct.unpack_from("<I", blob, addr - base + 4)[0]
        return blob[addr - base:addr - base + length]

    xsdt = table_at(xsdt_addr)
    out = {b"XSDT": xsdt}
    for i in range((len(xsdt) - 36) // 8):
        t = table_at(struct.unpack_from("<Q", xsdt, 36 + 8 * i)[0])
        out[t[:4]] = t
    out[b"DSDT"] = table_at(struct.unpack_from("<Q", out[b"FACP"], 140)[0])
    return out


@pytest.mark.parametrize("ncpus", [1, 4, 64])
def test_every_table_checksums_to_zero(ncpus):
    blob, rsdp = acpi.build(base=layout.ACPI_ADDR, ncpus=ncpus)
    assert rsdp == layout.ACPI_ADDR
    assert sum(blob[:20]) % 256 == 0 and sum(blob[:36]) % 256 == 0
    assert blob[15] == 2 and struct.unpack_from("<I", blob, 20)[0] == 36
    found = _tables(blob, layout.ACPI_ADDR)
    assert set(found) == {b"XSDT", b"FACP", b"APIC", b"DSDT"}
    for sig, t in found.items():
        assert sum(t) % 256 == 0, sig
        assert struct.unpack_from("<I", t, 4)[0] == len(t)
    assert len(found[b"FACP"]) == 276


def test_fadt_is_a_classic_platform_with_pm1_blocks_sci_and_reset():
    t = tables.fadt(0x1234, 0x5640, sci_irq=9, pm1a_evt=0x600, pm1a_cnt=0x604, reset_port=0x3C0)
    assert struct.unpack_from("<I", t, 36)[0] == 0x5640 and struct.unpack_from("<Q", t, 132)[0] == 0x5640
    assert struct.unpack_from("<I", t, 40)[0] == 0x1234
    assert struct.unpack_from("<Q", t, 140)[0] == 0x1234
    assert struct.unpack_from("<H", t, 46)[0] == 9
    assert struct.unpack_from("<I", t, 48)[0] == 0          # SMI_CMD: always in ACPI mode
    assert struct.unpack_from("<II", t, 56) == (0x600, 0)
    assert struct.unpack_from("<II", t, 64) == (0x604, 0)
    assert (t[88], t[89], t[91], t[92]) == (4, 2, 0, 0)     # PM1 lengths; no PM timer, no GPE0
    flags = struct.unpack_from("<I", t, 112)[0]
    # Not hardware-reduced: Linux keeps the legacy PIC and identity-maps ISA IRQs.
    assert not flags & tables.FADT_HW_REDUCED_ACPI
    assert flags & tables.FADT_RESET_REG_SUP and flags & tables.FADT_PWR_BUTTON
    boot_arch = struct.unpack_from("<H", t, 109)[0]
    assert boot_arch & (1 << 5) and not boot_arch & (1 << 1)  # no CMOS RTC, no 8042
    assert t[116:128] == bytes([1, 8, 0, 1]) + struct.pack("<Q", 0x3C0)
    assert t[128] == 1
    assert t[148:160] == bytes([1, 32, 0, 0]) + struct.pack("<Q", 0x600)
    assert t[172:184] == bytes([1, 16, 0, 0]) + struct.pack("<Q", 0x604)
    assert t[8] == 6


def test_facs_is_64_bytes_and_aligned_where_the_fadt_points():
    f = tables.facs()
    assert len(f) == 64 and f[:4] == b"FACS" and struct.unpack_from("<I", f, 4)[0] == 64
    blob, _ = acpi.build(base=layout.ACPI_ADDR, ncpus=2)
    fadt = _tables(blob, layout.ACPI_ADDR)[b"FACP"]
    facs_addr = struct.unpack_from("<Q", fadt, 132)[0]
    assert facs_addr % 64 == 0
    off = facs_addr - layout.ACPI_ADDR
    assert blob[off:off + 64] == f


def test_madt_overrides_the_sci_as_active_high_level():
    t = tables.madt(1, layout.LAPIC_ADDR, layout.IOAPIC_ADDR, sci_irq=9)
    iso = bytes([2, 10, 0, 9]) + struct.pack("<IH", 9, 0x0D)
    assert iso in t
    assert iso not in tables.madt(1, layout.LAPIC_ADDR, layout.IOAPIC_ADDR)


@pytest.mark.parametrize("ncpus", [1, 2, 4, 16])
def test_madt_lists_one_enabled_local_apic_per_vcpu(ncpus):
    t = tables.madt(ncpus, layout.LAPIC_ADDR, layout.IOAPIC_ADDR)
    assert struct.unpack_from("<II", t, 36) == (layout.LAPIC_ADDR, 1)
    pos, lapics, ioapics, nmis = 44, [], [], []
    while pos < len(t):
        kind, length = t[pos], t[pos + 1]
        entry = t[pos:pos + length]
        if kind == 0:
            assert length == 8
            lapics.append(struct.unpack_from("<BBI", entry, 2))
        elif kind == 1:
            assert length == 12
            ioapics.append(struct.unpack_from("<BBII", entry, 2))
        elif kind == 4:
            assert length == 6
            nmis.append(entry)
        pos += length
    assert pos == len(t)
    assert lapics == [(i, i, 1) for i in range(ncpus)]
    assert ioapics == [(ncpus, 0, layout.IOAPIC_ADDR, 0)]
    assert nmis == [bytes([4, 6, 0xFF, 0, 0, 1])]


def test_madt_rejects_impossible_cpu_counts():
    with pytest.raises(ValueError):
        tables.madt(0, 0, 0)
    with pytest.raises(ValueError):
        tables.madt(255, 0, 0)


def test_dsdt_declares_s5_and_pvpanic():
    body = acpi.dsdt_aml()
    s5 = bytes([0x08]) + b"\\_S5_" + bytes([0x12, 0x05, 0x02, 0x0A, 0x05, 0x00])
    assert body.startswith(s5)
    assert b"\x0dQEMU0001\x00" in body
    assert bytes([0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01, 0x79, 0x00]) in body


def test_aml_pkg_length_encodings():
    assert aml.pkg_length(0) == b"\x01"
    assert aml.pkg_length(62) == b"\x3f"
    # 63 body bytes + 2 length bytes = 65 = 0x41: lead 0x40 | 1, then 0x41 >> 4
    assert aml.pkg_length(63) == bytes([0x41, 0x04])
    n = 5000
    enc = aml.pkg_length(n)
    total = n + len(enc)
    assert enc[0] >> 6 == len(enc) - 1
    assert (enc[0] & 0x0F) | int.from_bytes(enc[1:], "little") << 4 == total


def test_aml_integers_strings_names():
    assert aml.integer(0) == b"\x00" and aml.integer(1) == b"\x01"
    assert aml.integer(5) == b"\x0a\x05"
    assert aml.integer(0x1234) == b"\x0b\x34\x12"
    assert aml.integer(0x12345678) == b"\x0c\x78\x56\x34\x12"
    assert aml.integer(1 << 40) == b"\x0e" + (1 << 40).to_bytes(8, "little")
    assert aml.string("ab") == b"\x0dab\x00"
    assert aml.name_string("\\_SB") == b"\\_SB_"
    assert aml.name_string("_SB.PEVT") == b"\x2e_SB_PEVT"
    assert aml.name_string("A.B.C") == b"\x2f\x03A___B___C___"
    with pytest.raises(ValueError):
        aml.name_string("TOOLONG")


def test_aml_device_and_scope_lengths():
    dev = aml.device("PEVT", [aml.name("_STA", 0x0F)])
    # 5B 82 len "PEVT" 08 "_STA" 0A 0F  -> body 4 + 7 = 11, pkg length 12
    assert dev == b"\x5b\x82\x0cPEVT\x08_STA\x0a\x0f"
    sc = aml.scope("\\_SB_", [dev])
    assert sc[0] == 0x10 and sc[1] == 1 + 5 + len(dev)
