"""Legacy PC devices on the PIO bus: the 8250 UART (`serial`), the i8042 controller
enough for `reboot=k` (`i8042`), the ACPI sleep/reset port and pvpanic (`power`).

Each is a `devices.interfaces.BusDevice` (`read(offset, size)` / `write(offset, size,
value)`) whose state is one plain-data object (`.state`, a `state.State`; `save()` / `restore()`).
"""
