"""A real Debian (mmdebstrap minbase) image, plus a layer of whiteouts, through the registry to ext4 and erofs.

The Debian tarball is built once per machine under the real cache dir
(`cache_dir()/test-images/debian-minbase.tar`, ~1-2 min from the Debian mirror apt uses).
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.unit.image.ocitools import tar_bytes, write_layout
from vmm import paths
from vmm.image import resolve
from vmm.image.rootfs import build

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


def _debugfs(image, command):
    return subprocess.run(["debugfs", "-R", command, str(image)], capture_output=True, text=True).stdout


def test_debian_with_whiteouts(registry, debian_tar, tmp_path, cache):
    write_layout(tmp_path / "deb", [debian_tar.read_bytes(), WHITEOUTS], tag="12", how="zstd")
    registry.push(tmp_path / "deb", "mm/debian", "12")
    img = resolve(f"{registry.host}/mm/debian:12")
    assert len(img.layers) == 2
    ext4 = build(cache, img.digest, img.layer_pairs(), "ext4")
    assert "mm-only" in _debugfs(ext4, "ls /usr/share/doc") and "apt" not in _debugfs(ext4, "ls /usr/share/doc")
    assert _debugfs(ext4, "cat /etc/mm-release") == "mm\n"
    assert "File not found" in subprocess.run(["debugfs", "-R", "stat /etc/debian_version", str(ext4)],
                                              capture_output=True, text=True).stderr
    passwd = _debugfs(ext4, "cat /etc/passwd")
    assert passwd.startswith("root:x:0:0")
    stat_su = _debugfs(ext4, "stat /usr/bin/su")
    assert "Mode:  04755" in stat_su  # set-uid kept
    erofs = img.rootfs_path
    assert erofs.suffix == ".erofs"
    check = subprocess.run(["fsck.erofs", str(erofs)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
