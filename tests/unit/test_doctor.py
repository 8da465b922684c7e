"""Doctor's detection logic against fake trees, its constants against the C headers."""
from __future__ import annotations

import subprocess

import pytest

from vmm import doctor
from tests.unit.test_hostinfo import make_tree


def test_pvm_warns_and_points_to_the_lab(tmp_path):
    check = doctor.check_kvm(make_tree(tmp_path, modules=("kvm", "kvm_pvm")))
    assert check.status == doctor.WARN
    assert "PVM" in check.detail and "lab" in check.hint


def test_hardware_kvm_is_ok(tmp_path):
    check = doctor.check_kvm(make_tree(tmp_path, modules=("kvm", "kvm_amd"), flags="svm"))
    assert check.status == doctor.OK and "hardware-style KVM (AMD-V)" == check.detail


def test_no_kvm_fails_with_hint(tmp_path):
    check = doctor.check_kvm(make_tree(tmp_path, kvm=False))
    assert check.status == doctor.FAIL and check.hint


def test_missing_tun_fails(tmp_path):
    assert doctor.check_tun(tmp_path).status == doctor.FAIL


def test_seccomp_from_proc(tmp_path):
    assert doctor.check_seccomp(tmp_path).status == doctor.FAIL
    p = tmp_path / "proc/sys/kernel/seccomp"
    p.mkdir(parents=True)
    (p / "actions_avail").write_text("kill_process kill_thread trap errno user_notif trace log allow\n")
    assert doctor.check_seccomp(tmp_path).status == doctor.OK


def test_lab_check_inside_lab(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/mm-lab").write_text("")
    assert doctor.check_lab(tmp_path).status == doctor.OK


def test_uffd_constants_match_header(tmp_path):
    src = tmp_path / "c.c"
    src.write_text(
        "#include <stdio.h>\n#include <sys/ioctl.h>\n#include <sys/syscall.h>\n#include <linux/userfaultfd.h>\n"
        "int main(void){printf(\"%lu %lu %llu %d\\n\", (unsigned long)UFFDIO_API, (unsigned long)SYS_userfaultfd,"
        " (unsigned long long)UFFD_API, UFFD_FEATURE_PAGEFAULT_FLAG_WP);return 0;}\n"
    )
    exe = tmp_path / "c"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True)
    values = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert [int(v) for v in values] == [doctor.UFFDIO_API, doctor.SYS_userfaultfd, doctor.UFFD_API,
                                        doctor.UFFD_FEATURE_PAGEFAULT_FLAG_WP]


def test_real_userfaultfd_probe_runs():
    assert doctor.check_userfaultfd().status in (doctor.OK, doctor.WARN, doctor.FAIL)
