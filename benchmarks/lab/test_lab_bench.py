"""The lab's figures: boot to a command, `mm lab exec -- python3 -c pass`, and our guest
kernel's boot under QEMU microvm inside the lab (the baseline our VMM must beat).

    .venv/bin/pytest benchmarks/lab -p no:cacheprovider

Targets on this machine kind: boot to command ≤ 10 s, `python3 -c pass` ≤ 1.5 s. The boot
figures use a private lab (own MM_STATE, stopped at the end), so a shared lab is never
disturbed and the boot figure is a cold boot each round. The kernel figure records the guest's own uptime at init in `extra_info` next to the wall time.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmm import hostinfo, kernel, paths
from vmm.kernel.smoke import microvm_argv, parse_report, tiny_initramfs

MM = str(Path(sys.executable).with_name("mm"))

pytestmark = pytest.mark.skipif(
    hostinfo.runs_standard_guests() or hostinfo.in_lab(), reason="the lab is for hosts without hardware KVM"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A private lab (its own MM_STATE): the boot figure must not stop a lab others share."""
    from vmm.lab import Lab, is_prepared

    if not is_prepared():
        pytest.skip("the lab is not prepared: run `mm lab prepare`")
    old = os.environ.get("MM_STATE")
    os.environ["MM_STATE"] = str(tmp_path_factory.mktemp("lab-state"))
    lab = Lab()
    try:
        yield lab
    finally:
        lab.down()
        if old is None:
            del os.environ["MM_STATE"]
        else:
            os.environ["MM_STATE"] = old


def test_boot_to_command(benchmark, lab):
    def cold_boot():
        lab.down()
        lab.ensure_up()
        rc, _, _ = lab.exec(["true"])
        assert rc == 0

    benchmark.pedantic(cold_boot, rounds=3, iterations=1)


def _mm_exec(*argv: str) -> None:
    # As a user types it, from a shell whose PATH has the venv first (mm is on PATH).
    env = {**os.environ, "PATH": f"{Path(MM).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    subprocess.run([MM, "lab", "exec", "--", *argv], env=env, check=True)


def test_exec_python_pass(benchmark, lab):
    lab.ensure_up()
    benchmark.pedantic(_mm_exec, args=("python3", "-c", "pass"), rounds=10, warmup_rounds=1)


def test_exec_true(benchmark, lab):
    """The exec channel alone (mm start-up + connection + fork/exec in the lab)."""
    lab.ensure_up()
    benchmark.pedantic(_mm_exec, args=("true",), rounds=10, warmup_rounds=1)


@pytest.mark.parametrize("cpus, memory_mib", [(1, 256), (2, 1024)])
def test_kernel_boot_microvm(benchmark, lab, cpus, memory_mib):
    if not kernel.is_built():
        pytest.skip("the guest kernel is not built: run `mm kernel build`")
    from vmm.lab import results_dir

    lab.ensure_up()
    workdir = paths.ensure(results_dir() / "bench-kernel")
    initrd = tiny_initramfs(workdir / "init.cpio")
    argv = microvm_argv(kernel.kernel_path("vmlinux"), initrd, cpus=cpus, memory_mib=memory_mib)
    uptimes = []

    def boot():
        rc, out, err = lab.exec(argv, timeout=300)
        report = parse_report(out + err)
        assert rc == 0 and report is not None, (out + err)[-2000:]
        uptimes.append(report.uptime)

    benchmark.pedantic(boot, rounds=3, warmup_rounds=1)
    benchmark.extra_info["guest_uptime_at_init_s"] = uptimes
