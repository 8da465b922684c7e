"""`mm run` of a real Debian image: the mmdebstrap minbase tarball tests/image builds
(cached per machine, reused here) imported as an OCI image, booted with our kernel,
running `cat /etc/debian_version` and apt's own binary from its root filesystem.

The image and its read-only root filesystem are built on this side (the image cache is
shared with the lab at the same path), so the lab only boots.
"""
from __future__ import annotations

import re
import shutil

import pytest

from tests.e2e.mm_shell import MMShell, explain, values
from tests.image.test_debian import debian_tar  # noqa: F401 (the cached fixture, reused)

NAME = "mm-e2e/debian:12"


@pytest.fixture(scope="module")
def debian_image(debian_tar):  # noqa: F811
    from tests.unit.image.ocitools import write_layout
    from vmm.image import resolve
    from vmm.image.importer import import_path

    layout = debian_tar.with_name("debian-run-layout")
    if not (layout / "index.json").exists():  # an uncompressed layer: written once per machine
        shutil.rmtree(layout, ignore_errors=True)
        write_layout(layout, [debian_tar.read_bytes()], tag="12", how=None, cmd=["bash"])
    import_path(layout, NAME)
    resolve(NAME, pull=False).rootfs_path  # built here once, cached by digest
    return NAME


@pytest.fixture(scope="module")
def mm(guest_host):
    shell = MMShell(guest_host, "debian")
    yield shell
    shell.close()


def test_debian_boots_and_runs_its_own_binaries(mm, debian_image):
    r = mm.sh(f"""
        run --rm --network none {debian_image} sh -c \\
            'echo "version=$(cat /etc/debian_version)"; apt-get --version | head -n1; ls -d /usr/lib/x86_64-linux-gnu'
        echo rc=$?
    """)
    v = values(r)
    assert v.get("rc") == "0", explain(r)
    assert re.fullmatch(r"12\.\d+", v["version"]), r.stdout
    assert re.search(r"^apt \d", r.stdout, re.M), "Debian's apt runs from the image's root"
    assert "/usr/lib/x86_64-linux-gnu" in r.stdout
