"""The initrd every VM boots: mm-init delivered into any image without touching it.

Two concatenated newc archives:
1. the base (cached by content under <cache>/guest/): /init = mm-init, /dev/console,
   the mount points init uses, and, for SSH, Debian's dropbear with its shared
   libraries and ld-linux copied flat into /mm/ssh/ (run through the loader with
   --library-path, so the image needs no libc of its own);
2. the per-VM part: /mm/config (bootconfig.py) and, with SSH, the host key and
   authorized_keys under /mm/ssh/.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from vmm import paths
from vmm.guest.bootconfig import BootConfig
from vmm.guest.cpio import CpioWriter
from vmm.guest.errors import InitramfsError
from vmm.guest.ssh import SshKeys
from vmm.sha256 import sha256

GUEST_DIR = paths.REPO_ROOT / "guest"
DROPBEAR = "/usr/sbin/dropbear"
LOADER_NAME = "ld-linux-x86-64.so.2"


def mm_init_binary() -> Path:
    """guest/out/mm-init, (re)built with make when a source is newer."""
    out = GUEST_DIR / "out" / "mm-init"
    # Up to date (or no compiler to rebuild it): no make, whose fork and look-ups cost
    # ~0.5 s per `mm run` in the lab, nor the imports for it (tests/unit/cli/test_run_imports.py).
    if out.exists() and _newer_than_sources(out):
        return out
    import shutil
    import subprocess

    if out.exists() and not shutil.which("musl-gcc"):
        return out
    proc = subprocess.run(["make", "-C", str(GUEST_DIR), "-s"], capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise InitramfsError(f"building mm-init failed:\n{proc.stderr.strip()[-2000:]}",
                             hint="install musl-tools (./setup.sh does), then `make -C guest`")
    return out


def _newer_than_sources(out: Path) -> bool:
    """The Makefile's rule: out depends on src/* and the Makefile."""
    built = out.stat().st_mtime_ns
    sources = [*(GUEST_DIR / "src").iterdir(), GUEST_DIR / "Makefile"]
    return all(src.stat().st_mtime_ns <= built for src in sources)


def dropbear_files() -> dict[str, Path]:
    """Name in /mm/ssh -> host file: dropbear, every library ldd lists, the loader."""
    if not Path(DROPBEAR).exists():
        raise InitramfsError(f"{DROPBEAR} is missing; SSH into VMs needs it",
                             hint="apt-get install dropbear-bin (./setup.sh does)")
    return {"dropbear": Path(DROPBEAR), **shared_libraries(DROPBEAR)}


def shared_libraries(binary: str) -> dict[str, Path]:
    """File name -> host file for every library `ldd binary` lists, and the loader as
    LOADER_NAME: what a dynamically linked host binary needs beside it in a guest that
    has no libc of its own (run it as `LOADER --library-path DIR DIR/binary`)."""
    import subprocess

    proc = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InitramfsError(f"ldd {binary} failed: {proc.stderr.strip()}")
    files: dict[str, Path] = {}
    for line in proc.stdout.splitlines():
        m = re.search(r"(\S+) => (/\S+)", line) or re.search(r"^\s*(/\S+ld-linux\S*)", line)
        if not m:
            continue
        path = Path(m.group(2) if m.lastindex == 2 else m.group(1))
        name = LOADER_NAME if "ld-linux" in path.name else path.name
        files[name] = path.resolve()
    if LOADER_NAME not in files:
        raise InitramfsError(f"ldd {binary} shows no {LOADER_NAME}")
    return files


def _base_archive(init: bytes, ssh_files: dict[str, bytes]) -> bytes:
    w = CpioWriter()
    for d in ("dev", "proc", "sys", "mm/root", "mm/lower", "mm/rw"):
        w.add_dir(d)
    w.add_chardev("dev/console", 5, 1)
    w.add_chardev("dev/null", 1, 3, 0o666)
    w.add_file("init", init, 0o755)
    for name, data in sorted(ssh_files.items()):
        w.add_file(f"mm/ssh/{name}", data, 0o755)
    return w.finish()


def base_initramfs(ssh: bool = False) -> Path:
    """The cached base archive (with dropbear when ssh)."""
    init = mm_init_binary().read_bytes()
    ssh_files = {name: p.read_bytes() for name, p in dropbear_files().items()} if ssh else {}
    h = sha256(init)
    for name, data in sorted(ssh_files.items()):
        h.update(name.encode() + b"\0" + sha256(data).digest())
    dest = paths.ensure(paths.cache_dir() / "guest") / f"initramfs-{h.hexdigest()[:16]}.cpio"
    if not dest.exists():
        tmp = dest.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(_base_archive(init, ssh_files))
        tmp.replace(dest)
    return dest


def config_archive(config: BootConfig, keys: SshKeys | None = None) -> bytes:
    """The per-VM archive: /mm/config and the SSH keys."""
    if config.ssh and keys is None:
        raise InitramfsError("the boot config asks for SSH but no keys were given",
                             hint="generate them with vmm.guest.ssh.generate(dir)")
    w = CpioWriter()
    w.add_file("mm/config", config.render(), 0o600)
    if config.ssh and keys is not None:
        w.add_file("mm/ssh/host_key", keys.host_key.read_bytes(), 0o600)
        w.add_file("mm/ssh/authorized_keys", (keys.user_public + "\n").encode(), 0o600)
    return w.finish()


def build_initrd(dest: Path, config: BootConfig, keys: SshKeys | None = None) -> Path:
    """Writes base + per-VM archive to dest (what `mm boot --initrd` loads)."""
    data = base_initramfs(ssh=config.ssh).read_bytes() + config_archive(config, keys)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest
