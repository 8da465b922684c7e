"""The one place that issues KVM ioctls from Python: `_ioctl(fd, name, arg)`.

Goes through libc's ioctl via ctypes (which drops the GIL for the call) and turns a
failure into `KvmError(name, errno)`. Nothing else in the tree issues a KVM ioctl;
only the Cython run loop issues KVM_RUN itself, from C.
"""
from __future__ import annotations

import ctypes as C
import errno as E

from vmm.errors import KvmError
from vmm.kvm.abi import IOCTLS

_libc = C.CDLL(None, use_errno=True)
_libc_ioctl = _libc.ioctl
_libc_ioctl.argtypes = [C.c_int, C.c_ulong, C.c_void_p]
_libc_ioctl.restype = C.c_int

# Hints for the errors a user can act on.
_HINTS = {
    E.ENOMEM: "the host is out of memory (or the memory size asked for is too large)",
    E.EPERM: "run as root, or give this user access to /dev/kvm (group kvm)",
    E.EACCES: "run as root, or give this user access to /dev/kvm (group kvm)",
}


def _ioctl(fd: int, name: str, arg: int | C._CData | C._Pointer | None = 0) -> int:
    """Issue KVM ioctl `name` on `fd`; `arg` is an int or a ctypes object (passed by
    reference). Returns the ioctl's non-negative result; raises KvmError otherwise."""
    request = IOCTLS[name]
    if arg is None:
        ptr = None
    elif isinstance(arg, int):
        ptr = arg
    else:
        ptr = C.addressof(arg)
    while True:
        ret = _libc_ioctl(fd, request, ptr)
        if ret >= 0:
            return ret
        err = C.get_errno()
        if err == E.EINTR and name != "KVM_RUN":
            continue
        raise KvmError(name, err, hint=_HINTS.get(err))
