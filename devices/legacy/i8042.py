"""i8042 keyboard controller, just enough for Linux's `reboot=k` and a polite probe.

    kbd = I8042(on_reset=lambda: ...)
    bus.register(0x60, 1, kbd.data_port); bus.register(0x64, 1, kbd)

Port 0x64 reads the status (output buffer full = bit 0); writing command 0xFE pulses
the CPU reset line, which we report through `on_reset`. Commands 0x20/0x60 read/write
the command byte, 0xAA (self test) answers 0x55, 0xAB (port test) answers 0; anything
else is accepted and ignored. Port 0x60 returns the pending output byte.
"""
from __future__ import annotations

from devices.legacy.state import State

STATUS_OBF = 0x01
STATUS_SYS = 0x04          # system flag: POST passed
STATUS_CMD = 0x08          # last write was a command
CMD_READ_CB, CMD_WRITE_CB, CMD_SELF_TEST, CMD_PORT_TEST, CMD_RESET = 0x20, 0x60, 0xAA, 0xAB, 0xFE
SELF_TEST_OK = 0x55


class I8042State(State):
    FIELDS = {
        "command_byte": 0x45,   # keyboard interrupt on, translation on, system flag
        "output": None,         # int | None: the byte port 0x60 returns next
        "expect_cb": False,     # the next data write is the command byte
        "last_was_cmd": False,
    }


class _DataPort:
    def __init__(self, ctl: "I8042") -> None:
        self.ctl = ctl

    def read(self, offset: int, size: int) -> int:
        s = self.ctl.state
        value, s.output = (0 if s.output is None else s.output), None
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        s = self.ctl.state
        s.last_was_cmd = False
        if s.expect_cb:
            s.command_byte, s.expect_cb = value & 0xFF, False


class I8042:
    """The command/status port (0x64); `data_port` is the device for port 0x60."""

    def __init__(self, on_reset, state: I8042State | None = None) -> None:
        self.on_reset = on_reset
        self.state = state or I8042State()
        self.data_port = _DataPort(self)

    def save(self) -> dict:
        return self.state.asdict()

    @classmethod
    def restore(cls, data: dict, on_reset) -> "I8042":
        return cls(on_reset, I8042State(**data))

    def read(self, offset: int, size: int) -> int:
        s = self.state
        return (STATUS_SYS | (STATUS_OBF if s.output is not None else 0)
                | (STATUS_CMD if s.last_was_cmd else 0))

    def write(self, offset: int, size: int, value: int) -> None:
        s = self.state
        s.last_was_cmd = True
        value &= 0xFF
        if value == CMD_RESET:
            self.on_reset()
        elif value == CMD_READ_CB:
            s.output = s.command_byte
        elif value == CMD_WRITE_CB:
            s.expect_cb = True
        elif value == CMD_SELF_TEST:
            s.output = SELF_TEST_OK
        elif value == CMD_PORT_TEST:
            s.output = 0
