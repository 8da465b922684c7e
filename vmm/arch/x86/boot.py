"""Put a Linux kernel, its initrd, command line and ACPI tables in guest memory and set
the boot vCPU's entry state.

    kind = boot_linux(mem, vcpu0, kernel="vmlinux", initrd="rd.cpio", cmdline="...", ncpus=4)

PVH ("pvh"): hvm_start_info at PVH_INFO_ADDR (memmap, cmdline, the initrd as module 0,
RSDP), 32-bit flat protected mode, ebx -> start info. 64-bit boot protocol ("elf64",
"bzimage"): boot_params at ZERO_PAGE_ADDR, identity-mapped long mode, rsi -> it. The
other vCPUs wait for INIT/SIPI in the in-kernel LAPIC; the MADT tells Linux about them.
"""
from __future__ import annotations

import os

from vmm.arch.x86 import acpi, bootparams, e820, loader, pvh, regs
from vmm.arch.x86 import layout as L
from vmm.arch.x86.loader import KernelError

PAGE = 4096


class InitrdError(KernelError):
    """The initrd is missing or does not fit."""

    hint = "pass a cpio archive (optionally compressed) with --initrd"


def assemble_cmdline(base: str, extra=(), mmio_devices=()) -> str:
    """`base`, then `extra` words, then one virtio_mmio.device=4K@ADDR:IRQ per device."""
    parts = [p for p in [base.strip(), *extra] if p]
    parts += [f"virtio_mmio.device=4K@{addr:#x}:{irq}" for addr, irq in mmio_devices]
    line = " ".join(parts)
    if "\0" in line:
        raise KernelError("the kernel command line cannot contain NUL bytes", "")
    if len(line) >= L.CMDLINE_MAX:
        raise KernelError(f"kernel command line is {len(line)} bytes", f"keep it under {L.CMDLINE_MAX}")
    return line


def _load_initrd(mem, path: str, kernel_end: int, max_end: int) -> tuple[int, int]:
    try:
        size = os.stat(path).st_size
        if size == 0:
            raise InitrdError(f"initrd {path!r} is empty")
        low_end = min(mem.regions[0].end, max_end + 1)
        addr = (low_end - size) & ~(PAGE - 1)
        if addr < kernel_end:
            raise InitrdError(f"initrd {path!r} ({size >> 20} MiB) does not fit below "
                              f"{low_end >> 20} MiB next to the kernel", "give the VM more --memory")
        with open(path, "rb") as f:
            view = mem.view(addr, size)
            got = f.readinto(view)
            if got != size:
                raise InitrdError(f"initrd {path!r} changed while being read")
        return addr, size
    except FileNotFoundError:
        raise InitrdError(f"initrd {path!r} does not exist") from None
    except IsADirectoryError:
        raise InitrdError(f"initrd {path!r} is a directory") from None
    except OSError as exc:
        raise InitrdError(f"cannot read initrd {path!r}: {exc.strerror}") from None


def boot_linux(mem, vcpu, *, kernel: str, initrd: str | None, cmdline: str, ncpus: int,
               prefer_pvh: bool = True) -> str:
    """Load everything and set `vcpu`'s registers; returns the boot kind."""
    k = loader.load_kernel(mem, kernel, prefer_pvh=prefer_pvh)
    rd = None
    if initrd:
        max_end = bootparams.initrd_addr_max(k.setup_header) if k.kind == "bzimage" else 0xFFFF_FFFF
        rd = _load_initrd(mem, initrd, k.end, max_end)
    mem.write(L.CMDLINE_ADDR, cmdline.encode() + b"\0")
    tables, rsdp_addr = acpi.build(base=L.ACPI_ADDR, ncpus=ncpus)
    mem.write(L.ACPI_ADDR, tables)
    mem_map = e820.memory_map([(r.gpa, r.size) for r in mem.regions])
    if k.kind == "pvh":
        mem.write(L.PVH_MEMMAP_ADDR, pvh.memmap(mem_map))
        if rd:
            mem.write(L.PVH_MODLIST_ADDR, pvh.module_entry(*rd))
        mem.write(L.PVH_INFO_ADDR, pvh.start_info(
            cmdline_addr=L.CMDLINE_ADDR, memmap_addr=L.PVH_MEMMAP_ADDR, memmap_entries=len(mem_map),
            rsdp_addr=rsdp_addr, modlist_addr=L.PVH_MODLIST_ADDR, nr_modules=1 if rd else 0))
        regs.setup_protected_mode(vcpu, mem, k.entry, rbx=L.PVH_INFO_ADDR)
    else:
        mem.write(L.ZERO_PAGE_ADDR, bootparams.zero_page(
            cmdline_addr=L.CMDLINE_ADDR, e820=mem_map, initrd=rd, rsdp_addr=rsdp_addr,
            setup_header=k.setup_header))
        regs.setup_long_mode(vcpu, mem, k.entry, stack=L.BOOT_STACK_TOP, rsi=L.ZERO_PAGE_ADDR)
    return k.kind
