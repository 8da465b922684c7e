"""The lab's pieces without QEMU: cpio archives, module order, boot config, command line."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from vmm.lab import LabError, LabSettings, is_prepared
from vmm.lab.cpio import CpioWriter, read_names
from vmm.lab.initramfs import (
    AGENT_PORT, INIT_SCRIPT, BootConfig, Share, build_base, config_archive, resolve_modules,
)
from vmm.lab.qemu import command_line

MODULES_DEP = """\
kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko
kernel/fs/netfs/netfs.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko kernel/drivers/crypto/ccp/ccp.ko
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
kernel/drivers/crypto/ccp/ccp.ko:
"""


def _entries(blob: bytes) -> dict[str, tuple[int, bytes]]:
    return {name: (mode, data) for name, mode, data in read_names(blob)}


def test_cpio_round_trip_and_concatenation(tmp_path):
    import io

    first, second = io.BytesIO(), io.BytesIO()
    w = CpioWriter(first)
    w.file("a/b/c.txt", b"hello", 0o640)
    w.symlink("bin/sh", "busybox")
    w.chardev("dev/console", 5, 1)
    w.close()
    w2 = CpioWriter(second)
    w2.file("a/b/c.txt", b"later wins", 0o644)
    w2.close()
    blob = first.getvalue() + second.getvalue()
    assert len(first.getvalue()) % 4 == 0
    names = [n for n, _, _ in read_names(blob)]
    assert names[:3] == ["a", "a/b", "a/b/c.txt"]  # parents before children
    assert names.count("a/b/c.txt") == 2
    entries = _entries(blob)
    assert entries["a/b/c.txt"][1] == b"later wins"
    assert stat.S_ISLNK(entries["bin/sh"][0]) and entries["bin/sh"][1] == b"busybox"
    assert stat.S_ISCHR(entries["dev/console"][0])


def test_modules_come_after_their_dependencies():
    order = resolve_modules(["9p", "9pnet_virtio", "kvm-amd"], MODULES_DEP)
    names = [p.rsplit("/", 1)[-1] for p in order]
    assert len(names) == len(set(names))
    for before, after in [("netfs.ko", "fscache.ko"), ("fscache.ko", "9p.ko"), ("9pnet.ko", "9pnet_virtio.ko"),
                          ("irqbypass.ko", "kvm.ko"), ("ccp.ko", "kvm-amd.ko"), ("kvm.ko", "kvm-amd.ko")]:
        assert names.index(before) < names.index(after)


def test_an_unknown_module_is_a_typed_error():
    with pytest.raises(LabError, match="not in the lab kernel") as info:
        resolve_modules(["no_such_module"], MODULES_DEP)
    assert "mm lab prepare --force" in info.value.hint


def test_base_archive_has_busybox_and_modules_in_order(tmp_path):
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF busybox")
    root = tmp_path / "modules"
    order = resolve_modules(["kvm_amd"], MODULES_DEP)
    for rel in order:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    out = tmp_path / "base.cpio"
    build_base(out, busybox, root, order)
    entries = _entries(out.read_bytes())
    assert entries["bin/busybox"][1] == b"\x7fELF busybox"
    assert stat.S_ISCHR(entries["dev/console"][0])
    listed = entries["etc/mm-lab.modules"][1].decode().split()
    assert listed == [rel.rsplit("/", 1)[-1] for rel in order]
    assert entries["lib/mm-modules/kvm-amd.ko"][1] == b"kernel/arch/x86/kvm/kvm-amd.ko"


def _config(**over) -> BootConfig:
    shares = (
        Share("cache", Path("/root/.cache/mm"), True, "mmap"),
        Share("repo", Path("/work/main"), True, "mmap"),
        Share("venv", Path("/work/main/.venv"), False, "loose"),
        Share("host", Path("/"), False, "loose"),
        Share("state", Path("/var/lib/mm/lab/guest-state"), True, "mmap", guest_path=Path("/var/lib/mm")),
    )
    args = dict(shares=shares, python="/usr/bin/python3", agent=Path("/work/main/vmm/lab/agent.py"),
                token_file=Path("/var/lib/mm/tok en"), kernel_version="6.1.0-56-amd64",
                modules_dir=Path("/root/.cache/mm/lab/x/pkg/lib/modules/6.1.0-56-amd64"))
    args.update(over)
    return BootConfig(**args)


def test_config_archive_mounts_root_first_and_nested_shares_last():
    entries = _entries(config_archive(_config()))
    assert entries["init"][1].decode() == INIT_SCRIPT
    assert entries["init"][0] & 0o111
    lines = entries["etc/mm-lab.shares"][1].decode().splitlines()
    assert [line.split()[0] for line in lines] == ["host", "repo", "state", "cache", "venv"]
    assert lines[0] == "host ro loose /"
    assert "state rw mmap /var/lib/mm" in lines  # mounted where state_dir() is inside
    env = entries["etc/mm-lab.env"][1].decode()
    assert "MM_TOKEN_FILE='/var/lib/mm/tok en'" in env  # shell-quoted
    assert f"MM_PORT={AGENT_PORT}" in env


@pytest.mark.parametrize("tag, path, cache", [
    ("", "/x", "loose"), ("a" * 32, "/x", "loose"), ("bad-tag", "/x", "loose"),
    ("ok", "relative", "loose"), ("ok", "/new\nline", "loose"), ("ok", "/x", "sometimes"),
])
def test_bad_shares_are_rejected(tag, path, cache):
    with pytest.raises(LabError):
        Share(tag, Path(path), False, cache)


def test_command_line(tmp_path):
    cfg = _config()
    argv = command_line(
        kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd", shares=cfg.shares,
        settings=LabSettings(memory_mib=4096, cpus=2), host_port=4242,
        serial_log=tmp_path / "serial.log", qmp_socket=tmp_path / "qmp.sock", pidfile=tmp_path / "pid",
    )
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert "-M q35 -accel tcg,thread=multi -cpu max -smp 2 -m 4096M" in joined
    # The exec port is reachable from this host only.
    assert "hostfwd=tcp:127.0.0.1:4242-:7777" in joined
    fsdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-fsdev"]
    root = next(f for f in fsdevs if "path=/," in f)
    assert "readonly=on" in root
    assert all("readonly" not in f for f in fsdevs if "path=/work/main," in f)
    assert "-no-reboot" in argv and "-daemonize" in argv


def test_commas_in_share_paths_are_escaped(tmp_path):
    argv = command_line(
        kernel=tmp_path / "k", initrd=tmp_path / "i", shares=(Share("odd", Path("/a,b"), True, "mmap"),),
        settings=LabSettings(), host_port=1, serial_log=tmp_path / "s", qmp_socket=tmp_path / "q", pidfile=tmp_path / "p",
    )
    assert any("path=/a,,b," in a for a in argv)


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("MM_LAB_MEMORY", "6144")
    monkeypatch.delenv("MM_LAB_CPUS", raising=False)
    assert LabSettings.from_env() == LabSettings(6144, 2)
    assert LabSettings.from_env(memory_mib=1024, cpus=4) == LabSettings(1024, 4)
    monkeypatch.setenv("MM_LAB_CPUS", "two")
    with pytest.raises(LabError, match="MM_LAB_CPUS"):
        LabSettings.from_env()
    with pytest.raises(LabError, match="out of range"):
        LabSettings(memory_mib=100)


def test_not_prepared_in_an_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_CACHE", str(tmp_path))
    assert not is_prepared()
    from vmm.lab.assets import require_prepared
    from vmm.lab.errors import LabNotPrepared

    with pytest.raises(LabNotPrepared) as info:
        require_prepared()
    assert "mm lab prepare" in info.value.hint


def test_leases_count_only_live_processes(tmp_path, monkeypatch):
    import subprocess

    from vmm.lab import Lab

    monkeypatch.setenv("MM_STATE", str(tmp_path))
    lab = Lab()
    assert lab._other_users() == 0
    proc = subprocess.Popen(["true"])  # a pid that is gone by now
    proc.wait()
    leases = tmp_path / "lab" / "leases"
    leases.mkdir(parents=True)
    (leases / "gone").write_text(str(proc.pid))
    assert lab._other_users() == 0
    assert not (leases / "gone").exists()  # cleaned up
    with lab.lease():
        assert lab._other_users() == 1
    assert lab._other_users() == 0


def test_vmlinux_is_extracted_from_a_bzimage(tmp_path):
    import lzma
    import struct

    from vmm.lab.bzimage import extract_vmlinux

    elf = b"\x7fELF" + b"\x02\x01" + bytes(200)
    packed = lzma.compress(elf, format=lzma.FORMAT_XZ) + struct.pack("<I", len(elf))  # + size, as Linux appends
    setup_sects = 3
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20F)
    struct.pack_into("<II", image, 0x248, 100, len(packed))
    image += bytes(100) + packed
    bz = tmp_path / "vmlinuz"
    bz.write_bytes(bytes(image))
    assert extract_vmlinux(bz, tmp_path / "vmlinux").read_bytes() == elf
    bz.write_bytes(b"MZ" + bytes(1000))
    with pytest.raises(LabError, match="not a bzImage"):
        extract_vmlinux(bz, tmp_path / "vmlinux")
