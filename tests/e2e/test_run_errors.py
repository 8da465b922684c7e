"""Bad input to `mm run` and the lifecycle commands: each gets a clear `error:` (and no
traceback) and changes nothing — no machine record, directory, lease or namespace is
left behind, even where the failure comes late (an unknown network after the record
exists, a kernel file the worker cannot boot).

These run on this host, not in the lab: every case is refused before a guest would run
(the CLI, the store and the worker's start are the same code here), and a Python
start-up costs ~0.1 s here against seconds in the lab. A duplicate name and exec on a
stopped machine need a real machine: tests/e2e/test_lifecycle.py checks those.
"""
from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys

import pytest

from tests.e2e.mm_shell import IMAGE

CASES = [
    # (id, argv after `mm`, words the error must contain)
    ("unknown-option", ["run", "--bogus", IMAGE], ["unknown option '--bogus'"]),
    ("unknown-image", ["run", "--network", "none", "127.0.0.1:9/no/such:1", "true"], ["127.0.0.1:9"]),
    ("memory-unit", ["run", "--memory", "10x", IMAGE], ["invalid --memory"]),
    ("memory-too-much", ["run", "--memory", "64t", IMAGE], ["more than this host has"]),
    ("memory-too-little", ["run", "--memory", "1m", IMAGE], ["less than the 32 MiB"]),
    ("cpus-zero", ["run", "--cpus", "0", IMAGE], ["--cpus 0 is out of range"]),
    ("cpus-word", ["run", "--cpus", "lots", IMAGE], ["invalid --cpus"]),
    ("port", ["run", "-p", "99999:80", IMAGE], ["invalid port"]),
    ("publish-without-network", ["run", "--network", "none", "-p", "8080:80", IMAGE], ["cannot publish"]),
    ("workdir", ["run", "-w", "relative/dir", IMAGE], ["not absolute"]),
    ("env-file", ["run", "--env-file", "/no/such/env", IMAGE], ["cannot read --env-file"]),
    ("env-key", ["run", "-e", "1BAD=x", IMAGE], ["invalid environment variable"]),
    ("disk-size", ["run", "--disk-size", "1k", IMAGE], ["--disk-size 1k"]),
    ("name", ["run", "--name", "bad name!", IMAGE], ["name"]),
    ("kernel-missing", ["run", "--kernel", "/no/such/vmlinux", IMAGE], ["no such file"]),
    ("network-unknown", ["run", "--network", "no-such-net", IMAGE, "true"], ["no-such-net"]),
    ("kernel-not-a-kernel", ["run", "--network", "none", "--kernel", "/etc/hostname", IMAGE, "true"], ["kernel"]),
    ("ps-format", ["ps", "--format", "yaml"], ["--format"]),
    ("logs-unknown", ["logs", "no-such-machine"], ["no such machine"]),
    ("stop-unknown", ["stop", "no-such-machine"], ["no such machine"]),
    ("rm-unknown", ["rm", "-f", "no-such-machine"], ["no such machine"]),
    ("kill-unknown", ["kill", "-s", "TERM", "no-such-machine"], ["no such machine"]),
    ("stop-time", ["stop", "-t", "-1", "x"], ["--time must be >= 0"]),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    return {**os.environ, "MM_STATE": str(state), "MM_NETNS_PREFIX": f"mte{secrets.token_hex(3)}-"}


def _mm(env, argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmm", *argv], env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("argv, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly(env, argv, words):
    r = _mm(env, argv)
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: "), r.stderr
    for word in words:
        assert word in r.stderr, r.stderr
    assert r.stdout == ""


def test_nothing_was_left_behind(env):
    """Runs after the cases above (file order): none of them left anything."""
    state = env["MM_STATE"]
    assert _mm(env, ["ps", "-aq"]).stdout == ""
    machines = os.path.join(state, "machines")
    assert not os.path.isdir(machines) or os.listdir(machines) == []
    db = os.path.join(state, "mm.db")
    if os.path.exists(db):
        with sqlite3.connect(db) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            for table in {"machines", "leases"} & tables:
                assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert [n for n in netns if n.startswith(env["MM_NETNS_PREFIX"])] == []
