"""Power events a guest can raise through I/O ports: the ACPI PM1a blocks, the ACPI
reset register and pvpanic.

    pm = AcpiPm(on_event)                # bus.register(0x600, 4, pm.event_block)
                                         # bus.register(0x604, 2, pm.control_block)
    reset = AcpiReset(on_event)          # FADT RESET_REG (one byte)
    panic = PvPanic(on_event)            # QEMU0001 at port 0x505
    on_event("poweroff" | "reboot" | "panic" | "crash_loaded")

PM1a event block: status (write-1-to-clear; no event is ever raised, so it reads 0)
and enable, 16 bits each. PM1a control block: SCI_EN (bit 0) always reads set — the
platform has no SMI_CMD and is always in ACPI mode; a write with SLP_EN (bit 13) and
SLP_TYP (bits 10-12) equal to the \\_S5 value is poweroff, other sleep states are
ignored (we offer none). The reset register's value (1) is a reboot. pvpanic reads as
its capability bits and reports writes of PANICKED (bit 0) / CRASH_LOADED (bit 1).
State (`AcpiPmState`) is plain data for snapshots.
"""
from __future__ import annotations

from collections.abc import Callable

from devices.legacy.state import State

SCI_EN = 1 << 0
SLP_TYP_SHIFT, SLP_TYP_MASK = 10, 0x7
SLP_EN = 1 << 13
SLEEP_TYPE_S5 = 5
RESET_VALUE = 0x01
PVPANIC_PANICKED = 1 << 0
PVPANIC_CRASH_LOADED = 1 << 1


def _merge(old: int, offset: int, size: int, value: int, width: int) -> int:
    """Write `size` bytes of `value` at byte `offset` into a `width`-byte register."""
    if offset + size > width:
        size = max(0, width - offset)
    mask = ((1 << (8 * size)) - 1) << (8 * offset)
    return (old & ~mask) | ((value << (8 * offset)) & mask)


def _extract(reg: int, offset: int, size: int) -> int:
    return (reg >> (8 * offset)) & ((1 << (8 * size)) - 1)


class AcpiPmState(State):
    FIELDS = {"pm1_enable": 0, "pm1_control": SCI_EN}


class _EventBlock:
    """PM1a_EVT_BLK: bytes 0-1 status, 2-3 enable."""

    def __init__(self, pm: "AcpiPm") -> None:
        self.pm = pm

    def read(self, offset: int, size: int) -> int:
        return _extract(self.pm.state.pm1_enable << 16, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        s = self.pm.state
        s.pm1_enable = _merge(s.pm1_enable << 16, offset, size, value, 4) >> 16


class _ControlBlock:
    """PM1a_CNT_BLK: one 16-bit register."""

    def __init__(self, pm: "AcpiPm") -> None:
        self.pm = pm

    def read(self, offset: int, size: int) -> int:
        return _extract(self.pm.state.pm1_control | SCI_EN, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        s = self.pm.state
        reg = _merge(s.pm1_control, offset, size, value, 2)
        s.pm1_control = (reg & ~SLP_EN) | SCI_EN  # SLP_EN is write-only
        if reg & SLP_EN and (reg >> SLP_TYP_SHIFT) & SLP_TYP_MASK == SLEEP_TYPE_S5:
            self.pm.on_event("poweroff")


class AcpiPm:
    """The PM1a event and control blocks; register `event_block` and `control_block`."""

    def __init__(self, on_event: Callable[[str], None], state: AcpiPmState | None = None) -> None:
        self.on_event = on_event
        self.state = state or AcpiPmState()
        self.event_block = _EventBlock(self)
        self.control_block = _ControlBlock(self)

    def save(self) -> dict:
        return self.state.asdict()

    @classmethod
    def restore(cls, data: dict, on_event: Callable[[str], None]) -> "AcpiPm":
        return cls(on_event, AcpiPmState(**data))


class AcpiReset:
    """The FADT's reset register: writing RESET_VALUE reboots."""

    def __init__(self, on_event: Callable[[str], None]) -> None:
        self.on_event = on_event

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if value & 0xFF == RESET_VALUE:
            self.on_event("reboot")


class PvPanic:
    def __init__(self, on_event: Callable[[str], None]) -> None:
        self.on_event = on_event

    def read(self, offset: int, size: int) -> int:
        return PVPANIC_PANICKED | PVPANIC_CRASH_LOADED

    def write(self, offset: int, size: int, value: int) -> None:
        if value & PVPANIC_PANICKED:
            self.on_event("panic")
        elif value & PVPANIC_CRASH_LOADED:
            self.on_event("crash_loaded")
