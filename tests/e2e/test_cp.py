"""`mm cp` against a real guest (`mm run -d mm/default`, in the lab on this PVM host): a
50 MiB file in and out with matching checksums, a directory tree both ways (a symlink
kept), tar streams on stdin and stdout, and clear errors for missing paths. The machine
is the one the exec tests share (tests/e2e/exec_machine.py)."""
from __future__ import annotations

import re

import pytest

from tests.e2e import exec_machine
from tests.e2e.exec_machine import release_machines, vm  # noqa: F401 (fixtures)


@pytest.mark.timeout(1800)
def test_50_mib_file_in_and_out(vm):
    r = vm.sh("""
        W=$(mktemp -d); head -c 52428800 /dev/urandom > $W/big
        $MM cp $W/big $VM:/tmp/ 2>summary; echo rc_in=$?
        echo "summary=$(tr ' ' _ <summary)"
        echo guest=$($MM exec $VM sha256sum /tmp/big | cut -d' ' -f1)
        $MM cp -q $VM:/tmp/big $W/back; echo rc_out=$?
        echo host=$(sha256sum $W/big | cut -d' ' -f1) back=$(sha256sum $W/back | cut -d' ' -f1)
        echo size=$(stat -c %s $W/back)
        rm -rf $W
    """, timeout=1800)
    v = dict(re.findall(r"(\w+)=(\S*)", r.stdout))
    assert (v.get("rc_in"), v.get("rc_out")) == ("0", "0"), r.stdout + r.stderr
    assert v["host"] == v["guest"] == v["back"], r.stdout
    assert v["size"] == "52428800"
    assert v["summary"] == f"Successfully_copied_52.4MB_to_{vm.name}:/tmp/"


@pytest.mark.timeout(1200)
def test_directory_tree_both_ways_and_tar_streams(vm):
    r = vm.sh("""
        W=$(mktemp -d); mkdir -p $W/tree/sub; echo alpha > $W/tree/a; echo beta > $W/tree/sub/b
        ln -s a $W/tree/link; chmod 0751 $W/tree/sub
        $MM cp -q $W/tree $VM:/srv; echo rc_dir_in=$?
        echo "listing=$($MM exec $VM sh -c 'cd /srv && find . | sort | tr "\\n" ,')"
        echo "mode=$($MM exec $VM stat -c %a /srv/sub) link=$($MM exec $VM readlink /srv/link)"
        $MM cp -q $VM:/srv $W/back; echo rc_dir_out=$?
        diff -r $W/tree $W/back && echo same=yes
        tar -C $W -cf - tree | $MM cp - $VM:/tmp; echo rc_stdin=$?
        echo "streamed=$($MM exec $VM cat /tmp/tree/sub/b)"
        echo "names=$($MM cp $VM:/srv/sub - | tar -tf - | sort | tr '\\n' ,)"
        rm -rf $W
    """, timeout=1200)
    v = dict(re.findall(r"(\w+)=(\S*)", r.stdout))
    assert (v.get("rc_dir_in"), v.get("rc_dir_out"), v.get("rc_stdin")) == ("0", "0", "0"), r.stdout + r.stderr
    assert v["listing"] == ".,./a,./link,./sub,./sub/b,", r.stdout
    assert (v["mode"], v["link"]) == ("751", "a")
    assert v.get("same") == "yes", r.stdout
    assert v["streamed"] == "beta"
    assert v["names"] == "sub/,sub/b,", r.stdout


def test_missing_paths_are_clear_errors(vm):
    r = vm.sh("""
        $MM cp $VM:/no/such/file /tmp/x; echo rc_out=$?
        $MM cp /no/such/local $VM:/tmp; echo rc_in=$?
        $MM cp /etc/hostname $VM:/no/such/dir/f; echo rc_parent=$?
        $MM cp /etc/hostname /tmp/y; echo rc_local=$?
    """)
    v = dict(re.findall(r"(\w+)=(\S*)", r.stdout))
    assert (v["rc_out"], v["rc_in"], v["rc_parent"], v["rc_local"]) == ("1", "1", "1", "2"), r.stdout + r.stderr
    assert "No such file or directory" in r.stderr and "no such file or directory: /no/such/local" in r.stderr
    assert "parent directory /no/such/dir does not exist" in r.stderr
    assert "one of SRC and DEST must be MACHINE:PATH" in r.stderr
    assert "Traceback" not in r.stderr
