"""A real Debian (mmdebstrap minbase) image, plus a layer of whiteouts, through the registry to ext4 and erofs.

The Debian tarball is built once per machine under the real cache dir
(`cache_dir()/test-images/debian-minbase.tar`, ~1-2 min from the Debian mirror apt uses).
"""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.unit.image.ocitools import tar_bytes, write_layout
from vmm import paths
from vmm.image import resolve

pytestmark = pytest.mark.registry

WHITEOUTS = tar_bytes([("file", "usr/share/doc/.wh..wh..opq", ""), ("file", "usr/share/doc/mm-only", "kept"),
                       ("file", "etc/.wh.debian_version", ""), ("file", "etc/mm-release", "mm\n")])


@pytest.fixture(scope="session")
def debian_tar():
    out = paths.cache_dir() / "test-images" / "debian-minbase.tar"
    if not out.exists():
        if not shutil.which("mmdebstrap"):
            pytest.skip("mmdebstrap is not installed (./setup.sh installs it)")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name("debian-minbase.tmp.tar")
        proc = subprocess.run(["mmdebstrap", "--variant=minbase", "--format=tar", "--quiet", "bookworm", str(tmp)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"mmdebstrap could not build Debian (no mirror reachable?): {proc.stderr[-300:]}")
        tmp.rename(out)
    return out


def _dump(image, path, ls=False):
    cmd = ["dump.erofs", f"--path={path}", str(image)] + (["--ls"] if ls else [])
    return subprocess.run(cmd, capture_output=True, text=True)


def test_debian_with_whiteouts(registry, debian_tar, tmp_path, cache):
    layout = debian_tar.with_name("debian-whiteouts-layout")
    if not (layout / "index.json").exists():  # compressing 180 MB once per machine is enough
        shutil.rmtree(layout, ignore_errors=True)
        write_layout(layout, [debian_tar.read_bytes(), WHITEOUTS], tag="12", how="zstd")
    registry.push(layout, "mm/debian", "12")
    img = resolve(f"{registry.host}/mm/debian:12")
    assert len(img.layers) == 2
    ext4 = img.rootfs_path  # the default format
    assert ext4.suffix == ".ext4"
    ls = subprocess.run(["debugfs", "-R", "ls -l /etc", str(ext4)], capture_output=True, text=True).stdout
    assert "mm-release" in ls and "debian_version" not in ls  # the second layer's file and whiteout
    from vmm.image.rootfs import build

    erofs = build(img.store, img.digest, img.layer_pairs(), "erofs")
    assert erofs.suffix == ".erofs"
    doc = _dump(erofs, "/usr/share/doc", ls=True).stdout
    assert "mm-only" in doc and " apt\n" not in doc and "dpkg" not in doc
    assert "File : /etc/mm-release" in _dump(erofs, "/etc/mm-release").stdout
    assert "File :" not in _dump(erofs, "/etc/debian_version").stdout  # whited out
    su = _dump(erofs, "/usr/bin/su").stdout
    assert "Uid: 0" in su  # (dump.erofs prints only the rwx bits; set-id bits are checked in tests/unit)
    assert f"Timestamp: {time.strftime('%Y-%m-%d')}" not in su  # the package's mtime, not the build's
    check = subprocess.run(["fsck.erofs", str(erofs)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
