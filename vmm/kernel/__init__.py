"""The guest kernel: built from Debian's linux-source with our fragment, cached by a key.

`kernel/microvm.config` is merged onto `tinyconfig` by `kernel/build.sh`. The result lives
in `cache_dir()/kernel/<key>/` (vmlinux with the PVH note, bzImage, config), where key is a
hash of the source package's version, the fragment and the build script; the directory is
renamed into place only when complete, so a killed build leaves nothing that looks built.
`MM_KERNEL` (or a command's `--kernel`) names a user's own kernel instead.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from vmm import paths
from vmm.errors import MMError
from vmm.sha256 import sha256

KERNEL_DIR = paths.REPO_ROOT / "kernel"
FRAGMENT = KERNEL_DIR / "microvm.config"
BUILD_SCRIPT = KERNEL_DIR / "build.sh"
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
KINDS = {"vmlinux": "vmlinux", "bzimage": "bzImage"}
# The fragment must keep these: our VMM and guests depend on them.
REQUIRED_OPTIONS = (
    "CONFIG_64BIT", "CONFIG_PVH", "CONFIG_KVM_GUEST", "CONFIG_PARAVIRT", "CONFIG_SMP",
    "CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_BLK_DEV_INITRD", "CONFIG_DEVTMPFS", "CONFIG_VIRTIO_VSOCKETS",
)


class KernelError(MMError):
    """The guest kernel is missing, unbuildable or not what it claims to be."""

    hint = "run `mm kernel build`"


def parse_fragment(text: str) -> dict[str, str]:
    """CONFIG_X=value lines of a fragment (comments and blanks skipped); bad lines are errors."""
    options: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.startswith("CONFIG_") or not name[7:].replace("_", "").isalnum() or not value:
            raise KernelError(f"{FRAGMENT.name}:{n}: not a CONFIG_NAME=value line: {raw!r}", "fix the fragment")
        if name in options:
            raise KernelError(f"{FRAGMENT.name}:{n}: {name} is set twice", "keep one line per option")
        options[name] = value
    missing = [o for o in REQUIRED_OPTIONS if options.get(o) != "y"]
    if missing:
        raise KernelError(f"the fragment must set {', '.join(missing)}=y", "the VMM relies on these options")
    return options


DPKG_STATUS = Path("/var/lib/dpkg/status")


def source_version(tarball: Path = SOURCE_TARBALL, status: Path = DPKG_STATUS) -> str:
    """The installed linux-source package's version (from dpkg's database), or the
    tarball's size+mtime without dpkg."""
    version = installed_version(SOURCE_PACKAGE, status)
    if version:
        return version
    try:
        st = tarball.stat()
    except OSError:
        raise KernelError(f"{tarball} is missing", f"install {SOURCE_PACKAGE} (./setup.sh does)") from None
    return f"file:{st.st_size}:{int(st.st_mtime)}"


def installed_version(package: str, status: Path = DPKG_STATUS) -> str | None:
    """`dpkg-query -W -f='${Version}' package` for an installed package, read from dpkg's
    status file: every `mm run` looks up the kernel, and a dpkg-query fork costs ~0.5 s
    under the lab's emulation. None when the package is not installed or there is no dpkg."""
    try:
        data = status.read_bytes()
    except OSError:
        return None
    start = data.find(b"Package: " + package.encode() + b"\n")
    while start > 0 and data[start - 1:start] != b"\n":  # a match inside another stanza's field
        start = data.find(b"Package: " + package.encode() + b"\n", start + 1)
    if start < 0:
        return None
    end = data.find(b"\n\n", start)
    fields = {}
    for line in data[start:end if end >= 0 else len(data)].decode(errors="replace").splitlines():
        name, sep, value = line.partition(": ")
        if sep and not line.startswith(" "):
            fields[name] = value.strip()
    if not fields.get("Status", "").endswith(" installed"):
        return None
    return fields.get("Version") or None


def cache_key(version: str, fragment: bytes, build_script: bytes) -> str:
    h = sha256()
    for part in (version.encode(), fragment, build_script):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def current_key() -> str:
    return cache_key(source_version(), FRAGMENT.read_bytes(), BUILD_SCRIPT.read_bytes())


def build_dir(key: str | None = None) -> Path:
    return paths.cache_dir() / "kernel" / (key or current_key())


def _complete(d: Path) -> bool:
    return all((d / f).is_file() for f in ("vmlinux", "bzImage", "config"))


def is_built() -> bool:
    """True when a kernel is available: MM_KERNEL names a file, or our current build is cached."""
    if os.environ.get("MM_KERNEL"):
        return Path(os.environ["MM_KERNEL"]).is_file()
    try:
        return _complete(build_dir())
    except (KernelError, OSError):
        return False


def kernel_path(kind: str = "vmlinux", override: str | os.PathLike | None = None) -> Path:
    """The kernel to boot: `override` (a --kernel option), else MM_KERNEL, else our cached build."""
    if kind not in KINDS:
        raise KernelError(f"unknown kernel kind {kind!r}", f"use one of {', '.join(KINDS)}")
    user = override or os.environ.get("MM_KERNEL")
    if user:
        path = Path(user).expanduser()
        if not path.is_file():
            source = "--kernel" if override else "MM_KERNEL"
            raise KernelError(f"{source} names {path}, which is not a file", "give the path of a vmlinux or bzImage")
        return path.resolve()
    d = build_dir()
    if not _complete(d):
        raise KernelError(f"the guest kernel is not built (nothing complete in {d})")
    return d / KINDS[kind]


def verify_vmlinux(path: Path) -> None:
    """vmlinux must be a 64-bit ELF with the Xen/PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18)."""
    from vmm.kernel.elfnote import has_pvh_note

    if not has_pvh_note(path):
        raise KernelError(f"{path} has no PVH entry note", "build with CONFIG_PVH=y (our fragment sets it)")


def build(force: bool = False, jobs: int = 2, log=print) -> Path:
    """Build (or find cached) our kernel; returns its cache directory."""
    parse_fragment(FRAGMENT.read_text())
    key = current_key()
    final = build_dir(key)
    if _complete(final) and not force:
        return final
    if not SOURCE_TARBALL.is_file():
        raise KernelError(f"{SOURCE_TARBALL} is missing", f"install {SOURCE_PACKAGE} (./setup.sh does)")
    base = paths.ensure(paths.cache_dir() / "kernel")
    # One build at a time per cache (setup.sh and a user may start one together); whoever
    # waited finds the other's result.
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(final) and not force:
            return final
        return _build_locked(base, key, final, jobs, log)


def _build_locked(base: Path, key: str, final: Path, jobs: int, log) -> Path:
    import hashlib
    import shutil
    import subprocess
    import tempfile

    for stale in base.glob(".*-*"):  # a build killed outright (we hold the lock: none runs)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    # The unpacked tree is reused between builds of the same source version.
    work = base / f"src-{hashlib.sha256(source_version().encode()).hexdigest()[:12]}"
    out = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=base))
    try:
        build_log = out / "build.log"
        log(f"building the guest kernel ({key}) with -j{jobs}; this takes ~7 minutes on 2 cores")
        log(f"log: {build_log}")
        with open(build_log, "w") as logf:
            res = subprocess.run(
                ["bash", str(BUILD_SCRIPT), str(SOURCE_TARBALL), str(work), str(out), str(jobs)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            )
        if res.returncode != 0:
            tail = build_log.read_text(errors="replace").strip()[-2000:]
            raise KernelError(
                f"the kernel build failed (exit {res.returncode}):\n{tail}",
                "fix kernel/microvm.config, or run kernel/build.sh by hand to see the whole log",
            )
        verify_vmlinux(out / "vmlinux")
        out.chmod(0o755)
        if final.exists():
            shutil.rmtree(final)
        os.rename(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return final
