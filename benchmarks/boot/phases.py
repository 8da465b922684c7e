"""Where `mm boot`'s time goes before and after the first KVM_RUN: one boot, phase by phase.

    .venv/bin/python benchmarks/boot/phases.py [--kernel K] [--cpus N] [--memory 256m]
    mm lab exec -- /work/main/.venv/bin/python /work/main/benchmarks/boot/phases.py

Runs the steps `mm boot` runs (vmm.cli.boot.boot_main -> vmm.machine.Machine, with
Machine.start() spelled out so its parts are timed) with the
boot test initramfs, timing each, and prints one JSON line: seconds from process start
(the kernel's start time of this process) to the end of each phase. The `spawn` phase
is the interpreter's own start-up (site, encodings) before this file runs. Imports are
timed in the order the fast path takes them.
"""
import os
import time

T_MAIN = time.monotonic()


def _process_start() -> float:
    """CLOCK_MONOTONIC at this process's start (from /proc; clock-tick resolution)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[19])  # starttime, field 22 (counted from 3 after the comm)
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    # starttime is in ticks since boot; boot time in CLOCK_MONOTONIC terms is now - uptime
    # (CLOCK_MONOTONIC excludes suspend, as does /proc/uptime's first field here).
    return time.monotonic() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    t0 = _process_start()
    marks = [("spawn", T_MAIN)]

    def mark(name: str) -> None:
        marks.append((name, time.monotonic()))

    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    import vmm.cli.main  # noqa: F401  (what `mm` imports first)
    import vmm.cli.boot
    mark("import cli")
    from vmm.machine import DEFAULT_CMDLINE, Machine, MachineConfig
    from vmm.vcpus import Vcpus
    mark("import machine")

    from benchmarks.boot import initramfs
    from vmm import paths

    kernel = args.get("--kernel") or vmm.cli.boot.default_kernel()
    rootfs = str(initramfs.build(paths.cache_dir() / "boot"))
    config = MachineConfig(kernel=kernel, initrd=rootfs, cmdline=DEFAULT_CMDLINE,
                           extra_cmdline=("quiet", "mmaction=poweroff"),
                           cpus=int(args.get("--cpus", 1)),
                           memory=vmm.cli.boot.parse_memory(args.get("--memory", "256m")))
    seen = bytearray()

    def console(data: bytes) -> None:
        seen.extend(data)
        if initramfs.MARKER.encode() in seen and not any(n == "guest marker" for n, _ in marks):
            mark("guest marker")

    mark("config")
    machine = Machine(config, console=console)
    mark("Machine() (KVM, VM, memory, devices)")
    from vmm.arch.x86 import boot

    vcpus = [machine.vm.create_vcpu(i) for i in range(config.cpus)]
    machine.vcpus = Vcpus(machine.kvm, machine.vm, vcpus, machine.pio, machine.mmio,
                          on_exit=machine._on_exit)
    machine.vcpus.configure_all()
    mark("vCPUs created and configured")
    machine.boot_kind = boot.boot_linux(machine.mem, vcpus[0], kernel=config.kernel,
                                        initrd=config.initrd, cmdline=machine.cmdline(),
                                        ncpus=config.cpus)
    mark("kernel, initrd, tables loaded")
    machine.vcpus.start()
    mark("vCPU threads started (first KVM_RUN)")
    end = machine.wait()
    mark("guest ended")
    huge = machine.mem.hugepages
    machine.close()
    import json

    report = initramfs.parse_report(seen.decode(errors="replace"))
    print(json.dumps({"phases": [(name, round(t - t0, 4)) for name, t in marks],
                      "end": end.reason, "guest_uptime": report.get("uptime"),
                      "hugepages": huge}))


if __name__ == "__main__":
    main()
