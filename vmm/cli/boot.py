"""`mm boot`: boot a Linux kernel directly in our VMM (no image), console on the terminal.

Exit status tells how the guest ended (the table is in the command's help, BOOT_EXIT).
On a terminal, stdin is put in raw mode and forwarded to the guest's ttyS0; Ctrl-A x
kills the VM. With stdin not a terminal, its bytes are forwarded until EOF.
"""
from __future__ import annotations

import os

# Nothing heavy at module level: the fast path (`fast`) is the boot path, and every import
# here counts against boot time (typer alone costs ~80 ms on the host, ~1.4 s in the lab).

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
console streams to this terminal until the guest powers off or reboots. Virtio devices
(--disk, --tap, --vsock, --rng, --balloon) are announced on the kernel command line.

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


MiB = 1 << 20
_UNITS = {"": 1, "k": 1 << 10, "m": MiB, "g": 1 << 30, "t": 1 << 40}


def parse_memory(text: str) -> int:
    """--memory in Docker's notation (512m, 2g, 1.5G, 512MiB; no unit means bytes) -> bytes,
    rounded up to a whole MiB; more than this host has is refused. Plain string work, no
    `re` and no vmm.machines (whose package pulls in the store): this runs on the boot path."""
    from vmm.errors import UsageError

    t = text.strip().lower()
    t = t[:-1] if t.endswith("b") else t
    t = t[:-1] if t.endswith("i") else t
    unit = t[-1:] if t[-1:] in _UNITS else ""
    number = t[:-1] if unit else t
    if not number or number.count(".") > 1 or not number.replace(".", "").isdigit():
        raise UsageError(f"invalid --memory {text!r}", "use a number with a unit, e.g. 512m or 2g")
    mib = -(-int(float(number) * _UNITS[unit]) // MiB)
    if mib < 64:
        hint = f"did you mean {text.strip()}m?" if not unit else "give at least 64m"
        raise UsageError(f"--memory {text} is less than the 64 MiB a Linux guest needs", hint)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if mib * MiB > total:
        raise UsageError(f"--memory {text} is more than this host has ({total // MiB} MiB)",
                         "ask for less memory")
    return mib * MiB


def register(app) -> None:
    import typer

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
        disk: list[str] = typer.Option([], "--disk", help="virtio-blk disk PATH[:ro] (repeatable; the first is /dev/vda)"),
        tap: list[str] = typer.Option([], "--tap", help="virtio-net on TAP NAME[:MAC] (repeatable)"),
        vsock: str = typer.Option(None, "--vsock", help="virtio-vsock CID:UDS_PATH (Firecracker's host socket model)"),
        rng: bool = typer.Option(False, "--rng", help="virtio-rng fed by the host's getrandom()"),
        balloon: str = typer.Option(None, "--balloon", help="virtio-balloon MIB[,reporting=off]: its initial target in MiB (0: nothing inflated), free page reporting on unless turned off"),
        hugepages: bool = typer.Option(None, "--hugepages/--no-hugepages",
                                       help="back guest RAM with transparent huge pages (default: when the host's shmem THP setting allows)"),
    ) -> int:
        return boot_main(kernel=kernel, initrd=initrd, cmdline=cmdline, append=append, cpus=cpus,
                         memory=parse_memory(memory), console_log=console_log, quiet=quiet, hugepages=hugepages,
                         devices=dict(disks=tuple(disk), taps=tuple(tap), vsock=vsock, rng=rng, balloon=balloon))


# The fast path's options: flag -> (name, kind). Kinds: "str" and "int" take a value,
# "list" takes one per use, a tuple is (name, constant) stored without a value.
_FAST_OPTIONS = {
    "--kernel": ("kernel", "str"), "-k": ("kernel", "str"),
    "--initrd": ("initrd", "str"), "-i": ("initrd", "str"),
    "--cmdline": ("cmdline", "str"), "-c": ("cmdline", "str"),
    "--append": ("append", "list"), "-a": ("append", "list"),
    "--cpus": ("cpus", "int"), "--memory": ("memory", "str"), "-m": ("memory", "str"),
    "--console-log": ("console_log", "str"), "--quiet": ("quiet", True), "-q": ("quiet", True),
    "--disk": ("disk", "list"), "--tap": ("tap", "list"), "--vsock": ("vsock", "str"),
    "--rng": ("rng", True), "--balloon": ("balloon", "str"),
    "--hugepages": ("hugepages", True), "--no-hugepages": ("hugepages", False),
}


def parse_fast(argv: list[str]) -> dict | None:
    """`mm boot`'s options as a dict, or None for anything unusual (help, an unknown or
    malformed option, a missing value), which typer then reports with its messages.
    A plain loop rather than argparse: argparse and gettext cost ~10 ms of CPU on the
    host, several hundred ms under the lab's emulation, all before the guest starts."""
    opts = {"kernel": None, "initrd": None, "cmdline": None, "append": [], "cpus": 1,
            "memory": "256m", "console_log": None, "quiet": False, "disk": [], "tap": [],
            "vsock": None, "rng": False, "balloon": None, "hugepages": None}
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=") if argv[i].startswith("--") else (argv[i], "", "")
        spec = _FAST_OPTIONS.get(flag)
        if spec is None:
            return None
        name, kind = spec
        if isinstance(kind, bool):
            if eq:
                return None
            opts[name] = kind
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        i += 1
        if kind == "int":
            if not value.strip().lstrip("-").isdigit():
                return None
            opts[name] = int(value)
        elif kind == "list":
            opts[name].append(value)
        else:
            opts[name] = value
    return opts


def fast(argv: list[str]) -> int | None:
    """`mm boot` without building the typer app (typer's import alone costs ~80 ms on the
    host and seconds in the lab, which would count against boot time). Returns None for
    --help or anything unusual so typer handles it with its messages."""
    o = parse_fast(argv)
    if o is None:
        return None
    return boot_main(kernel=o["kernel"], initrd=o["initrd"], cmdline=o["cmdline"], append=o["append"],
                     cpus=o["cpus"], memory=parse_memory(o["memory"]),
                     console_log=o["console_log"], quiet=o["quiet"], hugepages=o["hugepages"],
                     devices=dict(disks=tuple(o["disk"]), taps=tuple(o["tap"]), vsock=o["vsock"],
                                  rng=o["rng"], balloon=o["balloon"]))


def default_kernel() -> str:
    from vmm.errors import ConfigError

    try:
        from vmm.kernel import kernel_path
    except ImportError:
        raise ConfigError("no guest kernel is available", "pass --kernel PATH") from None
    return str(kernel_path())


def boot_main(*, kernel, initrd, cmdline, append, cpus, memory, console_log, quiet=False,
              hugepages: bool | None = None, devices: dict | None = None) -> int:
    import os
    import sys
    import threading

    from vmm.machine import DEFAULT_CMDLINE, Machine, MachineConfig
    from vmm.worker import affinity

    # Before any thread starts (they inherit it): MM_WORKER_CPUSET=single, as in the lab.
    affinity.apply(affinity.default_cpuset(os.urandom(4).hex()))
    config = MachineConfig(kernel=kernel or default_kernel(), initrd=initrd,
                           cmdline=DEFAULT_CMDLINE if cmdline is None else cmdline,
                           extra_cmdline=tuple(append), cpus=cpus, memory=memory,
                           console_log=console_log, hugepages=hugepages, **(devices or {}))
    out_fd = sys.stdout.fileno()

    def console(data: bytes) -> None:
        try:
            os.write(out_fd, data)
        except OSError:
            pass  # the terminal went away; the log still has it

    events = None
    if config.device_specs():
        # The devices' fds (I/O completions, TAP, vsock sockets) are served by the same
        # loop the worker uses, on a thread of its own here.
        from vmm.worker.loop import Loop

        events = Loop()
        threading.Thread(target=events.run, name="devices", daemon=True).start()
    with Machine(config, console=None if quiet else console, events=events) as machine:
        machine.start()
        with _StdinForwarder(machine):
            end = machine.wait()
    if events is not None:
        events.call_soon_threadsafe(events.stop)
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
