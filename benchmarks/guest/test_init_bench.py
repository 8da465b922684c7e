"""mm-init's own cost as PID 1, measured on this host in fresh mount+pid+net+uts
namespaces (no VM): boot sequence (kernel filesystems, overlay root, switch root,
/etc files, loopback + NIC ioctls, agent fork) + the workload `true` + the orderly
end (kill-all, unmount, reboot). `test_baseline_namespace_true` is the same
namespaces running `true` directly; the difference is init's overhead.
Run (root):
    .venv/bin/python -m pytest benchmarks/guest --benchmark-only -p no:cacheprovider
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from vmm.guest.bootconfig import BootConfig

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not BUSYBOX or not shutil.which("musl-gcc"),
                                reason="needs root, busybox-static and musl-tools")
ROUNDS = 15
UNSHARE = ["unshare", "--mount", "--pid", "--net", "--uts", "--ipc", "--fork", "--propagation", "private"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from vmm.guest.initramfs import mm_init_binary

    base = tmp_path_factory.mktemp("initbench")
    ir, img = base / "ir", base / "img"
    for d in ("dev", "proc", "sys", "mm/root", "hostimg"):
        (ir / d).mkdir(parents=True)
    shutil.copy(mm_init_binary(), ir / "init")
    (img / "bin").mkdir(parents=True)
    (img / "etc").mkdir()
    shutil.copy(BUSYBOX, img / "bin" / "busybox")
    (img / "bin" / "true").symlink_to("busybox")
    (img / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    cfg = BootConfig(argv=["/bin/true"], root="/hostimg", overlay=None, ip="10.9.0.2/24", gw="10.9.0.1")
    (ir / "mm" / "config").write_bytes(cfg.render())
    return ir, img


def test_init_boot_true_shutdown(benchmark, tree, record):
    ir, img = tree
    script = (f"ip link add eth0 type veth peer name eth1; mount --bind {img} {ir}/hostimg; "
              f"exec chroot {ir} /init")

    def run():
        out = subprocess.run([*UNSHARE, "sh", "-c", script], capture_output=True, text=True).stdout
        assert "MM-EXIT code=0" in out

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    record(benchmark, "init: boot, `true`, shutdown")


def test_baseline_namespace_true(benchmark, tree, record):
    ir, img = tree
    script = f"ip link add eth0 type veth peer name eth1; mount --bind {img} {ir}/hostimg; exec chroot {img} /bin/true"
    benchmark.pedantic(lambda: subprocess.run([*UNSHARE, "sh", "-c", script], check=True), rounds=ROUNDS,
                       iterations=1, warmup_rounds=1)
    record(benchmark, "baseline: same namespaces, `true` alone")
