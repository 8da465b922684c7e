"""vmm.kernel without building: the fragment, the cache key, MM_KERNEL and the PVH note."""
from __future__ import annotations

import struct

import pytest

import vmm.kernel as k
from vmm.kernel.elfnote import XEN_ELFNOTE_PHYS32_ENTRY, has_pvh_note, pvh_entry

# What the issue asks the guest kernel to have (each must be =y in our fragment).
WANTED = """64BIT PVH KVM_GUEST PARAVIRT SMP X86_MPPARSE ACPI PVPANIC PVPANIC_MMIO SERIAL_8250
SERIAL_8250_CONSOLE PRINTK TTY UNIX98_PTYS VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK
VIRTIO_NET VSOCKETS VIRTIO_VSOCKETS HW_RANDOM HW_RANDOM_VIRTIO VIRTIO_BALLOON PAGE_REPORTING EXT4_FS
EROFS_FS OVERLAY_FS TMPFS DEVTMPFS DEVTMPFS_MOUNT PROC_FS SYSFS BLK_DEV_INITRD BINFMT_ELF
BINFMT_SCRIPT FUTEX EPOLL SIGNALFD TIMERFD EVENTFD SHMEM AIO FILE_LOCKING POSIX_TIMERS MULTIUSER
UTS_NS IPC_NS PID_NS NET_NS USER_NS CGROUPS MEMCG CGROUP_SCHED CGROUP_PIDS NET INET IPV6 PACKET
UNIX NETFILTER NF_TABLES TUN VETH BRIDGE SECCOMP SERIO_I8042 PARAVIRT_CLOCK""".split()


def test_fragment_has_everything_the_vmm_needs():
    opts = k.parse_fragment(k.FRAGMENT.read_text())
    missing = [o for o in WANTED if opts.get(f"CONFIG_{o}") != "y"]
    assert not missing
    assert int(opts["CONFIG_NR_CPUS"]) >= 32
    assert opts["CONFIG_MODULES"] == "n"


@pytest.mark.parametrize("text, match", [
    ("CONFIG_64BIT\n", "not a CONFIG_NAME=value"),
    ("FOO=y\n", "not a CONFIG_NAME=value"),
    ("CONFIG_A=y\nCONFIG_A=n\n", "set twice"),
    ("CONFIG_A=y\n", "must set"),
])
def test_bad_fragments_are_typed_errors(text, match):
    with pytest.raises(k.KernelError, match=match) as info:
        k.parse_fragment(text)
    assert info.value.hint


def test_cache_key_depends_on_every_input():
    base = k.cache_key("6.1.192-1", b"CONFIG_A=y\n", b"make\n")
    assert base == k.cache_key("6.1.192-1", b"CONFIG_A=y\n", b"make\n")
    others = {
        k.cache_key("6.1.192-2", b"CONFIG_A=y\n", b"make\n"),
        k.cache_key("6.1.192-1", b"CONFIG_A=n\n", b"make\n"),
        k.cache_key("6.1.192-1", b"CONFIG_A=y\n", b"make -j2\n"),
        # Boundaries count: moving bytes between parts is a different key.
        k.cache_key("6.1.192-1C", b"ONFIG_A=y\n", b"make\n"),
    }
    assert base not in others and len(others) == 4


def test_mm_kernel_wins(tmp_path, monkeypatch):
    mine = tmp_path / "my-vmlinux"
    mine.write_bytes(b"x")
    monkeypatch.setenv("MM_KERNEL", str(mine))
    assert k.kernel_path() == mine
    assert k.kernel_path("bzimage") == mine
    assert k.is_built()
    other = tmp_path / "other"
    other.write_bytes(b"y")
    assert k.kernel_path(override=other) == other


def test_mm_kernel_naming_nothing_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_KERNEL", str(tmp_path / "missing"))
    assert not k.is_built()
    with pytest.raises(k.KernelError, match="MM_KERNEL names"):
        k.kernel_path()


def test_not_built_points_to_mm_kernel_build(tmp_path, monkeypatch):
    monkeypatch.delenv("MM_KERNEL", raising=False)
    monkeypatch.setenv("MM_CACHE", str(tmp_path))
    assert not k.is_built()
    with pytest.raises(k.KernelError) as info:
        k.kernel_path()
    assert "mm kernel build" in info.value.hint
    with pytest.raises(k.KernelError, match="unknown kernel kind"):
        k.kernel_path("uimage")


def test_a_complete_cache_dir_is_built_and_a_partial_one_is_not(tmp_path, monkeypatch):
    monkeypatch.delenv("MM_KERNEL", raising=False)
    monkeypatch.setenv("MM_CACHE", str(tmp_path))
    d = k.build_dir()
    assert d.parent == tmp_path / "kernel"
    d.mkdir(parents=True)
    (d / "vmlinux").write_bytes(b"elf")
    (d / "bzImage").write_bytes(b"bz")
    assert not k.is_built()  # no config: a killed copy, not a build
    (d / "config").write_text("CONFIG_64BIT=y\n")
    assert k.is_built()
    assert k.kernel_path("bzimage") == d / "bzImage"


def _elf_with_note(name: bytes, ntype: int, desc: bytes) -> bytes:
    namesz = len(name) + 1
    note = struct.pack("<III", namesz, len(desc), ntype) + (name + b"\0").ljust((namesz + 3) & ~3, b"\0")
    note += desc.ljust((len(desc) + 3) & ~3, b"\0")
    phoff, phentsize = 64, 56
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, phoff)
    struct.pack_into("<HH", header, 0x36, phentsize, 1)
    note_off = phoff + phentsize
    phdr = struct.pack("<IIQQQQQQ", 4, 0, note_off, 0, 0, len(note), len(note), 4)
    return bytes(header) + phdr + note


def test_pvh_note_is_found(tmp_path):
    f = tmp_path / "vmlinux"
    f.write_bytes(_elf_with_note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", 0x1000370)))
    assert pvh_entry(f) == 0x1000370
    f.write_bytes(_elf_with_note(b"GNU", 3, b"\x01" * 20))
    assert not has_pvh_note(f)
    f.write_bytes(b"MZ not an elf")
    assert pvh_entry(f) is None
    with pytest.raises(k.KernelError, match="no PVH entry note"):
        k.verify_vmlinux(f)


STATUS = b"""Package: linux-source-6.1-extra
Status: install ok installed
Version: 9.9

Package: linux-source-6.1
Status: install ok installed
Priority: optional
Version: 6.1.192-3
Description: Linux kernel source
 Package: not-a-stanza
 Version: 0

Package: removed-pkg
Status: deinstall ok config-files
Version: 1.0
"""


def test_installed_version_reads_dpkg_status_like_dpkg_query(tmp_path):
    from vmm.kernel import installed_version, source_version

    status = tmp_path / "status"
    status.write_bytes(STATUS)
    assert installed_version("linux-source-6.1", status) == "6.1.192-3"
    assert installed_version("removed-pkg", status) is None  # config files only: not installed
    assert installed_version("not-a-stanza", status) is None  # inside a description
    assert installed_version("absent", status) is None
    assert installed_version("linux-source-6.1", tmp_path / "no-dpkg") is None
    tarball = tmp_path / "src.tar.xz"
    tarball.write_bytes(b"x")
    assert source_version(tarball, status) == "6.1.192-3"
    assert source_version(tarball, tmp_path / "no-dpkg").startswith("file:1:")
