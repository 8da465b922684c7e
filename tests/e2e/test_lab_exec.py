"""The lab itself, through `mm lab exec` as a user types it: exit codes, streams, env, cwd,
timeouts, concurrent commands, the shares, the marker and Debian's module tree."""
from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vmm import paths

MM = str(Path(sys.executable).with_name("mm"))


@pytest.fixture(scope="module")
def lab_host(guest_host):
    if guest_host.where != "lab":
        pytest.skip("this host runs real guests directly; the lab is not used here")
    return guest_host


def mm_exec(*argv, timeout=120, cwd=None, env=None):
    return subprocess.run([MM, "lab", "exec", *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def test_exit_code_streams_cwd_and_env(lab_host):
    import os

    env = {**os.environ, "MM_SOMETHING": "forwarded", "NOT_FORWARDED": "x"}
    res = mm_exec("--", "sh", "-c", 'echo "out $MM_SOMETHING ${NOT_FORWARDED:-unset}"; pwd; echo err >&2; exit 5',
                  cwd=paths.REPO_ROOT, env=env)
    assert res.returncode == 5
    assert res.stdout == f"out forwarded unset\n{paths.REPO_ROOT}\n"
    assert res.stderr == "err\n"


def test_timeout_is_exit_124_with_a_message(lab_host):
    start = time.monotonic()
    res = mm_exec("--timeout", "2", "--", "sleep", "60")
    assert res.returncode == 124
    assert "ran longer than 2 s" in res.stderr
    assert time.monotonic() - start < 30


def test_concurrent_commands(lab_host):
    with ThreadPoolExecutor(4) as pool:
        start = time.monotonic()
        results = list(pool.map(lambda i: lab_host.run(["sh", "-c", f"sleep 3; echo {i}"], timeout=120), range(4)))
        elapsed = time.monotonic() - start
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(4)]
    assert elapsed < 3 * 4  # they overlapped


def test_lab_layout(lab_host):
    script = (
        "cat /run/mm-lab && test -c /dev/kvm && "
        f"touch {lab_host.workdir}/written && "
        "! touch /usr/mm-readonly-probe 2>/dev/null && "
        "modprobe veth && ip link add mmv0 type veth peer name mmv1 && ip link del mmv0 && "
        "modprobe tun && test -c /dev/net/tun && echo layout-ok"
    )
    res = lab_host.run(["sh", "-c", script], timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1] == "layout-ok"
    assert (lab_host.workdir / "written").exists()  # the share is the host's directory


def test_in_lab_python_sees_hardware_kvm(lab_host):
    res = lab_host.run([sys.executable, "-c", "from vmm import hostinfo; print(hostinfo.kvm_flavour(), hostinfo.in_lab())"],
                       cwd=paths.REPO_ROOT, timeout=120)
    assert res.stdout.split() == ["hardware-amd", "True"], res.stderr
