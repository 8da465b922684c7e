"""PIO exit round trip: our Cython run loop vs the floor, a minimal C KVM_RUN loop.

The guest is `1: out dx, al; dec ecx; jnz 1b; hlt` with RCX = EXITS. Each round resets
the registers and runs to HLT; the per-exit figure is round time / EXITS. Variants of
ours: the port served by a C device (ScratchPort), by a Python device (GIL taken per
exit), by a constant range, and unregistered. The C floor gets the same vCPU's fd
(set up here) through ctypes, in this process, and does the same rounds.
`test_pio_side_by_side` alternates all of them round by round and reports the ratios.

On a PVM host every guest instruction is emulated, so the absolute numbers include
that; the ratio ours / floor is the figure that matters.

    .venv/bin/pytest benchmarks/kvm/test_kvm_pio.py --benchmark-only -s
"""
from __future__ import annotations

import ctypes
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from vmm._fast.runloop import RunExit, RunLoop, ScratchPort
from vmm.arch.x86 import regs
from vmm.bus import mmio_bus, pio_bus
from vmm.kvm import Kvm
from vmm.kvm import structs as S
from vmm.memory import GuestMemory, MiB

EXITS = 2000
ROUNDS = 15
CODE = 0x100000
GUEST = bytes.fromhex("ee" "ffc9" "75fb" "f4")  # 1: out dx, al; dec ecx; jnz 1b; hlt
PORTS = {"c_device": 0x510, "python_device": 0x520, "constant": 0x530, "unregistered": 0x540}


class Sink:
    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        pass


@pytest.fixture(scope="module")
def machine():
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.setup_x86(irqchip=False)   # HLT must exit to us
    mem = GuestMemory(4 * MiB)
    mem.register(vm)
    mem.write(CODE, GUEST)
    vcpu = vm.create_vcpu(0)
    regs.setup_long_mode(vcpu, mem, CODE)
    pio, mmio = pio_bus(), mmio_bus()
    pio.register(PORTS["c_device"], 1, ScratchPort())
    pio.register(PORTS["python_device"], 1, Sink())
    pio.register_constant(PORTS["constant"], 1, 0)
    yield kvm, vm, vcpu, RunLoop(vcpu, pio.fast, mmio.fast)
    vm.close()
    mem.close()


def _start_regs(port: int) -> S.kvm_regs:
    return S.kvm_regs(rip=CODE, rcx=EXITS, rdx=port, rsp=0x8FF0, rflags=0x2)


@pytest.mark.parametrize("variant", list(PORTS))
def test_pio_round_trip_ours(benchmark, machine, variant):
    _, _, vcpu, loop = machine
    start = _start_regs(PORTS[variant])
    times = []

    def one_round():
        vcpu.set_regs(start)
        t0 = time.perf_counter_ns()
        result = loop.run()
        times.append(time.perf_counter_ns() - t0)
        assert result == RunExit.HLT

    benchmark.pedantic(one_round, rounds=ROUNDS, warmup_rounds=1)
    per_exit = statistics.median(times[1:]) / EXITS
    benchmark.extra_info["ns_per_exit"] = round(per_exit)
    print(f"\nours/{variant}: {per_exit / 1000:.2f} us per PIO exit")


@pytest.fixture(scope="module")
def c_floor(tmp_path_factory):
    """pio_floor.c built as a shared object, called in this process through ctypes."""
    if shutil.which("gcc") is None:
        pytest.skip("the C floor is compiled with gcc")
    lib = tmp_path_factory.mktemp("floor") / "pio_floor.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib),
                    str(Path(__file__).with_name("pio_floor.c"))], check=True, capture_output=True)
    fn = ctypes.CDLL(str(lib)).pio_floor
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                   ctypes.POINTER(ctypes.c_long), ctypes.POINTER(ctypes.c_long)]
    fn.restype = ctypes.c_int
    return fn


def _floor_round(fn, vcpu) -> int:
    """One round of the C floor; returns its nanoseconds."""
    vcpu.set_regs(_start_regs(PORTS["unregistered"]))
    exits, ns = (ctypes.c_long * 1)(), (ctypes.c_long * 1)()
    rc = fn(vcpu.fd, vcpu.run_address, 1, exits, ns)
    assert rc == 0 and exits[0] == EXITS, rc
    return ns[0]


def test_pio_round_trip_c_floor(benchmark, machine, c_floor):
    _, _, vcpu, _ = machine
    times = []
    benchmark.pedantic(lambda: times.append(_floor_round(c_floor, vcpu)), rounds=ROUNDS,
                       warmup_rounds=1)
    per_exit = statistics.median(times[1:]) / EXITS
    benchmark.extra_info["ns_per_exit"] = round(per_exit)
    print(f"\nC floor: {per_exit / 1000:.2f} us per PIO exit")


def test_pio_side_by_side(benchmark, machine, c_floor):
    """All variants alternating round by round (fair on a busy host): medians and ratios."""
    _, _, vcpu, loop = machine
    samples: dict[str, list[int]] = {"c_floor": [], **{v: [] for v in PORTS}}

    def ours(port: int) -> int:
        vcpu.set_regs(_start_regs(port))
        t0 = time.perf_counter_ns()
        assert loop.run() == RunExit.HLT
        return time.perf_counter_ns() - t0

    def alternate():
        for _ in range(ROUNDS):
            samples["c_floor"].append(_floor_round(c_floor, vcpu))
            for variant, port in PORTS.items():
                samples[variant].append(ours(port))

    benchmark.pedantic(alternate, rounds=1)
    per_exit = {k: statistics.median(v) / EXITS for k, v in samples.items()}
    floor = per_exit["c_floor"]
    for k, v in per_exit.items():
        benchmark.extra_info[f"{k}_ns_per_exit"] = round(v)
        benchmark.extra_info[f"{k}_ratio_to_floor"] = round(v / floor, 3)
    print("\nPIO exit, median us per exit (ratio to C floor): " + ", ".join(
        f"{k} {v / 1000:.2f} ({v / floor:.2f}x)" for k, v in per_exit.items()))
