"""A real tiny 64-bit guest as a `vmm.worker.vm.VirtualMachine`, for worker tests.

The guest (tinyguest.S, assembled below as GUEST_CODE) prints a greeting on port 0x3f8,
then loops: if port 0x501 reads non-zero (shutdown requested) it prints "bye", reads its
exit code from port 0x502 and writes it back there (power off); else if port 0x500
yields a console byte it echoes it to 0x3f8; else it halts. There is no in-kernel
irqchip, so HLT exits to this process, where the vCPU thread naps until there is news
(console input, a shutdown request, a kill) — a guest tick without burning the CPU.

Built only with the kvm engineer's API (vmm.kvm, vmm.memory, vmm.bus, vmm.vcpus,
vmm.arch.x86.regs). Config keys: exit_code (int, default 0), ignore_shutdown (the guest
never hears a shutdown request), exit_at_once (it is asked to shut down from the start).
"""
from __future__ import annotations

import collections
import threading

from vmm.worker.vm import ExitState

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~4 ms of import time; annotations here are strings
    from typing import Any

# `as --64 tinyguest.S && objcopy -O binary -j .text` (the source sits next to this file).
GUEST_CODE = bytes.fromhex(
    "488d354400000066baf803ac84c07403eeebf866ba0105ec84c0751366ba0005ec84c0740766baf803ee"
    "ebe7f4ebe4488d353000000066baf803ac84c07403eeebf866ba0205eceef4ebe468656c6c6f206672"
    "6f6d207468652074696e792067756573740a006279650a00"
)
CODE_ADDR = 0x2000
MEMORY = 2 << 20
NAP_S = 0.02  # how long a halted vCPU sleeps before looking again


class Ports:
    """The guest's devices: console out (0x3f8), console in (0x500), shutdown flag
    (0x501), exit code read / power off write (0x502). A devices.interfaces.BusDevice."""

    def __init__(self, console, exit_code: int, news: threading.Event) -> None:
        self.console, self.exit_code, self.news = console, exit_code, news
        self.input: collections.deque[int] = collections.deque()
        self.shutdown_requested = False
        self.powered_off: int | None = None

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return self.input.popleft() if self.input else 0
        if offset == 1:
            return int(self.shutdown_requested)
        if offset == 2:
            return self.exit_code
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 2:
            self.powered_off = value & 0xFF
            self.news.set()


class SerialOut:
    """Port 0x3f8..0x3ff: bytes written to THR go to the console sink."""

    def __init__(self, console) -> None:
        self.console = console

    def read(self, offset: int, size: int) -> int:
        return 0x60 if offset == 5 else 0  # LSR: transmitter empty

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.console(bytes([value & 0xFF]))


class TinyGuest:
    vsock_socket = None

    def __init__(self, config: dict[str, Any], console, events) -> None:
        from vmm.bus import Bus, pio_bus
        from vmm.kvm import Kvm
        from vmm.memory import GuestMemory
        from vmm.vcpus import Vcpus

        self.news = threading.Event()
        self.killed = False
        self.failure: str | None = None
        self.ports = Ports(console, int(config.get("exit_code", 0)), self.news)
        self.ports.shutdown_requested = bool(config.get("exit_at_once"))
        self.ignore_shutdown = bool(config.get("ignore_shutdown"))
        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        self.vm.setup_x86(irqchip=False)
        self.mem = GuestMemory(MEMORY, hugepages=config.get("hugepages", False))  # None: auto
        self.mem.register(self.vm)
        self.mem.write(CODE_ADDR, GUEST_CODE)
        pio = pio_bus()
        pio.register(0x3F8, 8, SerialOut(console))
        pio.register(0x500, 3, self.ports)
        self.vcpus = Vcpus(self.kvm, self.vm, [self.vm.create_vcpu(0)], pio, Bus("mmio"), self._on_exit)

    def _on_exit(self, thread, reason) -> bool:
        from vmm._fast.runloop import RunExit

        if reason == RunExit.HLT and not self.killed and self.ports.powered_off is None:
            self.news.wait(NAP_S)
            self.news.clear()
            return True
        if reason != RunExit.HLT:
            self.failure = RunExit(reason).name.lower()
        return False

    # -- VirtualMachine ------------------------------------------------------------------

    def start(self) -> None:
        from vmm.arch.x86 import regs

        self.vcpus.configure_all()
        regs.setup_long_mode(self.vcpus.threads[0].vcpu, self.mem, CODE_ADDR)
        self.vcpus.start()

    def pause(self) -> None:
        self.vcpus.pause()

    def resume(self) -> None:
        self.vcpus.resume()

    def request_shutdown(self) -> None:
        if not self.ignore_shutdown:
            self.ports.shutdown_requested = True
            self.news.set()

    def kill(self) -> None:
        self.killed = True
        self.news.set()
        self.vcpus.stop()

    def wait(self, timeout: float | None = None) -> ExitState | None:
        from vmm.vcpus import VcpuError

        try:
            self.vcpus.wait(timeout)
        except VcpuError:
            return None
        if self.killed:
            return ExitState("killed")
        if self.ports.powered_off is not None:
            return ExitState("poweroff", self.ports.powered_off)
        return ExitState("error", detail=f"vCPU ended: {self.failure}")

    def write_console(self, data: bytes) -> None:
        self.ports.input.extend(data)
        self.news.set()

    def stats(self) -> dict[str, Any]:
        return {"vcpus": len(self.vcpus.threads), "memory_mib": MEMORY >> 20}

    def close(self) -> None:
        self.mem.close()
        self.vm.close()
        self.kvm.close()


def create(config: dict[str, Any], console, events) -> TinyGuest:
    return TinyGuest(config, console, events)
