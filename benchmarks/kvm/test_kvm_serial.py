"""Serial console TX cost per byte on this host: the guest writes N bytes the way Linux's
console does (poll LSR, write THR: two PIO exits a byte), into the Python 8250
(devices.legacy.serial.Serial, a GIL round trip and an `out` call per byte), the C one
(devices.legacy._serial.FastSerial, TX batched per line) and a constant range served
in C (reads 0x60, "THR empty"; writes dropped: the floor for two exits a byte). `out` appends
to a file, as the worker's console log does. Variants alternate round by round.

    .venv/bin/python -m pytest benchmarks/kvm/test_kvm_serial.py --benchmark-only -p no:cacheprovider -s
"""
from __future__ import annotations

import os
import statistics
import time

import pytest

from devices.legacy._serial import FastSerial
from devices.legacy.serial import Serial
from vmm._fast.runloop import RunExit
from vmm.arch.x86 import regs
from vmm.bus import mmio_bus, pio_bus
from vmm.kvm import Kvm
from vmm.kvm import structs as S
from vmm.memory import GuestMemory, MiB

N = 4000
ROUNDS = 9
CODE, DATA = 0x100000, 0x200000
PAYLOAD = (b"[    0.123456] a kernel line of a typical length, about seventy bytes\n" * (N // 70 + 1))[:N]


def _guest() -> bytes:
    from tests.kvm.guest import assemble, polled_serial_tx  # binutils at benchmark time, as tests/kvm does

    return assemble(polled_serial_tx(DATA) + "\n    hlt\n")


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    from tests.kvm.guest import CODE_ADDR, NoIrq

    assert CODE_ADDR == CODE
    log = os.open(tmp_path_factory.mktemp("serial") / "console.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.setup_x86(irqchip=False)
    mem = GuestMemory(4 * MiB)
    mem.register(vm)
    mem.write(CODE, _guest())
    mem.write(DATA, PAYLOAD)
    vcpu = vm.create_vcpu(0)
    regs.setup_long_mode(vcpu, mem, CODE)
    from vmm._fast.runloop import RunLoop

    def out(data):
        os.write(log, data)

    loops = {}
    for name, dev in (("python_serial", Serial(NoIrq(), out=out)), ("c_serial", FastSerial(NoIrq(), out=out)),
                      ("c_floor", None)):
        pio = pio_bus()
        if dev is None:
            pio.register_constant(0x3F8, 8, 0x60)
        else:
            pio.register(0x3F8, 8, dev)
        loops[name] = RunLoop(vcpu, pio.fast, mmio_bus().fast)
    yield vcpu, loops
    os.close(log)
    vm.close()
    mem.close()


def _round(vcpu, loop) -> int:
    vcpu.set_regs(S.kvm_regs(rip=CODE, rcx=N, rsp=0x8FF0, rflags=0x2))
    t0 = time.perf_counter_ns()
    assert loop.run() == RunExit.HLT
    return time.perf_counter_ns() - t0


def test_serial_tx_side_by_side(benchmark, rig):
    vcpu, loops = rig
    samples = {k: [] for k in loops}

    def alternate():
        for _ in range(ROUNDS):
            for name, loop in loops.items():
                samples[name].append(_round(vcpu, loop))

    benchmark.pedantic(alternate, rounds=1)
    per_byte = {k: statistics.median(v) / N for k, v in samples.items()}
    floor = per_byte["c_floor"]
    for k, v in per_byte.items():
        benchmark.extra_info[f"{k}_ns_per_byte"] = round(v)
        benchmark.extra_info[f"{k}_ratio_to_floor"] = round(v / floor, 2)
    benchmark.extra_info["loadavg_1min"] = round(os.getloadavg()[0], 2)
    print("\nserial TX, median us per byte (ratio to the C floor): " + ", ".join(
        f"{k} {v / 1000:.2f} ({v / floor:.2f}x)" for k, v in per_byte.items()))
