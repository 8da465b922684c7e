"""KVM flavour detection from fake /proc and /sys trees."""
from __future__ import annotations

import pytest

from vmm import hostinfo


def make_tree(tmp_path, *, kvm=True, modules=(), flags="fpu sse2"):
    if kvm:
        (tmp_path / "dev").mkdir()
        (tmp_path / "dev/kvm").write_text("")
    for m in modules:
        (tmp_path / "sys/module" / m).mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    return tmp_path


@pytest.mark.parametrize(
    "modules,flags,expected",
    [
        (("kvm", "kvm_pvm"), "fpu", "pvm"),
        (("kvm", "kvm_intel"), "fpu vmx", "hardware-intel"),
        (("kvm", "kvm_amd"), "fpu svm", "hardware-amd"),
        (("kvm",), "fpu svm", "hardware-amd"),
        (("kvm",), "fpu", "none"),
    ],
)
def test_flavour(tmp_path, modules, flags, expected):
    assert hostinfo.kvm_flavour(make_tree(tmp_path, modules=modules, flags=flags)) == expected


def test_no_dev_kvm_is_none(tmp_path):
    assert hostinfo.kvm_flavour(make_tree(tmp_path, kvm=False, modules=("kvm_intel",))) == "none"


def test_only_hardware_kvm_runs_standard_guests(tmp_path):
    pvm, amd = tmp_path / "pvm", tmp_path / "amd"
    pvm.mkdir()
    amd.mkdir()
    assert not hostinfo.runs_standard_guests(make_tree(pvm, modules=("kvm_pvm",)))
    assert hostinfo.runs_standard_guests(make_tree(amd, modules=("kvm_amd",)))


def test_lab_marker(tmp_path):
    assert not hostinfo.in_lab(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run/mm-lab").write_text("")
    assert hostinfo.in_lab(tmp_path)
