"""Tiny test guests: assembled with binutils at test time, run on a fresh VM.

`TestVm(kvm, code, ...)` builds a VM (optionally with the in-kernel irqchip), guest
memory, buses and N vCPUs in 64-bit mode with RIP at CODE_ADDR. Keep guest loops tiny:
on PVM every guest instruction is emulated (~1 us), and exceptions (int3) kill the guest.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from vmm.arch.x86 import regs
from vmm.bus import mmio_bus, pio_bus
from vmm.kvm.abi import KVM_MP_STATE_RUNNABLE
from vmm.memory import MiB, GuestMemory
from vmm.vcpus import Vcpus

CODE_ADDR = 0x100000
STACK_TOP = 0x8FF0

_cache: dict[tuple[str, int], bytes] = {}


def assemble(source: str, bits: int = 64) -> bytes:
    """Flat binary of `source` (GNU as, Intel syntax), linked at CODE_ADDR."""
    key = (source, bits)
    if key not in _cache:
        with tempfile.TemporaryDirectory() as d:
            src, obj, out = Path(d, "g.s"), Path(d, "g.o"), Path(d, "g.bin")
            src.write_text(f".intel_syntax noprefix\n.code{bits}\n{source}\n")
            subprocess.run(["as", "--64", "-o", str(obj), str(src)], check=True, capture_output=True)
            subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(out)],
                           check=True, capture_output=True)
            _cache[key] = out.read_bytes()
    return _cache[key]


def polled_serial_tx(data_addr: int) -> str:
    """Assembly sending RCX bytes from `data_addr` to the 8250 at 0x3f8 as Linux's console
    does (poll LSR for THR empty, write THR, a byte at a time; two PIO exits a byte),
    then writing IER, as the driver does after a burst. RCX is set by the caller."""
    return f"""
        mov rsi, {data_addr}
    1:  mov dx, 0x3fd
    2:  in al, dx
        test al, 0x20
        jz 2b
        mov dx, 0x3f8
        lodsb
        out dx, al
        dec rcx
        jnz 1b
        mov dx, 0x3f9
        xor eax, eax
        out dx, al
    """


class NoIrq:
    """An interrupt line nobody listens to (a UART driven by a polling test guest)."""

    def trigger(self):
        pass

    def fileno(self):
        return -1


class TestVm:
    __test__ = False  # not a pytest class

    def __init__(self, kvm, source: str, ncpus: int = 1, memory: int = 4 * MiB,
                 irqchip: bool = False, on_exit=None, identity_gib: int = 4) -> None:
        self.kvm = kvm
        self.vm = kvm.create_vm()
        self.vm.setup_x86(irqchip=irqchip, pit=irqchip)
        self.mem = GuestMemory(memory)
        self.mem.register(self.vm)
        self.mem.write(CODE_ADDR, assemble(source))
        self.pio, self.mmio = pio_bus(), mmio_bus()
        vcpus = [self.vm.create_vcpu(i) for i in range(ncpus)]
        kwargs = {"on_exit": on_exit} if on_exit else {}
        self.vcpus = Vcpus(kvm, self.vm, vcpus, self.pio, self.mmio, **kwargs)
        self.vcpus.configure_all()
        for v in vcpus:
            # Each vCPU its own stack page; all share the code.
            regs.setup_long_mode(v, self.mem, CODE_ADDR, stack=STACK_TOP - v.index * 0x100,
                                 identity_gib=identity_gib)
            if irqchip:
                v.set_mp_state(KVM_MP_STATE_RUNNABLE)  # APs would otherwise wait for INIT/SIPI

    def run(self, timeout: float = 10.0):
        self.vcpus.start()
        return self.vcpus.wait(timeout)

    def close(self) -> None:
        self.vcpus.stop()
        self.vm.close()
        self.mem.close()

    def __enter__(self) -> "TestVm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
