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


def test_debian_exec_cp_users_and_exit_codes(mm, debian_image):
    """The agent's checks on Debian's own userland (glibc, bash, its /etc/passwd) as well as
    busybox's: exit codes and a signal, env/user/workdir by Debian's names, a TTY, and a copy
    in and out with matching checksums, a symbolic link copied as a link. One machine, one script: each `mm` call is a Python
    start-up in the lab."""
    r = mm.sh(f"""
        run -d --name deb --network none {debian_image} sleep 2147483647 >/dev/null; echo rc_run=$?
        "$MM" exec deb true; echo rc0=$?
        "$MM" exec deb bash -c 'exit 1'; echo rc1=$?
        "$MM" exec deb bash -c 'kill -KILL $$'; echo rc137=$?
        "$MM" exec deb bash -c 'kill -TERM $$'; echo rc143=$?
        "$MM" exec -e A=1 -u _apt -w /var/cache deb bash -c \\
            'echo "a=$A user=$(id -un) uid=$(id -u) gid=$(id -g) pwd=$PWD"'
        "$MM" exec -u daemon deb bash -c 'echo "daemon=$(id -u):$(id -g) home=$HOME"'
        "$MM" exec -t deb bash -c 'tty; test -t 0 && echo stdin-is-tty' | tr -d '\\r' > tty.out
        echo "tty=$(head -n1 tty.out) $(grep -c stdin-is-tty tty.out)"
        head -c 5M /dev/urandom > blob; echo "sum_here=$(sha256sum < blob | cut -c1-64)"
        "$MM" cp -q blob deb:/root/blob; echo rc_in=$?
        "$MM" exec deb bash -c 'echo "sum_there=$(sha256sum < /root/blob | cut -c1-64)"'
        "$MM" cp -q deb:/etc/os-release os-release; echo rc_link=$? "link=$(readlink os-release)"
        "$MM" cp -q deb:/usr/lib/os-release real; echo rc_out=$? "debian=$(grep -c '^ID=debian' real)"
        "$MM" rm -f deb >/dev/null; echo rc_rm=$?
    """)
    v = values(r)
    assert v.get("rc_run") == "0", explain(r)
    assert (v["rc0"], v["rc1"], v["rc137"], v["rc143"]) == ("0", "1", "137", "143"), explain(r)
    # Debian 12: _apt is uid 42 in group nogroup (65534); daemon is 1:1 with home /usr/sbin
    assert (v["a"], v["user"], v["uid"], v["gid"], v["pwd"]) == ("1", "_apt", "42", "65534", "/var/cache"), explain(r)
    assert (v["daemon"], v["home"]) == ("1:1", "/usr/sbin"), explain(r)
    assert v["tty"].startswith("/dev/pts/") and r.stdout.count("stdin-is-tty") == 0, explain(r)
    assert re.search(r"tty=/dev/pts/\d+ 1", r.stdout), explain(r)
    assert (v["rc_in"], v["rc_out"], v["debian"], v["rc_rm"]) == ("0", "0", "1", "0"), explain(r)
    # a symbolic link comes out as the link itself, as docker cp does
    assert (v["rc_link"], v["link"]) == ("0", "../usr/lib/os-release"), explain(r)
    assert v["sum_here"] == v["sum_there"], explain(r)
