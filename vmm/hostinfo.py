"""What kind of host this is: which /dev/kvm flavour, read from /proc and /sys.

Every function takes `root` so tests can feed a fake tree. Flavours:
  "hardware-intel" / "hardware-amd"  real VT-x / AMD-V KVM (bare metal or nested, or the lab)
  "pvm"                              kvm_pvm: software KVM, runs only PVM-patched guests at speed
  "none"                             no usable /dev/kvm
"""
from __future__ import annotations

from pathlib import Path

HARDWARE = ("hardware-intel", "hardware-amd")


def _p(root: str | Path, rel: str) -> Path:
    return Path(root) / rel.lstrip("/")


def kvm_flavour(root: str | Path = "/") -> str:
    if not _p(root, "/dev/kvm").exists():
        return "none"
    if _p(root, "/sys/module/kvm_pvm").is_dir():
        return "pvm"
    if _p(root, "/sys/module/kvm_intel").is_dir():
        return "hardware-intel"
    if _p(root, "/sys/module/kvm_amd").is_dir():
        return "hardware-amd"
    flags = cpu_flags(root)
    if "vmx" in flags:
        return "hardware-intel"
    if "svm" in flags:
        return "hardware-amd"
    return "none"


def cpu_flags(root: str | Path = "/") -> set[str]:
    try:
        text = _p(root, "/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def runs_standard_guests(root: str | Path = "/") -> bool:
    """True where a stock Linux guest kernel runs at speed on /dev/kvm (so no lab is needed)."""
    return kvm_flavour(root) in HARDWARE


def in_lab(root: str | Path = "/") -> bool:
    """True inside `mm lab` (its init leaves this marker)."""
    return _p(root, "/run/mm-lab").exists()
