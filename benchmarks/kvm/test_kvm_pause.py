"""Pause latency: from `Vcpus.pause()` being called to every vCPU thread parked outside
KVM_RUN, with 4 vCPUs spinning in the guest (`inc qword [0x5000]; jmp`), and the
resume + pause cycle. Bounded by one kick (signal -> KVM_RUN returns EINTR), not by
the guest.

    .venv/bin/pytest benchmarks/kvm/test_kvm_pause.py --benchmark-only -s
"""
from __future__ import annotations

import statistics
import time

import pytest

from vmm.arch.x86 import regs
from vmm.bus import mmio_bus, pio_bus
from vmm.kvm import Kvm
from vmm.memory import GuestMemory, MiB
from vmm.vcpus import Vcpus

SPIN = bytes.fromhex("48ff042500500000" "ebf6")  # 1: inc qword ptr [0x5000]; jmp 1b
NCPUS = 4


@pytest.fixture
def spinning():
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.setup_x86(irqchip=True, pit=True)
    mem = GuestMemory(4 * MiB)
    mem.register(vm)
    mem.write(0x100000, SPIN)
    vcpus = Vcpus(kvm, vm, [vm.create_vcpu(i) for i in range(NCPUS)], pio_bus(), mmio_bus())
    vcpus.configure_all()
    for t in vcpus.threads:
        regs.setup_long_mode(t.vcpu, mem, 0x100000)
        t.vcpu.set_mp_state(0)  # runnable without INIT/SIPI
    vcpus.start()
    time.sleep(0.05)
    yield vcpus, mem
    vcpus.stop()
    vm.close()
    mem.close()


def test_pause_latency_4_vcpus(benchmark, spinning):
    vcpus, mem = spinning
    latencies = []

    def cycle():
        vcpus.resume()
        time.sleep(0.005)
        t0 = time.perf_counter()
        vcpus.pause(timeout=2)
        latencies.append(time.perf_counter() - t0)

    benchmark.pedantic(cycle, rounds=30, warmup_rounds=2)
    info = {"pause_median_us": round(statistics.median(latencies) * 1e6),
            "pause_max_us": round(max(latencies) * 1e6)}
    benchmark.extra_info.update(info)
    assert mem.read_u64(0x5000) > 0
    print(f"\npause of {NCPUS} spinning vCPUs: {info}")
