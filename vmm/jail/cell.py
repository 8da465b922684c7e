"""The cell: the VMM's private filesystem, holding only what it still needs.

The cell's root is a small tmpfs that exists only in the VMM's own mount namespace
(mounted on the always-empty `<state>/cell` directory, which it hides there, then made
the root with pivot_root and remounted read-only). Into it, each at its host path so
every path the VMM already knows stays valid:

    <state>/machines/<id12>/   the machine directory, read-only, no exec. api.sock and
                               the vsock socket live here: host tools reach them at the
                               same path, and the vsock device connects to
                               `<socket>_PORT` here for guest-initiated streams
    code                       the Python stdlib, site-packages and our packages (only
                               the sys.path entries modules were loaded from), read-only:
                               lazy imports keep working, nothing there is writable
    ro_paths                   the kernel and initrd (Machine.start() loads them after the
                               jail) and whatever the spec adds, read-only, no exec
    /proc                      a new procfs of the VMM's PID namespace, `subset=pid`
                               (only /proc/<pid>: /proc/self/status for the stats op)

No /dev (every device is an fd opened before the jail), no /etc, /home, /root, /tmp,
no other machine's directory: a host path outside the cell does not exist in it
(ENOENT). Nothing in the cell is writable: the VMM writes only through fds it opened
before (console.log, worker.log, disks, guest RAM). The machine directory is the
VMM's through its group: the supervisor makes it `root:<vm gid>` mode 0710, so the
jailed uid can reach sockets in it but not list it, read spec.json or plant files
that root would later trust; the vsock socket is `root:<vm gid>` 0660 (the VMM
connects to it itself for exec and the workload's stdio), api.sock stays root 0600. A host listener for guest-initiated vsock port P must
let the VM's uid or gid connect (mode 0666 is safe there: only this VM's cell and
root can reach the directory).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from vmm.jail import libc as L
from vmm.jail.errors import JailError

RO_CODE = L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV
RO_DATA = RO_CODE | L.MS_NOEXEC


# Per top-level module, the roots it needs, memoized for this sys.path: the VMM calls
# code_roots() while it waits for its cgroup and again, once every module is loaded,
# to build the cell. The second call then looks only at modules imported in between:
# the first, in a freshly forked VMM, costs ~3 ms (every module object it touches is a
# copy-on-write fault), which is then off the path to the first KVM_RUN.
_memo: dict[str, tuple[object, tuple[str, ...]]] = {}
_memo_path: list[object] = [None, None]  # [tuple(sys.path), its (spelled, real) entries]


def code_roots() -> list[str]:
    """The directories the running interpreter's modules come from: for each loaded
    top-level module the sys.path entry holding it (as spelled in sys.path, so __file__
    stays valid) or, for a package outside sys.path (an editable install), the
    package's own directory; plus the stdlib. Only these are bound into the cell."""
    if _memo_path[0] != tuple(sys.path):
        _memo.clear()
        spelled = sorted({os.path.abspath(p) for p in sys.path if p}, key=len, reverse=True)
        real = [(os.path.realpath(s), s) for s in spelled if os.path.isdir(s)]
        _memo_path[:] = [tuple(sys.path), (spelled, real)]
    spelled, real = _memo_path[1]
    roots = {os.path.dirname(os.path.abspath(os.__file__))}
    # Top-level modules only: a submodule lives under its package, and touching fewer
    # module objects means fewer copy-on-write faults in the freshly forked VMM.
    for name, module in list(sys.modules.items()):
        if "." in name:
            continue
        known = _memo.get(name)
        if known is None or known[0] is not module:
            known = _memo[name] = (module, _module_roots(module, spelled, real))
        roots.update(known[1])
    return _outermost(roots)


def _module_roots(module: object, spelled: list[str], real: list[tuple[str, str]]) -> tuple[str, ...]:
    package = list(getattr(module, "__path__", None) or ())
    path = getattr(module, "__file__", None) or (package[0] if package else None)
    if not path:
        return ()  # built in
    here = os.path.abspath(path)
    entry = next((s for s in spelled if here.startswith(s + os.sep)), None)
    if entry is None:
        resolved = os.path.realpath(here)
        entry = next((s for r, s in real if resolved.startswith(r + os.sep)), None)
    if entry is not None:
        return (entry,)
    if package:
        return tuple(os.path.abspath(p) for p in package)
    return (os.path.dirname(here),)


def _outermost(paths: set[str]) -> list[str]:
    """Drop every path inside another one of the set (one bind mount covers both)."""
    out: list[str] = []
    for p in sorted(paths, key=len):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return sorted(out)


class Cell:
    """Builds the cell under `mountpoint` and makes it the root. Runs in a fresh mount
    namespace, as root, on the VMM's only thread."""

    def __init__(self, mountpoint: str, machine_dir: str, ro_paths: tuple[str, ...],
                 code: list[str] | None = None) -> None:
        self.mountpoint = mountpoint
        self.machine_dir = machine_dir
        self.ro_paths = ro_paths
        self.code = code  # None: code_roots() at build time, once every module is loaded

    def build(self) -> None:
        root = self.mountpoint
        if self.code is None:
            self.code = [p for p in code_roots() if os.path.isdir(p)]
        L.mount(None, "/", None, L.MS_REC | L.MS_PRIVATE)  # nothing propagates back to the host
        L.mount("mm-cell", root, "tmpfs", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, "size=256k,mode=0755")
        for path in self.code:
            self._bind(path, RO_CODE)
        for path in self.ro_paths:
            self._bind(path, RO_DATA)
        self._bind(self.machine_dir, RO_DATA)
        os.mkdir(root + "/proc", 0o555)
        try:
            L.mount("proc", root + "/proc", "proc", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, "subset=pid")
        except OSError as exc:
            raise JailError(f"cannot mount the cell's /proc: {exc.strerror}", "needs Linux >= 5.8 (subset=pid)") from None

    def _bind(self, source: str, flags: int) -> None:
        if not os.path.exists(source):
            raise JailError(f"{source} does not exist, so it cannot be put in the cell",
                            "the machine's settings name a file that is gone")
        target = self.mountpoint + source
        if os.path.isdir(source):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
        L.mount(source, target, None, L.MS_BIND)
        L.mount(None, target, None, L.MS_REMOUNT | L.MS_BIND | flags)

    def enter(self) -> None:
        """pivot_root into the cell, drop the old root, make the cell's tmpfs read-only."""
        os.chdir(self.mountpoint)
        L.pivot_root(".", ".")          # the old root now sits under the new one...
        L.umount2(".", L.MNT_DETACH)    # ...and is detached from it at once
        os.chdir("/")
        L.mount(None, "/", None, L.MS_REMOUNT | L.MS_BIND | RO_DATA)


def share_socket(path: str, gid: int) -> None:
    """root:<vm gid> 0660 on a socket the VMM made before the jail and must still connect
    to after it (the vsock device's: the exec bridge and the workload's attach stream
    are host-initiated vsock streams the VMM opens itself). api.sock stays root 0600."""
    os.chown(path, 0, gid)
    os.chmod(path, 0o660)


def prepare_machine_dir(machine_dir: Path, gid: int) -> None:
    """root:<gid> 0710: the jailed VMM may traverse its directory to reach its sockets,
    and nothing more (run by the supervisor, as root, before each start)."""
    os.chown(machine_dir, 0, gid)
    os.chmod(machine_dir, 0o710)
