"""Power events a guest can raise through I/O ports: the ACPI sleep/reset port and pvpanic.

    pm = AcpiPowerPort(on_event)        # FADT sleep control/status + reset register
    panic = PvPanic(on_event)           # QEMU0001 at port 0x505
    on_event("poweroff" | "reboot" | "panic" | "crash_loaded")

The ACPI port is one byte: a write with SLP_EN (bit 5) and sleep type 5 (bits 2-4, the
value in \\_S5) is poweroff; the FADT's reset value (1) is a reboot; reads return 0
(the wake status bit never set). pvpanic reads as its capability bits and reports
writes of PANICKED (bit 0) / CRASH_LOADED (bit 1).
"""
from __future__ import annotations

from typing import Callable

SLEEP_ENABLE = 1 << 5
SLEEP_TYPE_SHIFT, SLEEP_TYPE_MASK = 2, 0x7
SLEEP_TYPE_S5 = 5
RESET_VALUE = 0x01
PVPANIC_PANICKED = 1 << 0
PVPANIC_CRASH_LOADED = 1 << 1


class AcpiPowerPort:
    def __init__(self, on_event: Callable[[str], None]) -> None:
        self.on_event = on_event

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if value & SLEEP_ENABLE:
            if (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK == SLEEP_TYPE_S5:
                self.on_event("poweroff")
        elif value == RESET_VALUE:
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
