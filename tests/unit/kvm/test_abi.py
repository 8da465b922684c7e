"""The ctypes struct layouts and the ioctl/constant table match the C headers.

A C program generated from vmm.kvm.structs / vmm.kvm.abi prints sizeof/offsetof of every
struct and every (nested) field, every ioctl number and every constant; gcc compiles it
against /usr/include/linux/kvm.h and we compare line by line.
"""
from __future__ import annotations

import ctypes as C
import shutil
import subprocess

import pytest

from vmm.kvm import abi, structs

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or not __import__("os").path.exists("/usr/include/linux/kvm.h"),
    reason="needs gcc and the linux kernel headers (linux-libc-dev)")


def _fields(cls, prefix=""):
    """(dotted C path, ctypes offset, ctypes size) of every field, recursing into nested
    structs/unions; anonymous members are flattened as C does."""
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for name, ftype, *_ in cls._fields_:
        desc = getattr(cls, name)
        if name in anonymous:
            for path, off, size in _fields(ftype):
                yield prefix + path, desc.offset + off, size
            continue
        path = prefix + name
        yield path, desc.offset, desc.size
        if isinstance(ftype, type) and issubclass(ftype, (C.Structure, C.Union)):
            for sub, off, size in _fields(ftype):
                yield f"{path}.{sub}", desc.offset + off, size


def _expected():
    lines, exprs = [], []
    for cls in structs.ALL_STRUCTS:
        tag = f"struct {cls._c_name_}"
        lines.append(f"sizeof {cls._c_name_} {C.sizeof(cls)}")
        exprs.append(f'printf("sizeof {cls._c_name_} %zu\\n", sizeof({tag}));')
        for path, off, size in _fields(cls):
            if path.startswith("s.") or path == "s":
                continue
            lines.append(f"{cls._c_name_}.{path} {off} {size}")
            exprs.append(f'printf("{cls._c_name_}.{path} %zu %zu\\n", offsetof({tag}, {path}), '
                         f"sizeof((({tag} *)0)->{path}));")
    for name, value in list(abi.IOCTLS.items()) + list(abi.CONSTANTS.items()):
        lines.append(f"{name} {value}")
        exprs.append(f'printf("{name} %llu\\n", (unsigned long long)({name}));')
    return lines, exprs


def test_struct_layouts_ioctls_and_constants_match_gcc(tmp_path):
    expected, exprs = _expected()
    src = tmp_path / "abi.c"
    src.write_text("#include <stddef.h>\n#include <stdio.h>\n#include <linux/kvm.h>\n"
                   "int main(void) {\n" + "\n".join(exprs) + "\nreturn 0;\n}\n")
    exe = tmp_path / "abi"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, capture_output=True)
    got = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    mismatches = [(e, g) for e, g in zip(expected, got) if e != g]
    assert len(got) == len(expected)
    assert not mismatches, "\n".join(f"ours {e!r} != C {g!r}" for e, g in mismatches)


def test_every_struct_is_checked():
    # Each struct the brief names is in the table the C check walks.
    names = {cls._c_name_ for cls in structs.ALL_STRUCTS}
    for required in ("kvm_regs", "kvm_sregs", "kvm_segment", "kvm_dtable", "kvm_fpu",
                     "kvm_xsave", "kvm_xcrs", "kvm_msrs", "kvm_msr_entry", "kvm_cpuid2",
                     "kvm_cpuid_entry2", "kvm_lapic_state", "kvm_mp_state", "kvm_vcpu_events",
                     "kvm_debugregs", "kvm_pit_config", "kvm_pit_state2", "kvm_irqchip",
                     "kvm_clock_data", "kvm_userspace_memory_region", "kvm_irqfd",
                     "kvm_ioeventfd", "kvm_dirty_log", "kvm_irq_level", "kvm_run"):
        assert required in names


def test_flexible_buffers():
    buf = structs.msrs_buffer([0x10, (0x174, 5)])
    assert buf.nmsrs == 2 and buf.entries[1].index == 0x174 and buf.entries[1].data == 5
    assert type(buf).entries.offset == C.sizeof(structs.kvm_msrs)
    cp = structs.cpuid_buffer(3)
    assert cp.nent == 3 and type(cp).entries.offset == C.sizeof(structs.kvm_cpuid2)
    assert C.sizeof(structs.xsave_buffer(100)) == 4096


def test_name_of():
    assert abi.name_of(abi.KVM_RUN) == "KVM_RUN"
    assert abi.name_of(0xDEAD) == "0xdead"
