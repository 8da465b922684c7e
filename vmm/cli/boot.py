"""`mm boot`: boot a Linux kernel directly in our VMM (no image), console on the terminal.

Exit status tells how the guest ended (the table is in the command's help, BOOT_EXIT).
On a terminal, stdin is put in raw mode and forwarded to the guest's ttyS0; Ctrl-A x
kills the VM. With stdin not a terminal, its bytes are forwarded until EOF.
"""
from __future__ import annotations

import typer

# How the VM ended -> exit status of `mm boot`.
BOOT_EXIT = {
    "poweroff": 0,
    "reboot": 3,
    "panic": 4,
    "triple_fault": 5,
    "error": 6,
    "killed": 137,
}

HELP = """Boot KERNEL (ELF vmlinux via PVH, or bzImage) with an optional initrd; the serial
console streams to this terminal until the guest powers off or reboots.

\b
Exit status:
  0    the guest powered off (ACPI S5)
  1    mm could not start the VM (bad kernel path, not a kernel, no KVM...)
  3    the guest rebooted (i8042 reset, ACPI reset, reboot=k/a)
  4    the guest panicked (pvpanic)
  5    triple fault (the vCPU shut down)
  6    the VMM hit an error running the guest (emulation failure, device error)
  137  killed (Ctrl-A x on the terminal)
"""


def register(app: typer.Typer) -> None:
    @app.command("boot", help=HELP)
    def boot(
        kernel: str = typer.Option(None, "--kernel", "-k", help="vmlinux or bzImage (default: `mm kernel path`)"),
        initrd: str = typer.Option(None, "--initrd", "-i", help="initramfs (cpio, optionally compressed)"),
        cmdline: str = typer.Option(None, "--cmdline", "-c", help="kernel command line (replaces the default)"),
        append: list[str] = typer.Option([], "--append", "-a", help="words added to the command line"),
        cpus: int = typer.Option(1, "--cpus", help="vCPUs"),
        memory: str = typer.Option("256m", "--memory", "-m", help="guest memory, e.g. 128m, 5g"),
        console_log: str = typer.Option(None, "--console-log", help="also write the console to this file"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="do not print the console (log only)"),
    ) -> int:
        from vmm.machines.options import parse_memory

        mib = parse_memory(memory)
        return boot_main(kernel=kernel, initrd=initrd, cmdline=cmdline, append=append, cpus=cpus,
                         memory=mib << 20, console_log=console_log, quiet=quiet)


def fast(argv: list[str]) -> int | None:
    """`mm boot` without building the typer app (typer's import alone costs ~80 ms on the
    host and seconds in the lab, which would count against boot time). Returns None for
    --help or anything unusual so typer handles it with its messages."""
    if any(a in ("-h", "--help") for a in argv):
        return None
    import argparse

    p = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for flags, kw in ((("--kernel", "-k"), {}), (("--initrd", "-i"), {}), (("--cmdline", "-c"), {}),
                      (("--append", "-a"), {"action": "append", "default": []}),
                      (("--cpus",), {"type": int, "default": 1}), (("--memory", "-m"), {"default": "256m"}),
                      (("--console-log",), {}), (("--quiet", "-q"), {"action": "store_true"})):
        p.add_argument(*flags, **kw)
    try:
        ns, rest = p.parse_known_args(argv)
    except (argparse.ArgumentError, ValueError):
        return None
    if rest:
        return None
    from vmm.machines.options import parse_memory

    return boot_main(kernel=ns.kernel, initrd=ns.initrd, cmdline=ns.cmdline, append=ns.append,
                     cpus=ns.cpus, memory=parse_memory(ns.memory) << 20,
                     console_log=ns.console_log, quiet=ns.quiet)


def default_kernel() -> str:
    from vmm.errors import ConfigError

    try:
        from vmm.kernel import kernel_path
    except ImportError:
        raise ConfigError("no guest kernel is available", "pass --kernel PATH") from None
    return str(kernel_path())


def boot_main(*, kernel, initrd, cmdline, append, cpus, memory, console_log, quiet=False) -> int:
    import os
    import sys

    from vmm.machine import DEFAULT_CMDLINE, Machine, MachineConfig

    config = MachineConfig(kernel=kernel or default_kernel(), initrd=initrd,
                           cmdline=DEFAULT_CMDLINE if cmdline is None else cmdline,
                           extra_cmdline=tuple(append), cpus=cpus, memory=memory,
                           console_log=console_log)
    out_fd = sys.stdout.fileno()

    def console(data: bytes) -> None:
        try:
            os.write(out_fd, data)
        except OSError:
            pass  # the terminal went away; the log still has it

    with Machine(config, console=None if quiet else console) as machine:
        machine.start()
        with _StdinForwarder(machine):
            end = machine.wait()
    if end.reason not in ("poweroff",):
        print(f"\nmm boot: guest ended: {end.reason}" + (f" ({end.detail})" if end.detail else ""),
              file=sys.stderr)
    return BOOT_EXIT.get(end.reason, 6)


class _StdinForwarder:
    """Forwards stdin to the guest's UART from a daemon thread; raw mode on a terminal."""

    CTRL_A = 0x01

    def __init__(self, machine) -> None:
        self.machine = machine
        self.saved = None

    def __enter__(self):
        import sys
        import threading

        try:
            self.fd = sys.stdin.fileno()
        except (ValueError, OSError):
            return self
        if os_isatty(self.fd):
            import termios
            import tty

            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)
        threading.Thread(target=self._pump, name="stdin", daemon=True).start()
        return self

    def _pump(self) -> None:
        import os
        import time

        escape = False
        while True:
            try:
                data = os.read(self.fd, 256)
            except OSError:
                return
            if not data:
                return
            if self.saved is not None:
                if escape and data[:1] == b"x":
                    self.machine.kill()
                    return
                escape = data[-1:] == bytes([self.CTRL_A])
                data = data.replace(bytes([self.CTRL_A]), b"")
            while data:
                n = self.machine.write_console(data)
                data = data[n:]
                if data:
                    time.sleep(0.005)  # the guest has not drained its FIFO yet

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def os_isatty(fd: int) -> bool:
    import os

    return os.isatty(fd)
