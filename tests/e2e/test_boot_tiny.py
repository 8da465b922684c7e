"""`mm boot` end to end with tiny hand-built kernels on this host's /dev/kvm (any KVM,
PVM included): PVH entry (32-bit, ebx -> hvm_start_info) and the 64-bit boot protocol
(rsi -> boot_params), serial output, and each way a guest can end: ACPI S5 poweroff,
i8042 reset, pvpanic. Real Linux boots are in test_boot.py (they need the lab here).
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest

# ACPI_PORT is the high byte of the PM1a control register (0x604): bits 2-4 there are
# SLP_TYP, bit 5 is SLP_EN, so the byte (5 << 2) | (1 << 5) is "enter S5".
COM1, ACPI_PORT, PVPANIC, I8042 = 0x3F8, 0x605, 0x505, 0x64
LOAD = 0x100000

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                reason="needs /dev/kvm")


def out_byte(port: int, value: int) -> bytes:
    # mov dx, port; mov al, value; out dx, al  (same bytes in 32- and 64-bit mode)
    return b"\x66\xba" + struct.pack("<H", port) + bytes([0xB0, value, 0xEE])


def program(check: bytes, action: tuple[int, int]) -> bytes:
    """`check` must leave ZF set when the boot structure is right; then print OK (or
    BAD) and do `action` (port, value); then halt forever."""
    ok = b"".join(out_byte(COM1, c) for c in b"OK\n") + out_byte(*action)
    bad = b"".join(out_byte(COM1, c) for c in b"BAD\n") + out_byte(*action)
    code = check + b"\x75" + bytes([len(ok) + 2]) + ok + b"\xeb" + bytes([len(bad)]) + bad
    return code + b"\xf4\xeb\xfd"


# cmp dword [ebx], hvm_start_info magic
PVH_CHECK = b"\x81\x3b" + struct.pack("<I", 0x336EC578)
# cmp dword [rsi+0x202], "HdrS"
BOOT_PARAMS_CHECK = b"\x81\xbe" + struct.pack("<i", 0x202) + b"HdrS"


def elf(code: bytes, pvh: bool) -> bytes:
    notes = struct.pack("<III", 4, 8, 18) + b"Xen\0" + struct.pack("<Q", LOAD) if pvh else b""
    phdrs = [(1, LOAD, code)] + ([(4, 0, notes)] if notes else [])
    data_off = 64 + 56 * len(phdrs)
    head = struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 2, 62, 1, LOAD, 64, 0, 0,
                       64, 56, len(phdrs), 64, 0, 0)
    table, body = b"", b""
    for kind, paddr, blob in phdrs:
        table += struct.pack("<IIQQQQQQ", kind, 5, data_off + len(body), paddr, paddr, len(blob),
                             len(blob), 0x1000)
        body += blob
    return head + table + body


def mm_boot(tmp_path, image: bytes, *extra) -> subprocess.CompletedProcess:
    kernel = tmp_path / "tiny"
    kernel.write_bytes(image)
    return subprocess.run([sys.executable, "-m", "vmm", "boot", "--kernel", str(kernel),
                           "--memory", "64m", *extra], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("pvh, check", [(True, PVH_CHECK), (False, BOOT_PARAMS_CHECK)],
                         ids=["pvh", "64bit-protocol"])
def test_entry_state_serial_and_poweroff(tmp_path, pvh, check):
    res = mm_boot(tmp_path, elf(program(check, (ACPI_PORT, (5 << 2) | (1 << 5))), pvh),
                  "--console-log", str(tmp_path / "console.log"))
    assert res.stdout == "OK\n", res.stderr
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "console.log").read_text() == "OK\n"


@pytest.mark.parametrize("action, code, reason", [((I8042, 0xFE), 3, "reboot"),
                                                  ((PVPANIC, 1), 4, "panic")])
def test_reboot_and_panic_have_their_own_exit_status(tmp_path, action, code, reason):
    res = mm_boot(tmp_path, elf(program(PVH_CHECK, action), True), "--cpus", "2")
    assert res.stdout == "OK\n"
    assert res.returncode == code, res.stderr
    assert f"guest ended: {reason}" in res.stderr
