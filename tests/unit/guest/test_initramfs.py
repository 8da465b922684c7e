"""The initramfs: newc layout and what the base and per-VM archives contain."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from vmm.guest import initramfs
from vmm.guest.bootconfig import BootConfig
from vmm.guest.cpio import CpioWriter, read_names
from vmm.guest.errors import InitramfsError


def test_newc_round_trip_and_alignment():
    w = CpioWriter()
    w.add_file("a/b/c.txt", b"hello", 0o640)
    w.add_symlink("a/link", "b/c.txt")
    w.add_chardev("dev/console", 5, 1)
    data = w.finish()
    assert len(data) % 512 == 0
    names = read_names(data)
    assert set(names) == {"a", "a/b", "a/b/c.txt", "a/link", "dev", "dev/console"}
    assert names["a/b/c.txt"] == (stat.S_IFREG | 0o640, b"hello")
    assert names["a/link"][1] == b"b/c.txt"
    assert stat.S_ISCHR(names["dev/console"][0])


def test_newc_refuses_duplicates_and_dotdot():
    w = CpioWriter()
    w.add_file("x", b"")
    with pytest.raises(InitramfsError):
        w.add_file("x", b"")
    with pytest.raises(InitramfsError):
        w.add_file("../etc/passwd", b"")


@pytest.mark.skipif(not shutil.which("cpio"), reason="GNU cpio not installed")
def test_gnu_cpio_reads_our_archive(tmp_path):
    w = CpioWriter()
    w.add_file("dir/f", b"content", 0o600)
    (tmp_path / "a.cpio").write_bytes(w.finish())
    out = subprocess.run(["cpio", "-it"], stdin=(tmp_path / "a.cpio").open("rb"),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["dir", "dir/f"]


def test_config_archive_carries_config():
    names = read_names(initramfs.config_archive(BootConfig(argv=["true"])))
    assert set(names) == {"mm", "mm/config"}
    assert b"arg=true\n" in names["mm/config"][1]


def test_config_archive_with_ssh_needs_keys():
    with pytest.raises(InitramfsError):
        initramfs.config_archive(BootConfig(argv=["true"], ssh=True))


@pytest.mark.skipif(not shutil.which("musl-gcc"), reason="musl-tools not installed (needed to build mm-init)")
def test_initrd_contents(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_CACHE", str(tmp_path / "cache"))
    path = initramfs.build_initrd(tmp_path / "initrd", BootConfig(argv=["true"]))
    names = read_names(path.read_bytes())
    assert names["init"][1] == initramfs.mm_init_binary().read_bytes()
    assert names["init"][0] & 0o111
    assert stat.S_ISCHR(names["dev/console"][0])
    for d in ("proc", "sys", "dev", "mm/root"):
        assert stat.S_ISDIR(names[d][0])
    assert "mm/ssh/dropbear" not in names


@pytest.mark.skipif(not shutil.which("dropbear") and not shutil.which("/usr/sbin/dropbear"),
                    reason="dropbear-bin not installed")
@pytest.mark.skipif(not shutil.which("musl-gcc"), reason="musl-tools not installed (needed to build mm-init)")
def test_initrd_with_ssh_carries_dropbear_and_keys(tmp_path, monkeypatch):
    from vmm.guest import ssh

    monkeypatch.setenv("MM_CACHE", str(tmp_path / "cache"))
    keys = ssh.generate(tmp_path / "keys")
    path = initramfs.build_initrd(tmp_path / "initrd", BootConfig(argv=["true"], ssh=True), keys)
    names = read_names(path.read_bytes())
    for n in ("dropbear", "ld-linux-x86-64.so.2", "libc.so.6", "host_key", "authorized_keys"):
        assert f"mm/ssh/{n}" in names
    assert names["mm/ssh/authorized_keys"][1].decode().startswith("ssh-ed25519 ")
    assert keys.host_public.startswith("ssh-ed25519 ")


def test_mm_init_is_rebuilt_only_when_a_source_is_newer(tmp_path, monkeypatch):
    guest = tmp_path / "guest"
    (guest / "src").mkdir(parents=True)
    (guest / "out").mkdir()
    src, makefile, out = guest / "src" / "init.c", guest / "Makefile", guest / "out" / "mm-init"
    for i, path in enumerate((src, makefile, out)):
        path.write_text("x")
        os.utime(path, ns=(10**9 * (i + 1), 10**9 * (i + 1)))  # out is the newest
    runs = []

    class Made:
        returncode, stderr = 0, ""

    monkeypatch.setattr(initramfs, "GUEST_DIR", guest)
    import shutil
    import subprocess

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)  # imported where used
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: (runs.append(argv), Made())[1])
    assert initramfs.mm_init_binary() == out and runs == []
    os.utime(src, ns=(10**10, 10**10))  # an edit after the build
    assert initramfs.mm_init_binary() == out and runs == [["make", "-C", str(guest), "-s"]]
