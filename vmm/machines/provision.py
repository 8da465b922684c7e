"""From `mm run`'s options and an image to a worker configuration for a Linux guest.

    worker = provision(control, rec, opts, image)    # disks, initrd, keys, network
    rec = control.start(rec.id)                      # the worker boots it

What one machine gets, all under its directory (`vmm.machines.layout`) so `mm rm`
removes it whole, except the network attachment (`vmm.network`, released by
`MachineControl.cleanup`):

| piece | where | guest side |
| --- | --- | --- |
| the image's read-only root filesystem | the image cache, shared | `/dev/vda` (ext4 or erofs) |
| a sparse ext4 writable layer (`--disk-size`) | `rw.ext4` | `/dev/vdb`, overlay upper |
| the initrd: mm-init + this VM's boot config | `initrd` | PID 1 |
| vsock, Firecracker's host-socket model | `vsock.sock` | agent on 1024, workload stdio on 1025 |
| SSH keys (`--ssh`) | `ssh/` | dropbear on port 22 |
| TAP in the VM's network namespace | `vmm.network` | `eth0`, 172.31.255.2/30 |

The workload's stdio always goes over vsock (`stdio=vsock`) and is held by the worker
(vmm/worker/workload.py), so detached and attached runs behave the same and `mm logs`
keeps stdout and stderr apart. A failure leaves nothing behind that `cleanup` would
not remove.
"""
from __future__ import annotations

import socket
from pathlib import Path

from vmm.machines.options import Publish, RunOptions

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~40 ms of `mm run` start-up in the lab (tests/unit/cli/test_run_imports.py)
    from typing import Any

AGENT_PORT = 1024
ATTACH_PORT = 1025
GUEST_CID = 3  # every VM has its own vsock device, so one guest CID serves them all
STOP_TIMEOUT_S = 10.0  # Docker's default grace period
FACTORY = "vmm.machine:worker_factory"
# The console carries kernel messages only (the workload's stdio is on vsock): keep it
# quiet so boots are not slowed by a chatty serial port.
GUEST_CMDLINE = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet"


def publish_specs(publish: list[Publish]) -> list[str]:
    """`-p` rules in vmm.network's form, a free host port picked where none was given."""
    out = []
    for p in publish:
        host_port = p.host_port or _free_port(p.host_ip, p.proto)
        out.append(f"{p.host_ip}:{host_port}:{p.guest_port}/{p.proto}")
    return out


def _free_port(host_ip: str, proto: str) -> int:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host_ip, 0))
        return s.getsockname()[1]


def boot_config(rec, opts: RunOptions, image_config: dict, attachment, ssh: bool,
                terminal: tuple[int, int] | None, rootfstype: str = "ext4"):
    """The guest's /mm/config: Docker's rules for the image config plus overrides."""
    from vmm.guest.bootconfig import BootConfig

    net: dict[str, Any] = {}
    if attachment is not None and attachment.guest_ip:
        net = {"ip": f"{attachment.guest_ip}/{attachment.guest_prefixlen}", "gw": attachment.gateway,
               "dns": list(attachment.dns)}
    rows, cols = terminal or (24, 80)
    return BootConfig.from_oci(
        image_config, command=opts.cmd or None, entrypoint=opts.entrypoint, env=opts.env,
        workdir=opts.workdir, user=opts.user, hostname=rec.short_id, root="/dev/vda", rootfstype=rootfstype,
        overlay="/dev/vdb", ssh=ssh, stdio="vsock", tty=opts.tty, rows=rows, cols=cols,
        agent_port=AGENT_PORT, attach_port=ATTACH_PORT, stop_timeout=int(STOP_TIMEOUT_S), **net)


def machine_config(opts: RunOptions, rootfs: Path, root: Path, attachment, kernel: str) -> dict[str, Any]:
    """The vmm.machine.MachineConfig fields (JSON) the worker builds the VM from."""
    taps, netns = [], None
    if attachment is not None and attachment.tap:
        taps, netns = [f"{attachment.tap}:{attachment.guest_mac}"], attachment.netns
    return {
        "kernel": kernel, "initrd": str(root / "initrd"), "cmdline": GUEST_CMDLINE,
        "cpus": opts.vcpus, "memory": opts.memory_mib << 20,
        "console_log": None,  # the worker keeps console.log itself
        "disks": [f"{rootfs}:ro", str(root / "rw.ext4")], "taps": taps, "netns": netns,
        "vsock": f"{GUEST_CID}:{root / 'vsock.sock'}",
    }


def provision(control, rec, opts: RunOptions, image, terminal: tuple[int, int] | None = None) -> dict[str, Any]:
    """Build everything `rec` needs to boot `image`; returns the worker configuration
    (also stored in the record with the network attachment and IP)."""
    from vmm.guest.initramfs import build_initrd
    from vmm.image.rootfs import create_writable_disk

    paths = control.paths(rec).create()
    kernel = opts.kernel or _default_kernel()
    rootfs = image.rootfs_path  # built on first use, then cached per image digest
    create_writable_disk(paths.root / "rw.ext4", f"{opts.disk_size_mib}M")
    keys = None
    if opts.ssh:
        from vmm.guest.ssh import generate

        keys = generate(paths.root / "ssh")
    attachment = _attach_network(rec, opts)
    config = boot_config(rec, opts, image.config_blob, attachment, opts.ssh, terminal,
                         rootfstype=rootfs.suffix.lstrip("."))
    build_initrd(paths.root / "initrd", config, keys)
    from vmm.jail.config import for_machine
    from vmm.worker.affinity import default_cpuset

    worker = {"factory": FACTORY, "machine": machine_config(opts, rootfs, paths.root, attachment, kernel),
              "agent_port": AGENT_PORT, "attach_port": ATTACH_PORT, "stdin_open": opts.interactive,
              "stop_timeout": STOP_TIMEOUT_S, "cpuset": opts.cpuset or default_cpuset(rec.id),
              "jail": for_machine(opts.vcpus, opts.memory_mib, cpus=opts.cpu_quota, pids=opts.pids_limit,
                                  enabled=not opts.no_jail)}
    control.machines.update(rec.id, ip=attachment.host_ip if attachment else None,
                            config={**rec.config, "worker": worker, "ssh": opts.ssh,
                                    "network": attachment.as_dict() if attachment else None})
    return worker


def _attach_network(rec, opts: RunOptions):
    network = opts.network or "mm"
    if network == "none":  # decided before vmm.network (and pyroute2, slow to import) loads
        if opts.publish:
            from vmm.errors import UsageError

            raise UsageError("--network none cannot publish ports", "drop -p, or pick a network")
        return None
    from vmm.network import attach

    return attach(rec.id, network, publish_specs(opts.publish))


def _default_kernel() -> str:
    from vmm.kernel import kernel_path

    return str(kernel_path())
