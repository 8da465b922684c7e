"""i8042 reset and probes; the ACPI sleep/reset port; pvpanic."""
from devices.legacy.i8042 import I8042
from devices.legacy.power import AcpiPowerPort, PvPanic


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


def test_acpi_sleep_port_tells_poweroff_from_reset():
    events = []
    pm = AcpiPowerPort(events.append)
    pm.write(0, 1, (5 << 2) | (1 << 5))    # what Linux writes for S5 with \_S5 = 5
    pm.write(0, 1, 1)                        # the FADT reset value
    pm.write(0, 1, (3 << 2) | (1 << 5))    # S3: not ours, ignored
    assert events == ["poweroff", "reboot"]
    assert pm.read(0, 1) == 0


def test_pvpanic():
    events = []
    p = PvPanic(events.append)
    assert p.read(0, 1) == 3
    p.write(0, 1, 1)
    p.write(0, 1, 2)
    assert events == ["panic", "crash_loaded"]
