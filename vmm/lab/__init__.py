"""The lab: a QEMU TCG machine with nested SVM where real Linux guests run on a PVM host.

Public API: `Lab` (ensure_up / exec / exec_stream / down / status), `prepare()`,
`is_prepared()`, `results_dir()` and the errors. See vmm/lab/lab.py for the layout on disk.
"""
from __future__ import annotations

from vmm.lab.assets import find_prepared, prepare
from vmm.lab.errors import LabError, LabNotPrepared, LabTimeout
from vmm.lab.lab import Lab, results_dir
from vmm.lab.qemu import LabSettings

__all__ = ["Lab", "LabError", "LabNotPrepared", "LabSettings", "LabTimeout", "is_prepared", "prepare", "results_dir"]


def is_prepared() -> bool:
    """True when `mm lab prepare` has left a complete kernel, module tree and initramfs."""
    return find_prepared() is not None
