"""Named network namespaces without forking: create, enter, remove, list.

`ip netns` and pyroute2's `netns.create` fork a helper per call; we unshare on the
calling thread instead (a network namespace is per thread), bind the new namespace to
/run/netns/NAME so `ip netns` tools see it, and switch the thread back. `entered(name)`
runs a block inside a namespace: sockets (netlink, TUN, TCP) opened there stay bound to
it after the thread returns, which is how the TAP fd reaches the worker.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator

from vmm.network.errors import NetworkError

RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_BIND = 0x1000
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def path(name: str) -> str:
    return os.path.join(RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.ismount(path(name))


def names(prefix: str = "") -> list[str]:
    try:
        entries = os.listdir(RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in entries if n.startswith(prefix))


def _check(result: int, what: str, name: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise NetworkError(
            f"network namespace {name}: {what} failed: {os.strerror(err)}",
            hint="mm needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) to create namespaces",
        )


def _share_run_dir() -> None:
    # As iproute2 does: /run/netns must be a shared mount so bind mounts propagate.
    os.makedirs(RUN_DIR, exist_ok=True)
    if _libc.mount(b"none", RUN_DIR.encode(), None, MS_SHARED | MS_REC, None) == 0:
        return
    _check(_libc.mount(RUN_DIR.encode(), RUN_DIR.encode(), None, MS_BIND | MS_REC, None), "bind run dir", RUN_DIR)
    _check(_libc.mount(b"none", RUN_DIR.encode(), None, MS_SHARED | MS_REC, None), "share run dir", RUN_DIR)


def _setns(fd: int, name: str) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns", name)


def create(name: str) -> bool:
    """Create namespace `name` unless it exists; True when it was created now."""
    if exists(name):
        return False
    _share_run_dir()
    target = path(name)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare", name)
        try:
            _check(_libc.mount(b"/proc/thread-self/ns/net", target.encode(), None, MS_BIND, None), "bind", name)
        finally:
            _setns(home, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise
    finally:
        os.close(home)
    return True


def remove(name: str) -> bool:
    """Unmount and delete namespace `name`; True when something was removed."""
    target = path(name)
    if not os.path.exists(target):
        return False
    if _libc.umount2(target.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(-1, "umount", name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)
    return True


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block with this thread inside namespace `name` (None: stay where we are)."""
    if name is None:
        yield
        return
    try:
        fd = os.open(path(name), os.O_RDONLY)
    except FileNotFoundError:
        raise NetworkError(f"network namespace {name} does not exist", hint="run `mm network prune`") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _setns(fd, name)
        try:
            yield
        finally:
            _setns(home, name)
    finally:
        os.close(fd)
        os.close(home)


def write_sysctl(key: str, value: str) -> None:
    """Set a net sysctl in the calling thread's namespace (/proc/sys/net follows the opener)."""
    p = "/proc/sys/" + key.replace(".", "/")
    try:
        with open(p, "r+") as f:
            if f.read().strip() == value:
                return
            f.seek(0)
            f.write(value)
    except OSError as exc:
        raise NetworkError(f"cannot set {key}={value}: {exc.strerror}", hint="mm needs root") from None
