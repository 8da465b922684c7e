"""8250 UART register behaviour: DLAB, LSR, IER/IIR interrupts, FIFO, loopback, state.

Every test runs against both the pure-Python Serial and the C FastSerial (which batches
TX: what reached `out` is compared after flush()); the batching rules have their own tests.
"""
import os

import pytest

from devices.legacy import serial as S
from devices.legacy._serial import TX_BUFFER, FastSerial

IMPLS = {"python": S.Serial, "cython": FastSerial}


class Line:
    def __init__(self):
        self.count = 0

    def trigger(self):
        self.count += 1

    def fileno(self):
        return -1


@pytest.fixture(params=list(IMPLS))
def impl(request):
    return IMPLS[request.param]


@pytest.fixture
def make(impl):
    def _make():
        out, line = [], Line()
        return impl(line, out=out.append), out, line
    return _make


def sent(uart, out) -> bytes:
    uart.flush()
    return b"".join(out)


def test_tx_goes_to_out_and_lsr_says_empty(make):
    uart, out, line = make()
    for b in b"hi":
        uart.write(S.DATA, 1, b)
    assert sent(uart, out) == b"hi"
    assert uart.read(S.LSR, 1) == S.LSR_THRE | S.LSR_TEMT
    assert line.count == 0  # THR interrupt not enabled


def test_dlab_switches_data_and_ier_to_divisor_latches(make):
    uart, out, _ = make()
    uart.write(S.LCR, 1, 0x83)
    uart.write(S.DATA, 1, 0x01)
    uart.write(S.IER, 1, 0x00)
    assert (uart.read(S.DATA, 1), uart.read(S.IER, 1)) == (0x01, 0x00)
    uart.write(S.LCR, 1, 0x03)
    assert sent(uart, out) == b""
    assert uart.read(S.IER, 1) == 0
    uart.write(S.IER, 1, 0xFF)
    assert uart.read(S.IER, 1) == 0x0F  # only the 4 defined bits stick (Linux checks this)


def test_rx_interrupt_and_fifo(make):
    uart, _, line = make()
    assert uart.read(S.IIR, 1) == S.IIR_NONE
    uart.write(S.IER, 1, S.IER_RDA)
    assert uart.enqueue_input(b"ab") == 2
    assert line.count == 1
    assert uart.read(S.LSR, 1) & S.LSR_DR
    assert uart.read(S.IIR, 1) == S.IIR_RDA
    assert uart.read(S.DATA, 1) == ord("a")
    assert uart.read(S.DATA, 1) == ord("b")
    assert not uart.read(S.LSR, 1) & S.LSR_DR
    assert uart.read(S.IIR, 1) == S.IIR_NONE
    assert uart.enqueue_input(b"x" * 100) == S.RX_FIFO_SIZE
    assert uart.enqueue_input(b"y") == 0
    uart.write(S.IIR, 1, S.FCR_ENABLE | S.FCR_CLEAR_RX)
    assert uart.read(S.IIR, 1) & 0xC0 == 0xC0  # 16550A FIFO bits
    assert not uart.read(S.LSR, 1) & S.LSR_DR


def test_thr_empty_interrupt_raised_on_enable_and_acknowledged_by_iir_read(make):
    uart, out, line = make()
    uart.write(S.IER, 1, S.IER_THRE)
    assert line.count == 1
    assert uart.read(S.IIR, 1) == S.IIR_THRE
    assert uart.read(S.IIR, 1) == S.IIR_NONE
    uart.write(S.DATA, 1, ord("z"))
    assert line.count == 2 and sent(uart, out) == b"z"
    assert uart.read(S.IIR, 1) == S.IIR_THRE


def test_rx_outranks_thr_empty(make):
    uart, _, _ = make()
    uart.write(S.IER, 1, S.IER_THRE | S.IER_RDA)
    uart.enqueue_input(b"q")
    assert uart.read(S.IIR, 1) == S.IIR_RDA


def test_loopback_echoes_and_maps_modem_lines(make):
    uart, out, _ = make()
    uart.write(S.MCR, 1, S.MCR_LOOP | S.MCR_OUT2 | S.MCR_RTS)
    assert uart.read(S.MSR, 1) & 0xF0 == 0x90   # what Linux's autoconfig expects
    uart.write(S.DATA, 1, 0x5A)
    assert sent(uart, out) == b"" and uart.read(S.DATA, 1) == 0x5A
    uart.write(S.MCR, 1, S.MCR_OUT2)
    assert uart.read(S.MSR, 1) == S.MSR_DCD | S.MSR_DSR | S.MSR_CTS


def test_scratch_register_and_state_round_trip(make, impl):
    uart, _, line = make()
    uart.write(S.SCR, 1, 0xA5)
    uart.write(S.IER, 1, S.IER_RDA)
    uart.enqueue_input(b"kept")
    saved = uart.save()
    copy = impl.restore(saved, line)
    assert copy.read(S.SCR, 1) == 0xA5
    assert bytes(copy.read(S.DATA, 1) for _ in range(4)) == b"kept"
    assert copy.save()["ier"] == S.IER_RDA


# -- FastSerial's TX batching ------------------------------------------------------------------

def fast():
    out, line = [], Line()
    return FastSerial(line, out=out.append), out, line


def test_fast_tx_goes_out_per_line_not_per_byte():
    uart, out, _ = fast()
    for b in b"one\ntwo\nthr":
        assert uart.read(S.LSR, 1) & S.LSR_THRE  # Linux polls LSR before each byte
        uart.write(S.DATA, 1, b)
    assert out == [b"one\n", b"two\n"]  # the tail waits for a newline, IER, age or flush
    assert uart.metrics == {"tx_bytes": 11, "flushes": 2}
    uart.flush()
    assert out[-1] == b"thr"


def test_fast_tx_tail_goes_out_when_the_guest_ends_a_burst():
    """Linux's console write and tty transmitter both end a burst by writing IER."""
    uart, out, _ = fast()
    for b in b"# ":
        uart.write(S.DATA, 1, b)
    assert uart.read(S.IIR, 1) and out == []  # IIR reads in the interrupt handler: no flush
    uart.write(S.IER, 1, 0)
    assert out == [b"# "]


def test_fast_tx_full_buffer_goes_out_whole():
    uart, out, _ = fast()
    for _ in range(TX_BUFFER + 10):
        uart.write(S.DATA, 1, ord("x"))
    assert [len(c) for c in out] == [TX_BUFFER]
    uart.flush()
    assert b"".join(out) == b"x" * (TX_BUFFER + 10)


def test_fast_interrupt_through_the_eventfd():
    class EventfdLine:
        def __init__(self):
            self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

        def trigger(self):
            raise AssertionError("the C path writes the eventfd itself")

        def fileno(self):
            return self.fd

    line = EventfdLine()
    try:
        uart = FastSerial(line)
        uart.write(S.IER, 1, S.IER_THRE)
        assert os.eventfd_read(line.fd) == 1
        uart.write(S.IER, 1, S.IER_THRE | S.IER_RDA)
        uart.enqueue_input(b"k")  # RDA outranks the pending THRE: no new edge
        assert uart.read(S.IIR, 1) == S.IIR_RDA
    finally:
        os.close(line.fd)


def test_fast_out_failure_fails_the_access():
    def broken(data):
        raise OSError(28, "No space left on device")

    uart = FastSerial(Line(), out=broken)
    with pytest.raises(OSError, match="No space"):
        uart.write(S.DATA, 1, ord("\n"))
    uart.write(S.DATA, 1, ord("a"))  # the device itself goes on
    assert uart.read(S.LSR, 1) & S.LSR_THRE


def test_fast_serves_the_run_loop_in_c():
    cap = FastSerial(Line()).c_io_handler()
    assert type(cap).__name__ == "PyCapsule"
