"""i8042 reset and probes; the ACPI sleep/reset port; pvpanic."""
from devices.legacy.i8042 import I8042
from devices.legacy.power import AcpiPm, AcpiReset, PvPanic


def test_i8042_reset_command_reports_reset():
    events = []
    kbd = I8042(on_reset=lambda: events.append("reset"))
    assert kbd.read(0, 1) & 0x02 == 0        # input buffer empty: Linux's kb_wait passes
    kbd.write(0, 1, 0xFE)
    assert events == ["reset"]


def test_i8042_self_test_and_command_byte():
    kbd = I8042(on_reset=lambda: None)
    kbd.write(0, 1, 0xAA)
    assert kbd.read(0, 1) & 0x01
    assert kbd.data_port.read(0, 1) == 0x55
    assert not kbd.read(0, 1) & 0x01
    kbd.write(0, 1, 0x60)
    kbd.data_port.write(0, 1, 0x47)
    kbd.write(0, 1, 0x20)
    assert kbd.data_port.read(0, 1) == 0x47
    restored = I8042.restore(kbd.save(), on_reset=lambda: None)
    assert restored.state == kbd.state


def test_pm1_control_sleep_type_5_with_slp_en_is_poweroff():
    events = []
    pm = AcpiPm(events.append)
    cnt = pm.control_block
    assert cnt.read(0, 2) & 1                       # SCI_EN: always in ACPI mode
    cnt.write(0, 2, (5 << 10) | 1)                  # ACPICA writes SLP_TYP first...
    assert events == []
    cnt.write(0, 2, (5 << 10) | (1 << 13) | 1)      # ...then with SLP_EN
    assert events == ["poweroff"]
    cnt.write(0, 2, (3 << 10) | (1 << 13))          # S3: not offered, ignored
    assert events == ["poweroff"]
    assert not cnt.read(0, 2) & (1 << 13)           # SLP_EN is write-only
    cnt.write(1, 1, (5 << 2) | (1 << 5))            # the same as a byte write to the high half
    assert events == ["poweroff", "poweroff"]


def test_pm1_event_block_status_reads_clear_and_enable_sticks():
    pm = AcpiPm(lambda e: None)
    evt = pm.event_block
    evt.write(0, 2, 0xFFFF)                          # write-1-to-clear status
    assert evt.read(0, 2) == 0
    evt.write(2, 2, 0x0121)
    assert evt.read(2, 2) == 0x0121 and evt.read(0, 4) == 0x0121 << 16
    restored = AcpiPm.restore(pm.save(), lambda e: None)
    assert restored.state == pm.state


def test_acpi_reset_register():
    events = []
    r = AcpiReset(events.append)
    r.write(0, 1, 2)
    r.write(0, 1, 1)
    assert events == ["reboot"] and r.read(0, 1) == 0


def test_pvpanic():
    events = []
    p = PvPanic(events.append)
    assert p.read(0, 1) == 3
    p.write(0, 1, 1)
    p.write(0, 1, 2)
    assert events == ["panic", "crash_loaded"]
