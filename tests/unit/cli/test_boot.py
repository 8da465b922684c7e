"""`mm boot`'s option parsing (the fast path and typer share `parse_memory`), without a VM."""
from __future__ import annotations

import subprocess
import sys

import pytest

from vmm.cli import boot
from vmm.errors import UsageError

MiB, GiB = 1 << 20, 1 << 30


@pytest.mark.parametrize("text, size", [
    ("128m", 128 * MiB), ("128M", 128 * MiB), ("128MiB", 128 * MiB), ("128mb", 128 * MiB),
    ("2g", 2 * GiB), ("1.5g", 3 * GiB // 2), (" 64m ", 64 * MiB), (str(256 * MiB), 256 * MiB),
    ("65537k", 65 * MiB),            # rounded up to a whole MiB
])
def test_memory_sizes(text, size):
    assert boot.parse_memory(text) == size


@pytest.mark.parametrize("text, hint", [
    ("", "512m"), ("m", "512m"), ("-1g", "512m"), ("1..5g", "512m"), ("12x", "512m"),
    ("inf", "512m"), ("nan", "512m"),
    ("512", "did you mean 512m?"),  # Docker's rule: no unit means bytes
    ("32m", "at least 64m"),
    ("1000t", "less memory"),
])
def test_bad_memory_sizes_are_usage_errors(text, hint):
    with pytest.raises(UsageError) as info:
        boot.parse_memory(text)
    assert hint in info.value.hint


def test_boot_path_imports_stay_lean():
    """The fast path is the boot path: under the lab's emulation each of these costs from
    ~0.1 s (typing) to over a second (dataclasses -> inspect), before the guest starts."""
    code = ("import sys; import vmm.cli.main, vmm.cli.boot, vmm.machine, vmm.vcpus, vmm.memory, "
            "vmm.bus, vmm._fast.runloop, devices.legacy.serial, devices.legacy.i8042, "
            "devices.legacy.power; "
            "bad = [m for m in ('typer', 'click', 'rich', 'sqlite3', 'vmm.machines', 'argparse', "
            "'devices.virtio.config', 'pathlib', 'dataclasses', 'inspect', 'typing', 're', "
            "'devices.interfaces', 'vmm.worker.vm') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=str(boot.__file__).rsplit("/vmm/", 1)[0])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_fast_path_options():
    o = boot.parse_fast(["--kernel", "vmlinux", "-i", "rd", "--append=quiet", "-a", "x=1",
                         "--cpus", "4", "-m", "2g", "--disk", "a.img:ro", "--disk=b.img", "-q",
                         "--rng", "--balloon", "0", "--no-hugepages", "--vsock", "3:/tmp/v.sock"])
    assert o["kernel"] == "vmlinux" and o["initrd"] == "rd" and o["append"] == ["quiet", "x=1"]
    assert (o["cpus"], o["memory"], o["disk"], o["quiet"]) == (4, "2g", ["a.img:ro", "b.img"], True)
    assert (o["rng"], o["balloon"], o["hugepages"], o["vsock"]) == (True, "0", False, "3:/tmp/v.sock")
    assert o["cmdline"] is None and o["tap"] == [] and o["console_log"] is None
    defaults = boot.parse_fast([])
    assert (defaults["cpus"], defaults["memory"], defaults["hugepages"]) == (1, "256m", None)


@pytest.mark.parametrize("argv", [
    ["--help"], ["-h"], ["--kernel"], ["--cpus", "two"], ["--rng=yes"], ["--bogus"],
    ["vmlinux"], ["--kern", "vmlinux"], ["-qk", "vmlinux"],
])
def test_fast_path_leaves_the_unusual_to_typer(argv):
    assert boot.parse_fast(argv) is None
