"""`mm run`'s own process stays free of the stdlib modules it avoids on purpose: a fresh
interpreter, started as the `mm` launcher starts it (-S), imports what a warm `mm run`
imports from its start to the workload's first byte (the CLI, options, the image store
and a cached resolve, provisioning, the worker launch, the API and agent clients) and
must not have loaded them. In the lab each one costs tens of milliseconds of every
`mm run` (hashlib alone loads OpenSSL: ~45 ms); benchmarks/cli/timeline_run.py has the
figures."""
from __future__ import annotations

import json
import subprocess
import sys

from vmm.worker.launch import worker_env

MODULES = ["vmm.cli.main", "vmm.cli.run", "vmm.cli.fastargs", "vmm.cli.stdio", "vmm.machines.options",
           "vmm.image.images", "vmm.image.store", "vmm.machines.db", "vmm.machines.control", "vmm.machines.ids",
           "vmm.machines.provision", "vmm.guest.initramfs", "vmm.guest.bootconfig", "vmm.kernel", "vmm.jail.config",
           "vmm.worker.launch", "vmm.worker.forkserver_client", "vmm.api.client", "vmm.guest.agent_client",
           "vmm.timeline"]
AVOIDED = ["typing", "hashlib", "_hashlib", "secrets", "subprocess", "shutil", "tempfile", "dataclasses",
           "inspect", "typer", "click"]


def test_run_path_imports_no_heavy_modules():
    code = (f"import sys, json\nfor m in {MODULES!r}: __import__(m)\n"
            f"print(json.dumps([m for m in {AVOIDED!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-S", "-c", code], env=worker_env(), check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == []


def test_a_cached_resolve_and_new_ids_load_none_of_them(tmp_path):
    """Not only imports: what a warm run calls before its worker starts (the store's
    reference lookup hashes a name; a machine gets an id and a name; the kernel's cache
    key; the built guest init) stays off them too."""
    code = ("import sys, json\n"
            "from vmm.image.store import Store\n"
            "from vmm.machines import ids\n"
            f"store = Store({str(tmp_path)!r})\n"
            "assert store.get_ref('mm/default:latest') is None\n"
            "ids.new_id(); ids.random_name()\n"
            "from vmm.kernel import build_dir; build_dir()\n"
            "from vmm.guest.initramfs import mm_init_binary; mm_init_binary()\n"
            f"print(json.dumps([m for m in {AVOIDED!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-S", "-c", code], env=worker_env(), check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == []
