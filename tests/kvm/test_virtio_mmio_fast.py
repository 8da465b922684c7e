"""The virtio-mmio registers served in C (devices/virtio/_mmio.pyx), driven by a tiny
test guest on this host's /dev/kvm.

The transport sits on the MMIO bus as vmm.machine puts it (its `c_io_handler()`), so the
guest's InterruptStatus reads, InterruptACK writes and, with no ioeventfd registered, its
QueueNotify write are served on the vCPU thread in C; the C side's counters show they
never went through Python, and the Python side reads the same ISR value. A second guest
acks interrupts in a loop while host threads raise and ack bits concurrently: every
interrupt the host raised is seen and acked exactly once.
"""
from __future__ import annotations

import threading

from devices.virtio.constants import INT_CONFIG, INT_VRING, Reg
from devices.virtio.mmio import MmioTransport
from devices.virtio.testing import FakeInterrupt
from vmm._fast.runloop import KIND_C, RunExit

from tests.kvm.guest import TestVm
from tests.kvm.test_virtio_mmio import AVAIL, BASE, BUF_LEN, BUFFER, DESC, QUEUE_SIZE, USED, Guest, handshake, start_loop


def test_isr_ack_and_notify_in_c(kvm):
    from devices.virtio.rng.device import RngDevice

    g = handshake(Guest(), 0, 1)
    g.wr(Reg.QUEUE_SEL, 0).wr(Reg.QUEUE_NUM, QUEUE_SIZE)
    for low, addr in ((Reg.QUEUE_DESC_LOW, DESC), (Reg.QUEUE_DRIVER_LOW, AVAIL), (Reg.QUEUE_DEVICE_LOW, USED)):
        g.wr(low, addr).wr(low + 4, 0)
    g.wr(Reg.QUEUE_READY, 1).wr(Reg.STATUS, 0xF)
    g.rd("isr_preset", Reg.INTERRUPT_STATUS).wr(Reg.INTERRUPT_ACK, INT_CONFIG)
    g.asm(f"mov rsi, {DESC:#x}", f"mov rax, {BUFFER:#x}", "mov qword ptr [rsi], rax",
          f"mov dword ptr [rsi + 8], {BUF_LEN}", "mov word ptr [rsi + 12], 2", "mov word ptr [rsi + 14], 0",
          f"mov rsi, {AVAIL:#x}", "mov word ptr [rsi + 4], 0", "mfence", "mov word ptr [rsi + 2], 1", "mfence")
    g.wr(Reg.QUEUE_NOTIFY, 7)  # no such queue: ignored
    g.wr(Reg.QUEUE_NOTIFY, 0)  # no ioeventfd registered: the C side writes the eventfd
    # Wait for the used ring, then read the ISR until the bit is there too: the device
    # thread publishes the used index before it sets the ISR, and on a loaded host either
    # can lag the guest's spinning (a 400,000-turn bound on the first wait and a single ISR
    # read failed once in a run beside other jobs). Bounded by t.run's timeout, not a count.
    g.asm(f"mov rsi, {USED:#x}",
          "1: movzx eax, word ptr [rsi + 2]", "pause", "test eax, eax", "jz 1b",
          f"3: mov eax, dword ptr [rbx + {Reg.INTERRUPT_STATUS:#x}]", f"test eax, {INT_VRING:#x}", "jz 3b")
    g.rd("interrupt_status", Reg.INTERRUPT_STATUS).wr(Reg.INTERRUPT_ACK, INT_VRING)
    g.rd("interrupt_acked", Reg.INTERRUPT_STATUS)

    loop, thread = start_loop()
    irq = FakeInterrupt()
    with TestVm(kvm, g.source()) as t:
        transport = MmioTransport(RngDevice(), t.mem, irq, loop)
        transport.interrupt_status = INT_CONFIG  # set on the Python side, read by the guest
        t.mmio.register(BASE, 0x1000, transport)
        try:
            assert t.mmio.fast.lookup(BASE + Reg.INTERRUPT_STATUS, 4) == (BASE, KIND_C)
            assert t.run(timeout=60)[0].reason == RunExit.HLT
            r = g.results(t.mem)
            used_idx = int.from_bytes(t.mem.read(USED + 2, 2), "little")
            counters = transport.fast.counters()
            isr_after = transport.interrupt_status
            state = transport.save()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            transport.close()
    assert r["isr_preset"] == INT_CONFIG
    assert used_idx == 1 and irq.count >= 1
    assert r["interrupt_status"] == INT_VRING and r["interrupt_acked"] == 0
    # preset, the polled reads (at least one), acked: every one counted in C
    assert counters["isr_reads"] >= 3 and (counters["acks"], counters["notifies"]) == (2, 2), counters
    assert isr_after == 0 and state.interrupt_status == 0
    assert r["status_features_ok"] == 0xB  # everything else still reached the Python side


ROUNDS = 2000


def ack_loop_guest() -> str:
    """Read the ISR until INT_VRING is set, ack only that bit, ROUNDS times; the count of
    acks and of empty reads go to the results page."""
    return "\n".join([
        f"mov rbx, {BASE:#x}", "mov rdi, 0x300000", "xor r8d, r8d", "xor r9d, r9d",
        "1: mov eax, dword ptr [rbx + 0x60]", f"test eax, {INT_VRING}", "jnz 2f",
        "inc r9d", "cmp r9d, 20000000", "jb 1b", "jmp 3f",
        f"2: mov dword ptr [rbx + 0x64], {INT_VRING}", "inc r8d", f"cmp r8d, {ROUNDS}", "jb 1b",
        "3: mov dword ptr [rdi], r8d", "mov dword ptr [rdi + 4], r9d", "hlt",
    ])


def test_acks_race_host_raises(kvm):
    from devices.virtio.rng.device import RngDevice

    loop, thread = start_loop()
    with TestVm(kvm, ack_loop_guest()) as t:
        transport = MmioTransport(RngDevice(), t.mem, FakeInterrupt(), loop)
        t.mmio.register(BASE, 0x1000, transport)
        fast, stop, raised = transport.fast, threading.Event(), [0]

        def raiser():  # a device thread: raise INT_VRING once the guest acked the last
            while raised[0] < ROUNDS and not stop.is_set():
                if not fast.isr & INT_VRING:
                    raised[0] += 1
                    fast.raise_bits(INT_VRING)

        def config_noise():  # another bit raised and acked meanwhile, never the guest's
            while not stop.is_set():
                fast.raise_bits(INT_CONFIG)
                fast.ack(INT_CONFIG)

        workers = [threading.Thread(target=f, daemon=True) for f in (raiser, config_noise)]
        for w in workers:
            w.start()
        try:
            assert t.run(timeout=120)[0].reason == RunExit.HLT
            stop.set()
            for w in workers:
                w.join(5)
            acks = int.from_bytes(t.mem.read(0x300000, 4), "little")
            isr = fast.isr
        finally:
            stop.set()
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            transport.close()
    # A lost update (an ack wiping a concurrent raise, or a raise re-setting an acked bit)
    # would leave the guest spinning or acking more than was raised.
    assert acks == ROUNDS == raised[0]
    assert not isr & INT_VRING
