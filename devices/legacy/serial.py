"""8250/16550A UART: the guest console on COM1 (port 0x3F8, IRQ 4).

    uart = Serial(interrupt, out=console_write)   # out(bytes) receives every TX byte
    uart.enqueue_input(b"ls\\n")                    # host keystrokes -> guest RX, IRQ
    bus.register(0x3F8, 8, uart)

Registers (offset): 0 RBR/THR (DLL when LCR.DLAB), 1 IER (DLM when DLAB), 2 IIR/FCR,
3 LCR, 4 MCR, 5 LSR, 6 MSR, 7 SCR. Transmission is instant, so THR is always empty.
Interrupts: RX data available (IER bit 0) outranks THR empty (IER bit 1); the line is
pulsed on each new interrupt condition (the ISA line is edge-triggered). Loopback
(MCR bit 4) feeds TX back to RX and the modem outputs to the modem status lines,
which Linux's autoconfig checks. State is `SerialState`, plain data.

This is the pure-Python twin: the VMM uses devices.legacy._serial.FastSerial, the same
device served in C with TX batched (the unit tests run against both).
"""
from __future__ import annotations

import collections
import threading

from devices.legacy.state import State

RX_FIFO_SIZE = 64

IER_RDA, IER_THRE, IER_MASK = 0x01, 0x02, 0x0F
IIR_NONE, IIR_THRE, IIR_RDA, IIR_FIFO_ENABLED = 0x01, 0x02, 0x04, 0xC0
FCR_ENABLE, FCR_CLEAR_RX = 0x01, 0x02
LCR_DLAB = 0x80
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
LSR_DR, LSR_THRE, LSR_TEMT = 0x01, 0x20, 0x40
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80

DATA, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)


class SerialState(State):
    FIELDS = {
        "dll": 0x0C,            # 9600 baud, what a PC BIOS leaves
        "dlm": 0,
        "ier": 0,
        "lcr": 0x03,            # 8N1
        "mcr": MCR_OUT2,
        "fcr": 0,
        "scr": 0,
        "thre_pending": False,  # a THR-empty interrupt not yet acknowledged
        "rx": [],               # bytes received, not yet read (list[int])
    }


class Serial:
    """A 16550A with an RX FIFO; `out` gets TX bytes, `interrupt.trigger()` raises IRQ."""

    def __init__(self, interrupt, out=None,
                 state: SerialState | None = None) -> None:
        self.interrupt = interrupt
        self.out = out or (lambda data: None)
        self.state = state or SerialState()
        self._rx = collections.deque(self.state.rx, maxlen=None)
        self._lock = threading.Lock()  # vCPU threads and the console reader both touch RX

    # -- persistence ----------------------------------------------------------------------
    def save(self) -> dict:
        with self._lock:
            self.state.rx = list(self._rx)
            return self.state.asdict()

    @classmethod
    def restore(cls, data: dict, interrupt, out=None) -> "Serial":
        return cls(interrupt, out, SerialState(**data))

    # -- host side ------------------------------------------------------------------------
    def enqueue_input(self, data: bytes) -> int:
        """Queue host bytes for the guest; returns how many fit in the FIFO."""
        with self._lock:
            room = max(0, RX_FIFO_SIZE - len(self._rx))
            taken = data[:room]
            was_pending = self._iir_locked() != IIR_NONE
            self._rx.extend(taken)
            fire = taken and not was_pending and self._iir_locked() != IIR_NONE
        if fire:
            self.interrupt.trigger()
        return len(taken)

    def flush(self) -> None:
        """Nothing is buffered here (every TX byte goes to `out` at once); FastSerial's API."""

    def rx_room(self) -> int:
        with self._lock:
            return RX_FIFO_SIZE - len(self._rx)

    # -- interrupt identification ----------------------------------------------------------
    def _iir_locked(self) -> int:
        s = self.state
        if s.ier & IER_RDA and self._rx:
            return IIR_RDA
        if s.ier & IER_THRE and s.thre_pending:
            return IIR_THRE
        return IIR_NONE

    # -- bus device ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            return self._read(offset)

    def _read(self, offset: int) -> int:
        s = self.state
        dlab = s.lcr & LCR_DLAB
        if offset == DATA:
            if dlab:
                return s.dll
            return self._rx.popleft() if self._rx else 0
        if offset == IER:
            return s.dlm if dlab else s.ier
        if offset == IIR:
            iir = self._iir_locked()
            if iir == IIR_THRE:
                s.thre_pending = False  # reading IIR acknowledges THR empty
            return iir | (IIR_FIFO_ENABLED if s.fcr & FCR_ENABLE else 0)
        if offset == LCR:
            return s.lcr
        if offset == MCR:
            return s.mcr
        if offset == LSR:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self._rx else 0)
        if offset == MSR:
            if s.mcr & MCR_LOOP:
                m = s.mcr
                return ((MSR_CTS if m & MCR_RTS else 0) | (MSR_DSR if m & MCR_DTR else 0)
                        | (MSR_RI if m & MCR_OUT1 else 0) | (MSR_DCD if m & MCR_OUT2 else 0))
            return MSR_DCD | MSR_DSR | MSR_CTS
        if offset == SCR:
            return s.scr
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        out = None
        with self._lock:
            before = self._iir_locked()
            out = self._write(offset, value)
            fire = before == IIR_NONE and self._iir_locked() != IIR_NONE
        if out is not None:
            self.out(out)
        if fire:
            self.interrupt.trigger()

    def _write(self, offset: int, value: int) -> bytes | None:
        s = self.state
        dlab = s.lcr & LCR_DLAB
        if offset == DATA:
            if dlab:
                s.dll = value
                return None
            if s.mcr & MCR_LOOP:
                if len(self._rx) < RX_FIFO_SIZE:
                    self._rx.append(value)
                s.thre_pending = True
                return None
            # Sent at once: THR is empty again, which is itself an interrupt condition.
            s.thre_pending = True
            return bytes([value])
        if offset == IER:
            if dlab:
                s.dlm = value
            else:
                enabling_thre = value & IER_THRE and not s.ier & IER_THRE
                s.ier = value & IER_MASK
                if enabling_thre:
                    s.thre_pending = True   # THR is empty: enabling ETBEI raises it at once
        elif offset == IIR:
            s.fcr = value & 0xC9
            if value & FCR_CLEAR_RX:
                self._rx.clear()
        elif offset == LCR:
            s.lcr = value
        elif offset == MCR:
            s.mcr = value & 0x1F
        elif offset == SCR:
            s.scr = value
        return None
