"""8250 UART register behaviour: DLAB, LSR, IER/IIR interrupts, FIFO, loopback, state."""
from devices.legacy import serial as S


class Line:
    def __init__(self):
        self.count = 0

    def trigger(self):
        self.count += 1

    def fileno(self):
        return -1


def make():
    out, line = [], Line()
    return S.Serial(line, out=out.append), out, line


def test_tx_goes_to_out_and_lsr_says_empty():
    uart, out, line = make()
    for b in b"hi":
        uart.write(S.DATA, 1, b)
    assert out == [b"h", b"i"]
    assert uart.read(S.LSR, 1) == S.LSR_THRE | S.LSR_TEMT
    assert line.count == 0  # THR interrupt not enabled


def test_dlab_switches_data_and_ier_to_divisor_latches():
    uart, out, _ = make()
    uart.write(S.LCR, 1, 0x83)
    uart.write(S.DATA, 1, 0x01)
    uart.write(S.IER, 1, 0x00)
    assert (uart.read(S.DATA, 1), uart.read(S.IER, 1)) == (0x01, 0x00)
    uart.write(S.LCR, 1, 0x03)
    assert out == []
    assert uart.read(S.IER, 1) == 0
    uart.write(S.IER, 1, 0xFF)
    assert uart.read(S.IER, 1) == 0x0F  # only the 4 defined bits stick (Linux checks this)


def test_rx_interrupt_and_fifo():
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


def test_thr_empty_interrupt_raised_on_enable_and_acknowledged_by_iir_read():
    uart, out, line = make()
    uart.write(S.IER, 1, S.IER_THRE)
    assert line.count == 1
    assert uart.read(S.IIR, 1) == S.IIR_THRE
    assert uart.read(S.IIR, 1) == S.IIR_NONE
    uart.write(S.DATA, 1, ord("z"))
    assert line.count == 2 and out == [b"z"]
    assert uart.read(S.IIR, 1) == S.IIR_THRE


def test_rx_outranks_thr_empty():
    uart, _, _ = make()
    uart.write(S.IER, 1, S.IER_THRE | S.IER_RDA)
    uart.enqueue_input(b"q")
    assert uart.read(S.IIR, 1) == S.IIR_RDA


def test_loopback_echoes_and_maps_modem_lines():
    uart, out, _ = make()
    uart.write(S.MCR, 1, S.MCR_LOOP | S.MCR_OUT2 | S.MCR_RTS)
    assert uart.read(S.MSR, 1) & 0xF0 == 0x90   # what Linux's autoconfig expects
    uart.write(S.DATA, 1, 0x5A)
    assert out == [] and uart.read(S.DATA, 1) == 0x5A
    uart.write(S.MCR, 1, S.MCR_OUT2)
    assert uart.read(S.MSR, 1) == S.MSR_DCD | S.MSR_DSR | S.MSR_CTS


def test_scratch_register_and_state_round_trip():
    uart, _, line = make()
    uart.write(S.SCR, 1, 0xA5)
    uart.write(S.IER, 1, S.IER_RDA)
    uart.enqueue_input(b"kept")
    saved = uart.save()
    copy = S.Serial.restore(saved, line)
    assert copy.read(S.SCR, 1) == 0xA5
    assert bytes(copy.read(S.DATA, 1) for _ in range(4)) == b"kept"
    assert copy.save()["ier"] == S.IER_RDA
