"""The built-in default image `mm/default:latest`, assembled from Debian's busybox-static.

One layer: /bin/busybox, a symlink per applet (from `busybox --list-full`), the usual
top-level directories, /etc/passwd and /etc/group. Its Cmd prints a greeting. Built
reproducibly (fixed mtimes, gzip without a timestamp), so the same busybox gives the
same digest; a label records busybox's size and mtime so a second build is a no-op.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

from vmm.image import manifest as mf
from vmm.image.errors import ImageError
from vmm.image.images import DEFAULT_IMAGE, lookup, record_name
from vmm.image.reference import parse
from vmm.image.store import Store

BUSYBOX = Path("/bin/busybox")
GREETING = "Hello from micromachines"
LABEL = "org.micromachines.busybox"
EPOCH = 1_700_000_000  # fixed mtime: reproducible layers
DIRS = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "proc": 0o555, "root": 0o700,
        "run": 0o755, "sbin": 0o755, "sys": 0o555, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755,
        "usr/sbin": 0o755, "var": 0o755, "var/tmp": 0o1777, "mnt": 0o755}
FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "micromachine\n",
    "etc/os-release": 'NAME="micromachines default"\nID=mm-default\nPRETTY_NAME="micromachines default (busybox)"\n',
}


def _stamp() -> str:
    try:
        st = BUSYBOX.stat()
    except FileNotFoundError:
        raise ImageError(f"{BUSYBOX} is missing", "install the Debian package busybox-static (./setup.sh does)") from None
    return f"{st.st_size}:{st.st_mtime_ns}"


def _applets() -> list[str]:
    out = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True).stdout
    return sorted({line.strip() for line in out.splitlines() if line.strip() and line.strip() != "bin/busybox"})


def _add(tar: tarfile.TarFile, name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, EPOCH, link
    info.uname = info.gname = "root"
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data else None)


def layer_tar() -> bytes:
    """The uncompressed layer: directories, busybox, applet links, /etc files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mode in sorted(DIRS.items()):
            _add(tar, name, tarfile.DIRTYPE, mode)
        _add(tar, "bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in _applets():
            if applet.split("/")[0] in ("bin", "sbin", "usr"):
                _add(tar, applet, tarfile.SYMTYPE, 0o777, link="/bin/busybox")
        for name, text in sorted(FILES.items()):
            _add(tar, name, tarfile.REGTYPE, 0o644, text.encode())
    return buf.getvalue()


def _config(diff_id: str, stamp: str) -> bytes:
    doc = {
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["echo", GREETING], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
                   "WorkingDir": "/", "User": "0:0", "Labels": {LABEL: stamp}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "mm image build-default (Debian busybox-static)"}],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def build_default(store: Store | None = None, rootfs: bool = True) -> tuple[str, str, bool]:
    """Build (or find) the default image; returns (name, manifest digest, built now?)."""
    store = store or Store()
    stamp = _stamp()
    existing = lookup(DEFAULT_IMAGE, store)
    built = False
    if existing is None or existing.config.get("Labels", {}).get(LABEL) != stamp or not all(
            store.has_blob(d) for d, _ in existing.layer_pairs()):
        with store.using():
            raw = layer_tar()
            diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
            layer = gzip.compress(raw, compresslevel=6, mtime=0)
            layer_digest = store.put_bytes(layer)
            config = _config(diff_id, stamp)
            config_digest = store.put_bytes(config)
            manifest = mf.build_manifest(
                {"mediaType": mf.OCI_CONFIG, "digest": config_digest, "size": len(config)},
                [{"mediaType": mf.OCI_LAYER_GZIP, "digest": layer_digest, "size": len(layer)}])
            digest = store.put_bytes(manifest)
            store.set_ref(record_name(parse(DEFAULT_IMAGE)), digest, source=f"busybox-static {os.fspath(BUSYBOX)}")
        existing, built = lookup(DEFAULT_IMAGE, store), True
    if rootfs:
        existing.rootfs_path  # noqa: B018 - builds and caches the root filesystem
    return DEFAULT_IMAGE, existing.digest, built
