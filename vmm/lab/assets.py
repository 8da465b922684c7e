"""`mm lab prepare`: Debian's kernel package unpacked into the cache, and the base initramfs.

The package (`linux-image-amd64`'s dependency, e.g. linux-image-6.1.0-56-amd64) is fetched
with `apt-get download` and unpacked with `dpkg-deb -x` under
`cache_dir()/lab/<package>_<version>/` — never installed on the host. `depmod` indexes its
module tree so modprobe works inside the lab. A directory appears under its final name only
when complete, so an interrupted prepare leaves nothing that looks ready.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmm import paths
from vmm.lab.bzimage import extract_vmlinux
from vmm.lab.errors import LabError, LabNotPrepared
from vmm.lab.initramfs import BOOT_MODULES, build_base, resolve_modules

META_PACKAGE = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
MANIFEST = "lab.json"


@dataclass(frozen=True)
class Assets:
    """A prepared lab: where its kernel, modules and base initramfs are."""

    root: Path
    package: str
    version: str
    kernel_version: str

    @property
    def vmlinuz(self) -> Path:
        return self.root / "pkg/boot" / f"vmlinuz-{self.kernel_version}"

    @property
    def vmlinux(self) -> Path:
        """The ELF kernel extracted from vmlinuz (PVH entry: a faster boot under TCG)."""
        return self.root / "vmlinux"

    @property
    def boot_kernel(self) -> Path:
        from vmm.kernel.elfnote import has_pvh_note

        return self.vmlinux if self.vmlinux.is_file() and has_pvh_note(self.vmlinux) else self.vmlinuz

    @property
    def modules_dir(self) -> Path:
        return self.root / "pkg/lib/modules" / self.kernel_version

    @property
    def initramfs(self) -> Path:
        return self.root / "initramfs-base.cpio"


def lab_cache() -> Path:
    return paths.cache_dir() / "lab"


def _run(argv: list[str], **kwargs) -> str:
    try:
        res = subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} is not installed", "run ./setup.sh (it installs the lab's Debian packages)") from exc
    except subprocess.CalledProcessError as exc:
        raise LabError(f"`{' '.join(argv)}` failed: {exc.stderr.strip()[-500:]}", "check apt's sources and the disk space") from exc
    return res.stdout


def kernel_package() -> tuple[str, str]:
    """(package, version) of the kernel image the meta-package points to, per apt's cache."""
    out = _run(["apt-cache", "depends", "--no-recommends", "--no-suggests", META_PACKAGE])
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            package = line.split(":", 1)[1].strip()
            break
    else:
        raise LabError(f"apt does not know which kernel {META_PACKAGE} depends on", "run `apt-get update`")
    policy = _run(["apt-cache", "policy", package])
    for line in policy.splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            if version and version != "(none)":
                return package, version
    raise LabError(f"apt has no candidate version of {package}", "run `apt-get update`")


def find_prepared() -> Assets | None:
    """The newest complete prepared lab in the cache, without asking apt."""
    base = lab_cache()
    if not base.is_dir():
        return None
    found = []
    for manifest in base.glob(f"*/{MANIFEST}"):
        try:
            meta = json.loads(manifest.read_text())
            assets = Assets(manifest.parent, meta["package"], meta["version"], meta["kernel_version"])
        except (OSError, ValueError, KeyError):
            continue
        if assets.vmlinuz.is_file() and assets.initramfs.is_file() and (assets.modules_dir / "modules.dep").is_file():
            found.append((manifest.stat().st_mtime, assets))
    return max(found, key=lambda item: item[0])[1] if found else None


def require_prepared() -> Assets:
    assets = find_prepared()
    if assets is None:
        raise LabNotPrepared(f"the lab is not prepared (nothing complete under {lab_cache()})")
    return assets


def prepare(force: bool = False, log=print) -> Assets:
    """Download, unpack and index the kernel package and build the base initramfs (idempotent)."""
    existing = find_prepared()
    if existing is not None and not force:
        if not existing.vmlinux.is_file():  # prepared before the lab booted through PVH
            extract_vmlinux(existing.vmlinuz, existing.vmlinux)
        _ensure_host_mountpoints()
        return existing
    if not BUSYBOX.is_file():
        raise LabError(f"{BUSYBOX} is missing", "install busybox-static (./setup.sh does)")
    package, version = kernel_package()
    final = lab_cache() / f"{package}_{version}"
    paths.ensure(lab_cache())
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=lab_cache()))
    work.chmod(0o755)
    try:
        log(f"downloading {package} {version}")
        _run(["apt-get", "download", f"{package}={version}"], cwd=work)
        debs = list(work.glob("*.deb"))
        if len(debs) != 1:
            raise LabError(f"apt-get download left {len(debs)} .deb files in {work}")
        log("unpacking")
        _run(["dpkg-deb", "-x", str(debs[0]), str(work / "pkg")])
        debs[0].unlink()
        kernel_version = _kernel_version(work / "pkg")
        _run(["depmod", "-b", str(work / "pkg"), kernel_version])
        assets = Assets(work, package, version, kernel_version)
        dep = (assets.modules_dir / "modules.dep").read_text()
        extract_vmlinux(assets.vmlinuz, assets.vmlinux)
        build_base(assets.initramfs, BUSYBOX, assets.modules_dir, resolve_modules(BOOT_MODULES, dep))
        (work / MANIFEST).write_text(json.dumps(
            {"package": package, "version": version, "kernel_version": kernel_version}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _ensure_host_mountpoints()
    return Assets(final, package, version, kernel_version)


def _kernel_version(pkg: Path) -> str:
    found = sorted(p.name for p in (pkg / "lib/modules").iterdir() if p.is_dir())
    if len(found) != 1:
        raise LabError(f"expected one kernel in the package's lib/modules, found {found}")
    return found[0]


def _ensure_host_mountpoints() -> None:
    """Directories the lab mounts over must exist in the host's (read-only shared) tree."""
    for path in (Path("/usr/lib/modules"), paths.state_dir(), paths.cache_dir()):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LabError(f"cannot create {path}: {exc.strerror}", "run `mm lab prepare` as root once") from exc
