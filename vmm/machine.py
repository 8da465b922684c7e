"""The machine: builds an x86 VM from a `MachineConfig`, boots Linux in it, reports how it ended.

    m = Machine(MachineConfig(kernel="vmlinux", initrd="initrd.cpio", cpus=4,
                              memory=512 << 20), console=sys.stdout.buffer.write)
    addr, irq = m.attach_mmio_device(dev)  # before start(): adds virtio_mmio.device=...
    m.start()                              # loads kernel + tables, starts the vCPUs
    m.write_console(b"ls\\n")              # keystrokes for ttyS0
    end = m.wait()                         # ExitState("poweroff" | "reboot" | "panic" |
                                           #   "triple_fault" | "killed" | "error")
    m.close()

Platform: in-kernel PIC/IOAPIC/LAPIC and PIT, memfd RAM (split around the MMIO hole),
COM1 8250 on IRQ 4, an i8042 for `reboot=k`, pvpanic on port 0x505, the ACPI PM1a
blocks and reset port, cheap constant probe ports, ACPI RSDP/XSDT/FADT/MADT/DSDT. The kernel
is entered by PVH when its ELF has the note, else by the 64-bit boot protocol.
"""
from __future__ import annotations

import os
import threading
from collections import namedtuple

from vmm.arch.x86 import layout as L
from vmm.arch.x86 import boot
from vmm.arch.x86.loader import probe_kernel
from vmm.errors import ConfigError, MMError
from vmm.timeline import mark

MiB = 1 << 20
DEFAULT_CMDLINE = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1"

# Ports the kernel pokes while probing hardware we do not have: answered in C with
# all-ones (absent) and writes dropped. 0x80 is the POST/io-delay port.
PROBE_PORTS = [(0x80, 1), (0x70, 2), (0x2F8, 8), (0x3E8, 8), (0x2E8, 8), (0xCF8, 8),
               (0x87, 1), (0xED, 1)]


class MachineError(MMError):
    """The machine could not be built or run."""


def _ended(reason: str, detail: str = ""):
    """A vmm.worker.vm.ExitState, imported at first use: it is only needed once the guest
    ends, and importing vmm.worker.vm up front costs `mm boot` start-up time."""
    from vmm.worker.vm import ExitState

    return ExitState(reason, detail=detail)


_CONFIG_FIELDS = ("kernel", "initrd", "cmdline", "cpus", "memory", "console_log", "hugepages",
                  "extra_cmdline", "disks", "taps", "vsock", "rng", "balloon", "netns")
_CONFIG_DEFAULTS = (None, DEFAULT_CMDLINE, 1, 256 * MiB, None, None, (), (), (), None, False, None, None)


# A namedtuple, not a dataclass: `dataclasses` imports `inspect` (with ast, dis, tokenize,
# re), which is over a second of `mm boot`'s start-up under the lab's emulation.
class MachineConfig(namedtuple("MachineConfig", _CONFIG_FIELDS, defaults=_CONFIG_DEFAULTS)):
    """What a machine is built from (immutable; MachineConfig(kernel=..., cpus=4)).

    kernel: path (required); initrd: path or None; cmdline: the base command line;
    cpus; memory: bytes; console_log: path or None; hugepages: True / False / None
    (transparent huge pages where the host allows, vmm.memory); extra_cmdline: words
    added to the command line. Virtio devices, in the order they get their MMIO windows
    (so /dev/vda is the first disk), as `mm boot`'s option strings parsed by
    devices.virtio.config: disks (PATH[:ro], a tuple), taps (NAME[:MAC], a tuple), vsock
    (CID:UDS_PATH), rng (bool), balloon (initial target in MiB, or
    "MIB,reporting=off"). netns: the network
    namespace holding the TAPs (vmm.network)."""

    __slots__ = ()

    def device_specs(self) -> list:
        """The parsed virtio device specs; a malformed one raises SpecError (with a hint)."""
        if not (self.disks or self.taps or self.vsock or self.rng or self.balloon is not None):
            return []  # without importing the virtio config module: this is every boot's path
        from devices.virtio import config as dc

        specs = [dc.DiskSpec.parse(d) for d in self.disks] + [dc.TapSpec.parse(t) for t in self.taps]
        if self.vsock:
            specs.append(dc.VsockSpec.parse(self.vsock))
        if self.rng:
            specs.append(dc.RngSpec())
        if self.balloon is not None:
            specs.append(dc.BalloonSpec.parse(self.balloon))
        return specs

    def check(self) -> None:
        if not 1 <= self.cpus <= 254:
            raise ConfigError(f"{self.cpus} vCPUs is out of range", "use --cpus 1..254")
        if self.memory < 64 * MiB:
            raise ConfigError(f"{self.memory >> 20} MiB is too little memory for Linux",
                              "use --memory 64M or more")


class IrqLine:
    """An edge-triggered guest interrupt through an irqfd (devices.interfaces.InterruptLine)."""

    direct = True  # trigger() only writes the eventfd: C code may write it instead

    def __init__(self, vm, gsi: int) -> None:
        self.gsi = gsi
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        vm.irqfd(self._fd, gsi)

    def trigger(self) -> None:
        try:
            os.eventfd_write(self._fd, 1)
        except BlockingIOError:
            pass  # counter saturated: an interrupt is pending anyway

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Machine:
    """One VM. Not reusable: build, start, wait, close.

    `events` (devices.interfaces.EventRegistry, e.g. the worker's loop) serves the virtio
    devices' fds; it is needed only when the config lists devices."""

    def __init__(self, config: MachineConfig, console=None, events=None) -> None:
        config.check()
        specs = config.device_specs()  # malformed options fail before anything is opened
        probe_kernel(config.kernel)  # a bad kernel file fails before /dev/kvm is opened
        if specs and events is None:
            raise MachineError("virtio devices need an event loop", "pass events= to Machine")
        self.config = config
        self.console = console
        self.events = events
        self.transports: list = []
        self._end: ExitState | None = None
        self._end_lock = threading.Lock()
        self._mmio_devices: list[tuple[int, int, object]] = []
        self._irq_lines: list[IrqLine] = []
        self._log_fd = -1
        self.vcpus = None
        self.boot_kind = ""
        try:
            self._build()
            self._add_devices(specs)
        except BaseException:
            self.close()
            raise

    # -- construction ----------------------------------------------------------------------
    def _build(self) -> None:
        from vmm.bus import mmio_bus, pio_bus
        from vmm.kvm import Kvm
        from vmm.memory import GuestMemory

        cfg = self.config
        if cfg.console_log:
            try:
                self._log_fd = os.open(cfg.console_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                       | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise ConfigError(f"cannot open console log {cfg.console_log!r}: {exc.strerror}") from None
        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        self.vm.setup_x86(irqchip=True, pit=True)
        self.mem = GuestMemory(cfg.memory, hugepages=cfg.hugepages)
        self.mem.register(self.vm)
        self.pio, self.mmio = pio_bus(), mmio_bus()
        self._add_legacy_devices()
        self._next_mmio = L.VIRTIO_MMIO_BASE

    def _add_legacy_devices(self) -> None:
        from devices.legacy.i8042 import I8042
        from devices.legacy.power import AcpiPm, AcpiReset, PvPanic
        from devices.legacy._serial import FastSerial

        # Served in C, TX in batches (per line, burst or 2 ms): see devices/legacy/_serial.pyx
        self.serial = FastSerial(self.irq_line(L.COM1_IRQ), out=self._console_out)
        self.pio.register(L.COM1_PORT, 8, self.serial)
        self.i8042 = I8042(on_reset=lambda: self._finish(_ended("reboot", detail="i8042 reset")))
        self.pio.register(L.I8042_DATA_PORT, 1, self.i8042.data_port)
        self.pio.register(L.I8042_CMD_PORT, 1, self.i8042)
        self.acpi_pm = AcpiPm(self._power_event)
        self.pio.register(L.ACPI_PM1A_EVT_PORT, 4, self.acpi_pm.event_block)
        self.pio.register(L.ACPI_PM1A_CNT_PORT, 2, self.acpi_pm.control_block)
        self.pio.register(L.ACPI_RESET_PORT, 1, AcpiReset(self._power_event))
        self.pio.register(L.PVPANIC_PORT, 1, PvPanic(self._power_event))
        for port, size in PROBE_PORTS:
            self.pio.register_constant(port, size)

    def _add_devices(self, specs) -> None:
        """Open every device's backend and attach it. TAPs are opened inside the VM's
        network namespace (only this thread enters it, only while they are opened)."""
        from contextlib import nullcontext

        if self.config.netns:
            from vmm.network.netns import entered
            where = entered(self.config.netns)
        else:
            where = nullcontext()
        with where:
            for spec in specs:
                self.add_virtio(spec.build())

    def irq_line(self, gsi: int) -> IrqLine:
        line = IrqLine(self.vm, gsi)
        self._irq_lines.append(line)
        return line

    def attach_mmio_device(self, device, size: int = L.VIRTIO_MMIO_SIZE) -> tuple[int, int]:
        """Put `device` (BusDevice) on the MMIO bus at the next free window with the next
        free IRQ; the kernel learns of it from `virtio_mmio.device=SIZE@ADDR:IRQ` on its
        command line. Returns (address, irq); call before start()."""
        if self.vcpus is not None:
            raise MachineError("devices must be attached before the machine starts")
        if len(self._mmio_devices) >= len(L.VIRTIO_IRQS):
            raise MachineError("no free interrupt line for another MMIO device",
                               f"a machine has at most {len(L.VIRTIO_IRQS)} virtio devices")
        addr, irq = self._next_mmio, L.VIRTIO_IRQS[len(self._mmio_devices)]
        self.mmio.register(addr, size, device)
        self._mmio_devices.append((addr, irq, device))
        self._next_mmio += max(size, L.VIRTIO_MMIO_SIZE)
        return addr, irq

    def add_virtio(self, device):
        """Put a virtio device behind a virtio-mmio transport: its MMIO window, one KVM
        ioeventfd per queue (kicks never reach Python on a vCPU thread) and an irqfd.
        Returns the transport; call before start()."""
        from devices.virtio.mmio import MmioTransport

        transport = MmioTransport(device, self.mem, None, self.events)
        try:
            addr, irq = self.attach_mmio_device(transport)
        except BaseException:
            transport.close()
            raise
        self.transports.append(transport)
        transport.interrupt = self.irq_line(irq)
        for offset, datamatch, fd in transport.ioeventfds():
            self.vm.ioeventfd(fd, addr + offset, 4, datamatch=datamatch)
        return transport

    def device(self, kind: type):
        """The first attached virtio device of class `kind`, or None."""
        return next((t.device for t in self.transports if isinstance(t.device, kind)), None)

    def cmdline(self) -> str:
        return boot.assemble_cmdline(self.config.cmdline, self.config.extra_cmdline,
                                     [(addr, irq) for addr, irq, _ in self._mmio_devices])

    # -- running ---------------------------------------------------------------------------
    def start(self) -> None:
        from vmm.vcpus import Vcpus

        cfg = self.config
        vcpus = [self.vm.create_vcpu(i) for i in range(cfg.cpus)]
        self.vcpus = Vcpus(self.kvm, self.vm, vcpus, self.pio, self.mmio, on_exit=self._on_exit)
        self.vcpus.configure_all()
        mark("vmm.vcpus_configured")
        self.boot_kind = boot.boot_linux(self.mem, vcpus[0], kernel=cfg.kernel, initrd=cfg.initrd,
                                         cmdline=self.cmdline(), ncpus=cfg.cpus)
        mark("vmm.kernel_loaded")
        self.vcpus.start()

    def _on_exit(self, thread, reason) -> bool:
        from vmm._fast.runloop import RunExit
        from vmm.vcpus import where_stopped

        if reason == RunExit.HLT:
            return True  # only without an in-kernel LAPIC; the next interrupt wakes it
        if reason == RunExit.SHUTDOWN:  # the registers say where: the first clue to chase
            self._finish(_ended("triple_fault", detail=f"vCPU {thread.index}: triple fault{where_stopped(thread.vcpu)}"))
            return False
        end = {
            RunExit.POWEROFF: _ended("poweroff"),
            RunExit.RESET: _ended("reboot"),
            RunExit.CRASH: _ended("panic", detail="KVM system event: crash"),
        }.get(reason)
        if end is None:
            end = _ended("error", detail=self._error_detail(thread, reason))
        self._finish(end)
        return False

    def _error_detail(self, thread, reason) -> str:
        loop = thread.loop
        detail = f"vCPU {thread.index}: {getattr(reason, 'name', reason)}"
        if loop.error is not None:
            detail += f" ({type(loop.error).__name__}: {loop.error})"
        elif loop.last_errno:
            detail += f" ({os.strerror(loop.last_errno)})"
        run = thread.vcpu.run
        if run is not None and getattr(reason, "name", "") == "INTERNAL":
            detail += f" suberror {run.internal.suberror}"
        return detail

    def _power_event(self, event: str) -> None:
        if event == "poweroff":
            self._finish(_ended("poweroff"))
        elif event == "reboot":
            self._finish(_ended("reboot", detail="ACPI reset"))
        elif event in ("panic", "crash_loaded"):
            self._finish(_ended("panic", detail=f"pvpanic: {event}"))

    def _finish(self, end: ExitState) -> None:
        """Record how the VM ended (the first report wins) and stop every vCPU. Called on
        vCPU threads, so it never waits for them."""
        with self._end_lock:
            if self._end is None:
                self._end = end
        if self.vcpus is not None:
            self.vcpus.stop(timeout=0)

    def kill(self) -> None:
        self._finish(_ended("killed"))

    # -- vmm.worker.vm.VirtualMachine --------------------------------------------------------
    @property
    def vsock_socket(self) -> str | None:
        """The host Unix socket of the vsock device (Firecracker's model), if any."""
        from devices.virtio.config import VsockSpec

        return VsockSpec.parse(self.config.vsock).uds_path if self.config.vsock else None

    def pause(self) -> None:
        self.vcpus.pause()

    def resume(self) -> None:
        self.vcpus.resume()

    def request_shutdown(self) -> None:
        """The platform has no ACPI power button (the FADT says so): a graceful stop goes
        through the guest agent; the worker kills the VM after its timeout."""

    def wait(self, timeout: float | None = None) -> ExitState | None:
        """Block until every vCPU has ended; how the VM ended, or None on timeout."""
        from vmm.vcpus import VcpuError

        try:
            exits = self.vcpus.wait(timeout)
        except VcpuError:
            return None
        self.serial.flush()  # what the guest sent after its last newline or burst
        with self._end_lock:
            if self._end is None:
                errors = [e for e in exits.values() if e is not None and e.error is not None]
                detail = "; ".join(f"{type(e.error).__name__}: {e.error}" for e in errors)
                self._end = _ended("error", detail=detail or "vCPUs ended without a reason")
            return self._end

    def write_console(self, data: bytes) -> int:
        """Keystrokes for ttyS0; returns how many bytes the UART took (its FIFO may be full)."""
        return self.serial.enqueue_input(data)

    def _console_out(self, data: bytes) -> None:
        if self._log_fd >= 0:
            os.write(self._log_fd, data)
        if self.console is not None:
            self.console(data)

    def stats(self) -> dict:
        loops = [t.loop for t in self.vcpus.threads] if self.vcpus is not None else []
        return {"vcpus": self.config.cpus, "memory": self.config.memory, "boot": self.boot_kind,
                "exits": sum(lp.exits for lp in loops), "io_exits": sum(lp.io_exits for lp in loops),
                "mmio_exits": sum(lp.mmio_exits for lp in loops)}

    def close(self) -> None:
        """Release everything; safe on a half-built machine and when called twice."""
        if self.vcpus is not None:
            self.vcpus.stop()
        for transport in self.transports:
            transport.close()
        self.transports = []
        for line in self._irq_lines:
            line.close()
        self._irq_lines = []
        self.vcpus = None
        self.pio = self.mmio = None  # free the C bus tables while their module is alive
        for name in ("vm", "mem", "kvm"):
            part = self.__dict__.pop(name, None)
            if part is not None:
                part.close()
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def worker_factory(config: dict, console, events) -> Machine:
    """`vmm.worker.vm` factory: `config` holds MachineConfig fields (kernel, initrd,
    cmdline, cpus, memory, console_log, hugepages, extra_cmdline, disks, taps, vsock,
    rng, balloon, netns)."""
    fields = set(MachineConfig._fields)
    unknown = set(config) - fields
    if unknown:
        raise ConfigError(f"unknown machine settings: {', '.join(sorted(unknown))}")
    cfg = dict(config)
    for key in ("extra_cmdline", "disks", "taps"):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    return Machine(MachineConfig(**cfg), console=console, events=events)
