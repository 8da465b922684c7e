"""Every number the jail uses matches the C headers: gcc prints them, we compare.

Covers vmm.jail.libc's constants (clone/namespace flags, mount flags, prctl options,
seccomp and syscall numbers) and its struct clone_args, the ioctl tables of vmm.jail.ioctls (TUN, terminal,
userfaultfd) and the seccomp notification's layout and ioctl number. The KVM numbers
are checked by tests/unit/kvm/test_abi.py.
"""
from __future__ import annotations

import ctypes as C
import os
import shutil
import subprocess

import pytest

from vmm.jail import ioctls, libc, seccomp

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or not os.path.exists("/usr/include/linux/userfaultfd.h"),
    reason="needs gcc and the linux kernel headers (linux-libc-dev)")

HEADERS = ("sched.h", "linux/sched.h", "sys/mount.h", "sys/prctl.h", "sys/syscall.h", "sys/ioctl.h", "linux/capability.h",
           "linux/seccomp.h", "linux/if_tun.h", "linux/userfaultfd.h", "termios.h")
# Newer than the headers of Debian 12 (6.1): checked by encoding only (vmm.jail.ioctls.ioc).
NEWER_THAN_HEADERS = {"UFFDIO_MOVE"}


def _numbers() -> dict[str, int]:
    table = dict(libc.CONSTANTS)
    table.update(ioctls.TUN)
    table.update(ioctls.TERMINAL)
    table.update(ioctls.USERFAULTFD)
    table["SECCOMP_IOCTL_NOTIF_RECV"] = seccomp.SECCOMP_IOCTL_NOTIF_RECV
    return table


def _run_c(tmp_path, body: str) -> list[str]:
    src = tmp_path / "jail.c"
    includes = "".join(f"#include <{h}>\n" for h in HEADERS)
    src.write_text("#define _GNU_SOURCE\n#include <stdio.h>\n#include <stddef.h>\n" + includes
                   + "int main(void) {\n" + body + "\nreturn 0;\n}\n")
    exe = tmp_path / "jail"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True, capture_output=True)
    return subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()


def test_constants_and_ioctl_numbers_match_gcc(tmp_path):
    table = _numbers()
    body = "\n".join(
        f'#ifdef {name}\nprintf("{name} %llu\\n", (unsigned long long)({name}));\n'
        f'#else\nprintf("{name} undefined\\n");\n#endif' for name in table)
    got = dict(line.split(" ", 1) for line in _run_c(tmp_path, body))
    undefined = {name for name, value in got.items() if value == "undefined"}
    assert undefined <= NEWER_THAN_HEADERS, f"not in the headers: {sorted(undefined - NEWER_THAN_HEADERS)}"
    wrong = {n: (table[n], int(v)) for n, v in got.items() if v != "undefined" and int(v) != table[n]}
    assert not wrong, "\n".join(f"{n}: ours {a:#x} != C {b:#x}" for n, (a, b) in wrong.items())


def test_struct_sizes_match_gcc(tmp_path):
    structs = {"seccomp_notif": seccomp.seccomp_notif, "seccomp_data": seccomp.seccomp_data,
               "uffdio_api": ioctls.uffdio_api, "uffdio_register": ioctls.uffdio_register,
               "uffdio_range": ioctls.uffdio_range, "uffdio_copy": ioctls.uffdio_copy,
               "uffdio_zeropage": ioctls.uffdio_zeropage, "uffdio_writeprotect": ioctls.uffdio_writeprotect,
               "uffdio_continue": ioctls.uffdio_continue, "clone_args": libc._CloneArgs}
    body = "\n".join(f'printf("{n} %zu\\n", sizeof(struct {n}));' for n in structs)
    got = dict(line.split() for line in _run_c(tmp_path, body))
    assert {n: int(v) for n, v in got.items()} == {n: C.sizeof(s) for n, s in structs.items()}
    assert C.sizeof(ioctls.uffdio_move) == 40  # struct uffdio_move of Linux 6.8: 4 x u64 + s64
