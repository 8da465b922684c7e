"""The 8250 served in C (devices.legacy._serial.FastSerial) on this host's /dev/kvm: a
tiny guest transmits N bytes through port 0x3f8 and the host's console sees every one,
in order. The first part is sent as Linux's console writes it (poll LSR for THR empty,
write THR, one byte at a time, then write IER), the rest with `rep outsb` (string PIO:
many bytes in one exit) and no IER write, as a guest that just halts."""
from __future__ import annotations

from devices.legacy._serial import FastSerial
from vmm._fast.runloop import KIND_C, RunExit

from tests.kvm.guest import NoIrq, TestVm, polled_serial_tx

DATA = 0x200000
N_POLLED, N_STRING = 3000, 1000
PAYLOAD = bytes((i * 7 + i // 251) % 256 for i in range(N_POLLED + N_STRING))

GUEST = f"""
    mov rcx, {N_POLLED}
{polled_serial_tx(DATA)}
    mov dx, 0x3f8
    mov rcx, {N_STRING}
    rep outsb
    hlt
"""


def test_guest_tx_reaches_the_console_whole_and_in_order(kvm):
    chunks: list[bytes] = []
    with TestVm(kvm, GUEST, memory=4 << 20) as t:
        t.mem.write(DATA, PAYLOAD)
        uart = FastSerial(NoIrq(), out=chunks.append)
        t.pio.register(0x3F8, 8, uart)
        assert t.pio.fast.lookup(0x3F8) == (0x3F8, KIND_C)  # served without Python
        assert t.run()[0].reason == RunExit.HLT
        seen = b"".join(chunks)
        tail = PAYLOAD[N_POLLED:]
        # Everything up to the string part's last newline is out; the rest waits for flush().
        assert seen == PAYLOAD[:N_POLLED + tail.rindex(b"\n") + 1]
        uart.flush()
        assert b"".join(chunks) == PAYLOAD
        assert uart.metrics["tx_bytes"] == len(PAYLOAD)
        assert uart.metrics["flushes"] < len(PAYLOAD) // 50  # batches, not a call per byte
        loop = t.vcpus.threads[0].loop
        assert loop.io_exits >= 2 * N_POLLED  # an LSR read and a THR write per polled byte
