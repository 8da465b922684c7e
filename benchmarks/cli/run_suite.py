"""The `run` suite of benchmarks/sidebyside.py: `mm run --rm` of the built-in default image
against QEMU microvm booting the same kernel and the same root filesystem.

    mm lab exec -- .venv/bin/python benchmarks/sidebyside.py run --rounds 5 [--no-jail]

Both sides run the workload `echo mm-first-byte` and power off; `to_marker` is command
start to the workload's first output byte, `to_exit` is the whole command end to end.

- mm: `mm run --rm --network none mm/default echo mm-first-byte`, as a user types it:
  CLI start-up, provisioning (writable disk, initrd), the worker and its jail, the boot,
  the workload's stdio over vsock, and the removal afterwards.
- qemu-microvm: our guest kernel with the image's erofs root as the first virtio-mmio
  disk and an ext4 writable layer as the second (prepared once, outside the clock), our
  mm-init as the initrd with the same boot configuration except that the workload's
  stdio is the serial console (QEMU has no vsock device here). `-nodefaults`, no
  network, the same vCPUs and memory. Under microvm's hardware-reduced ACPI Linux has
  no ISA IRQ for the 8250, so every tty write to the console fails (EIO; measured in
  the lab: `echo` exits 1 and prints nothing). The QEMU workload therefore writes its
  line through /dev/kmsg at level 2, which printk puts on the serial console even with
  `quiet` (as benchmarks/boot/initramfs.py does): `sh -c 'echo "<2>mm-first-byte" >
  /dev/kmsg'`, one busybox sh more than ours runs.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

MARKER = "mm-first-byte"
QEMU_COMMAND = ["sh", "-c", f'echo "<2>{MARKER}" > /dev/kmsg']
CMDLINE = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet"  # vmm.machines.provision.GUEST_CMDLINE


def _qemu_files(image, rootfs: Path) -> tuple[Path, Path]:
    """The initrd (mm-init + a console-stdio boot config) and the writable layer for QEMU.
    The root's type is its file's suffix, as vmm.machines.provision gives it to mm's guest
    (the default image's root is ext4: told "erofs", QEMU's guest never mounted it)."""
    from vmm import paths
    from vmm.guest.bootconfig import BootConfig
    from vmm.guest.initramfs import build_initrd
    from vmm.image.rootfs import create_writable_disk

    base = paths.ensure(paths.cache_dir() / "bench" / "run")
    config = BootConfig.from_oci(image.config_blob, command=QEMU_COMMAND, hostname="qemu", root="/dev/vda",
                                 rootfstype=rootfs.suffix.lstrip("."), overlay="/dev/vdb", stdio="console")
    initrd = build_initrd(base / "qemu-initrd", config)
    rw = base / "qemu-rw.ext4"
    rw.unlink(missing_ok=True)
    create_writable_disk(rw, "1g")
    return initrd, rw


def contenders(args, contender_type, mib) -> tuple[list, str]:
    from vmm.image.images import resolve

    kernel = args.kernel
    if kernel is None:
        from vmm.kernel import kernel_path

        kernel = str(kernel_path("vmlinux"))
    image = resolve("mm/default")
    rootfs = str(image.rootfs_path)
    mem_mib = mib(args.memory)
    # Inside the lab the state directory must be on its own tmpfs (no Unix sockets over 9p).
    state = tempfile.mkdtemp(prefix="mm-bench-run-", dir="/tmp")
    mm_argv = [str(Path(sys.executable).with_name("mm")), "run", "--rm", "--network", "none",
               "--cpus", str(args.cpus), "--memory", f"{mem_mib}m", "--kernel", kernel]
    mm_argv += ["--no-jail"] if getattr(args, "no_jail", False) else []
    ours = contender_type("mm", mm_argv + ["mm/default", "echo", MARKER], MARKER, env={"MM_STATE": state})
    initrd, rw = _qemu_files(image, Path(rootfs))
    cpu = "host,-arch-capabilities" if os.path.exists("/sys/module/kvm_pvm") else "host"
    qemu = contender_type("qemu-microvm", [
        args.qemu, "-M", "microvm", "-accel", "kvm", "-cpu", cpu, "-smp", str(args.cpus),
        "-m", f"{mem_mib}M", "-nodefaults", "-no-user-config", "-display", "none",
        "-serial", "stdio", "-no-reboot", "-kernel", kernel, "-initrd", str(initrd),
        "-append", f"{CMDLINE} {args.append}".strip(),
        "-drive", f"id=root,file={rootfs},format=raw,if=none,readonly=on", "-device", "virtio-blk-device,drive=root",
        "-drive", f"id=rw,file={rw},format=raw,if=none", "-device", "virtio-blk-device,drive=rw",
    ], MARKER)
    details = (f"`echo {MARKER}` in mm/default ({rootfs}), kernel {kernel}, {args.cpus} vCPU, {mem_mib} MiB; "
               f"mm {'without' if getattr(args, 'no_jail', False) else 'with'} its jail, state {state}")
    return [ours, qemu], details
