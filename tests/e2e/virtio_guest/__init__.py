"""Guests for the virtio end-to-end tests and benchmarks: busybox initramfs builders and
`mmsock`, the tiny static C socket tool (vsock and TCP echo / benchmark server) they carry.

    initrd = initramfs(directory, script, tools={"mmsock": mmsock_binary()})
    initrd = initramfs(directory, script, host_binaries=["/usr/bin/fio"])   # + libs, loader

/init runs PRELUDE (busybox, /proc, /sys, /dev, prints MM-UP), then `script`, then
EPILOGUE (prints MM-DONE, powers off). Host binaries are carried with their shared
libraries and loader (vmm.guest.initramfs.shared_libraries) into /lib, with a wrapper in
/bin that runs them through the loader. `runner.py` is the program that boots such a guest
with our VMM; `hostside.py` holds the host ends of the socket checks.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUSYBOX = Path("/bin/busybox")
MMSOCK_SOURCE = HERE / "mmsock.c"
CFLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O2", "-static"]

PRELUDE = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo MM-UP
"""
EPILOGUE = """
echo MM-DONE
poweroff -f
sleep 10
"""


class GuestBuildError(RuntimeError):
    """A guest tool could not be built (the message carries the compiler's output)."""


def _cache_dir() -> Path:
    from vmm import paths

    d = paths.cache_dir() / "e2e-virtio"
    d.mkdir(parents=True, exist_ok=True)
    return d


def mmsock_binary() -> Path:
    """mmsock, compiled with musl-gcc (static) and cached by the hash of its source."""
    src = MMSOCK_SOURCE.read_bytes()
    out = _cache_dir() / f"mmsock-{hashlib.sha256(src + ' '.join(CFLAGS).encode()).hexdigest()[:12]}"
    if out.exists():
        return out
    cc = shutil.which("musl-gcc")
    if cc is None:
        raise GuestBuildError("musl-gcc is missing: apt-get install musl-tools (./setup.sh does)")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    proc = subprocess.run([cc, *CFLAGS, "-o", str(tmp), str(MMSOCK_SOURCE)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise GuestBuildError(f"building mmsock failed:\n{proc.stderr[-3000:]}")
    tmp.replace(out)
    return out


def initramfs(directory: Path, script: str, tools: dict[str, Path] | None = None,
              host_binaries: list[str] = ()) -> Path:
    """Write the archive into `directory` (named by content) and return its path.
    `tools`: static binaries copied to /bin/NAME; `host_binaries`: dynamically linked host
    programs carried with their libraries (run through the loader by a /bin wrapper)."""
    from vmm.guest.initramfs import LOADER_NAME, shared_libraries
    from vmm.lab.cpio import CpioWriter

    buf = io.BytesIO()
    w = CpioWriter(buf)
    for d in ("bin", "dev", "proc", "sys", "tmp", "mnt", "lib"):
        w.mkdir(d)
    w.chardev("dev/console", 5, 1)
    w.add_path("bin/busybox", BUSYBOX, 0o755)
    for name, src in (tools or {}).items():
        w.add_path(f"bin/{name}", Path(src), 0o755)
    libs: dict[str, Path] = {}
    for binary in host_binaries:
        libs.update(shared_libraries(binary))
        name = Path(binary).name
        w.add_path(f"lib/{name}", Path(binary), 0o755)
        w.file(f"bin/{name}", f'#!/bin/sh\nexec /lib/{LOADER_NAME} --library-path /lib /lib/{name} "$@"\n'.encode(),
               0o755)
    for name, src in sorted(libs.items()):
        w.add_path(f"lib/{name}", src, 0o755)
    w.file("init", (PRELUDE + script + EPILOGUE).encode(), 0o755)
    w.close()
    data = buf.getvalue()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"virtio-{hashlib.sha256(data).hexdigest()[:12]}.cpio"
    if not path.exists():
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def guest_kernel() -> str:
    """Our guest kernel (vmlinux); raises pytest's skip with the reason when it is not built."""
    import pytest

    try:
        from vmm.kernel import kernel_path
        return str(kernel_path("vmlinux"))
    except Exception as exc:  # KernelNotBuilt and friends carry a hint
        pytest.skip(f"guest kernel not available ({exc}); run `mm kernel build`")


def boot(guest_host, kernel: str, initrd: Path, *args, prefix: tuple = (), timeout: float = 600):
    """Run `runner` on the guest host (under `prefix`, e.g. `ip netns exec NS`); return the
    CompletedProcess once the guest came up (asserted: MM-UP on its console)."""
    from vmm import paths

    argv = [*prefix, str(paths.REPO_ROOT / ".venv" / "bin" / "python"), "-m", "tests.e2e.virtio_guest.runner",
            "--kernel", kernel, "--initrd", str(initrd), *map(str, args)]
    res = guest_host.run(argv, timeout=timeout, cwd=str(paths.REPO_ROOT))
    assert "MM-UP" in res.stdout, res.stdout[-4000:] + res.stderr[-4000:]
    return res


def host_report(out: str, tag: str) -> dict:
    """The JSON after a `MM-HOST-… {json}` line."""
    import json

    found = lines(out, tag + " ")
    assert found, f"no {tag} line in:\n{out[-4000:]}"
    return json.loads(found[0][len(tag):])


def fields(line: str) -> dict[str, str]:
    """`TAG k=v k=v` -> {k: v}."""
    return dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)


def lines(out: str, tag: str) -> list[str]:
    """The console lines starting with `tag` (after any kernel-log prefix)."""
    found = []
    for ln in out.splitlines():
        i = ln.find(tag)
        if i >= 0 and (i == 0 or not ln[:i].strip() or ln[:i].rstrip().endswith("]")):
            found.append(ln[i:].strip())
    return found
