"""`mm ssh`'s command line: the machine's key, a pinned known_hosts, no prompts; and the
clear errors (no --ssh, no IP, missing keys, not running)."""
from __future__ import annotations

import shutil

import pytest

from vmm.errors import NotFound
from vmm.machines import State
from vmm.machines.db import open_control
from vmm.machines.exec import NotRunning
from vmm.machines.liveness import self_identity
from vmm.machines.ssh import NoSsh, key_dir, ssh_argv

needs_tools = pytest.mark.skipif(not (shutil.which("dropbearkey") and shutil.which("ssh-keygen") and shutil.which("ssh")),
                                 reason="needs dropbear-bin and openssh-client (./setup.sh installs them)")


@pytest.fixture
def control(tmp_path):
    return open_control(tmp_path / "state")


def _running(control, name, ssh=True, ip="10.88.0.7", keys=True):
    m = control.machines
    rec = m.begin_start(m.create("busybox", name=name, config={"ssh": ssh}).id)
    m.set_worker(rec.id, rec.generation, *self_identity())
    rec = m.transition(rec.id, State.RUNNING)
    if ip:
        rec = m.update(rec.id, ip=ip)
    if keys:
        from vmm.guest.ssh import generate

        generate(key_dir(control, rec))
    return rec


@needs_tools
def test_argv_pins_the_host_key_and_never_prompts(control):
    rec = _running(control, "vm1")
    argv = ssh_argv(control, "vm1", ["uname", "-a"])
    keys = key_dir(control, rec)
    assert argv[0].endswith("/ssh")
    assert argv[argv.index("-i") + 1] == str(keys / "id_ed25519")
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    for wanted in ("BatchMode=yes", "StrictHostKeyChecking=yes", f"UserKnownHostsFile={keys / 'known_hosts'}",
                   "GlobalKnownHostsFile=/dev/null", "IdentitiesOnly=yes", "PasswordAuthentication=no"):
        assert wanted in options
    assert argv[-4:] == ["10.88.0.7", "--", "uname", "-a"]
    known = (keys / "known_hosts").read_text().split()
    assert known[0] == "10.88.0.7" and known[1] == "ssh-ed25519"
    assert (keys / "known_hosts").stat().st_mode & 0o077 == 0


@needs_tools
def test_login_shell_and_tty_flags(control):
    _running(control, "vm1")
    assert ssh_argv(control, "vm1")[-1] == "10.88.0.7"
    assert ssh_argv(control, "vm1", tty=True)[-2:] == ["-t", "10.88.0.7"]
    assert ssh_argv(control, "vm1", tty=False)[-2:] == ["-T", "10.88.0.7"]


def test_started_without_ssh(control):
    _running(control, "plain", ssh=False, keys=False)
    with pytest.raises(NoSsh, match="started without --ssh") as err:
        ssh_argv(control, "plain")
    assert "mm exec -it plain sh" in err.value.hint


def test_no_ip(control):
    _running(control, "offline", ip=None, keys=False)
    with pytest.raises(NoSsh, match="no IP address"):
        ssh_argv(control, "offline")


def test_missing_keys(control):
    _running(control, "keyless", keys=False)
    with pytest.raises(NotFound, match="SSH keys of machine keyless are missing"):
        ssh_argv(control, "keyless")


def test_not_running(control):
    m = control.machines
    m.create("busybox", name="idle", config={"ssh": True})
    with pytest.raises(NotRunning, match="idle is not running"):
        ssh_argv(control, "idle")


@needs_tools
@pytest.mark.parametrize("argv, tail", [
    (["ssh", "vm1", "--", "id", "-u"], ["10.88.0.7", "--", "id", "-u"]),
    (["ssh", "vm1", "uname", "-a"], ["10.88.0.7", "--", "uname", "-a"]),
    (["ssh", "-T", "vm1"], ["-T", "10.88.0.7"]),
])
def test_cli_hands_over_to_ssh(tmp_path, monkeypatch, argv, tail):
    """`mm ssh` becomes the ssh process (exec); its own `--` is not passed on."""
    import os

    from vmm.cli import main as cli_main

    monkeypatch.setenv("MM_STATE", str(tmp_path / "state"))
    monkeypatch.setitem(cli_main.COMMANDS, "ssh", "vmm.cli.ssh")
    _running(open_control(tmp_path / "state"), "vm1")
    calls = []
    monkeypatch.setattr(os, "execv", lambda path, args: calls.append(args))
    assert cli_main.main(argv) == 0
    assert calls and calls[0][-len(tail):] == tail and calls[0].count("--") == ("--" in tail)
