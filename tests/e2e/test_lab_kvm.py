"""/dev/kvm where real guests run: a 64-bit guest's int3 reaches its own IDT handler.

On a PVM host (this machine kind) the same program stops at the int3 with an emulation
failure, which is why real Linux guests are tested in the lab here.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmm import hostinfo

SOURCE = Path(__file__).resolve().parent / "kvm_int3" / "int3.c"


def _compile(out_dir: Path) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (build-essential)")
    binary = out_dir / "int3"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(binary), str(SOURCE)], check=True, timeout=120)
    return binary


def test_int3_reaches_the_guest_idt(guest_host):
    binary = _compile(guest_host.workdir)
    res = guest_host.run([binary], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "exit io port=0x11 value=0x3" in res.stdout  # the #BP handler ran
    assert "exit io port=0x10 value=0x44" in res.stdout  # and returned to the code after int3
    assert res.stdout.rstrip().endswith("RESULT ok int3 handled by the guest IDT, then hlt")


@pytest.mark.skipif(hostinfo.kvm_flavour() != "pvm", reason="only a PVM /dev/kvm fails at int3")
def test_int3_is_an_emulation_failure_on_pvm(tmp_path):
    binary = _compile(tmp_path)
    res = subprocess.run([binary], capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "RESULT internal-error suberror=1" in res.stdout  # KVM_INTERNAL_ERROR_EMULATION
