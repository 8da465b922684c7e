"""The worker's path to its first KVM_RUN stays free of the heavy stdlib modules it
avoided on purpose (benchmarks/kvm/test_worker_start.py has the figures): a fresh
interpreter, started as the launcher starts it (-S), imports what the supervisor, the
VMM, its service and jail and the tiny test guest import, and must not have loaded them."""
from __future__ import annotations

import json
import subprocess
import sys

from vmm.worker.launch import WORKER_ARGV, worker_env

MODULES = ["vmm.worker.main", "vmm.worker.service", "vmm.worker.loop", "vmm.api.server", "vmm.jail.enter",
           "vmm.jail.cell", "vmm.kvm", "vmm.memory", "vmm.vcpus", "vmm.bus", "vmm._fast.runloop",
           "vmm.arch.x86.regs", "tests.worker.tinyguest"]
AVOIDED = ["dataclasses", "inspect", "typing", "pyseccomp", "subprocess", "ctypes.util", "sqlite3",
           "traceback", "hashlib"]


def test_worker_start_path_imports_no_heavy_modules():
    code = (f"import sys, json\nfor m in {MODULES!r}: __import__(m)\n"
            f"print(json.dumps([m for m in {AVOIDED!r} if m in sys.modules]))")
    assert WORKER_ARGV[0] == "-S"
    out = subprocess.run([sys.executable, "-S", "-c", code], env=worker_env(), check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == []
