"""`mm exec`'s Docker grammar (options before MACHINE, the rest is the command) and the
clear errors for bad input and for machines that cannot run anything, in-process."""
from __future__ import annotations

import os

import pytest

from vmm.cli import main as cli_main
from vmm.cli.exec import ExecOptions, checked, parse_args
from vmm.errors import ExitStatus, UsageError
from vmm.machines import State
from vmm.machines.db import open_machines
from vmm.machines.liveness import self_identity


@pytest.mark.parametrize("argv, expected", [
    (["vm", "ls"], ExecOptions("vm", ["ls"])),
    (["vm", "ls", "-la", "/"], ExecOptions("vm", ["ls", "-la", "/"])),
    (["vm", "--", "ls", "-la"], ExecOptions("vm", ["ls", "-la"])),
    (["--", "vm", "sh"], ExecOptions("vm", ["sh"])),
    (["-it", "vm", "sh"], ExecOptions("vm", ["sh"], interactive=True, tty=True)),
    (["-ti", "-d", "vm", "sh"], ExecOptions("vm", ["sh"], interactive=True, tty=True, detach=True)),
    (["-i", "--tty", "--detach", "vm", "sh"], ExecOptions("vm", ["sh"], interactive=True, tty=True, detach=True)),
    (["-e", "A=1", "-eB=2", "--env", "C=3", "--env=D=4=x", "vm", "env"],
     ExecOptions("vm", ["env"], env=["A=1", "B=2", "C=3", "D=4=x"])),
    (["-ite", "A=1", "vm", "env"], ExecOptions("vm", ["env"], interactive=True, tty=True, env=["A=1"])),
    (["-u", "nobody", "-w", "/tmp", "vm", "pwd"], ExecOptions("vm", ["pwd"], user="nobody", workdir="/tmp")),
    (["--user=1000:1000", "--workdir=/srv", "vm", "id"], ExecOptions("vm", ["id"], user="1000:1000", workdir="/srv")),
    (["-unobody", "vm", "id"], ExecOptions("vm", ["id"], user="nobody")),
    (["--env-file", "f.env", "vm", "env"], ExecOptions("vm", ["env"], env_file=["f.env"])),
    (["vm", "sh", "-c", "exit 3", "-i"], ExecOptions("vm", ["sh", "-c", "exit 3", "-i"])),
])
def test_grammar(argv, expected):
    assert parse_args(argv) == expected


@pytest.mark.parametrize("argv", [["-h"], ["--help"], ["-i", "--help", "vm", "ls"]])
def test_help_goes_to_typer(argv):
    assert parse_args(argv) is None


@pytest.mark.parametrize("argv, message", [
    ([], "needs a machine and a command"),
    (["-i"], "needs a machine and a command"),
    (["vm"], "no command given"),
    (["vm", "--"], "no command given"),
    (["-e"], "-e needs a value"),
    (["--user"], "--user needs a value"),
    (["-x", "vm", "ls"], "unknown option '-x'"),
    (["-ix", "vm", "ls"], "unknown option '-x'"),
    (["--privileged", "vm", "ls"], "unknown option '--privileged'"),
    (["--tty=yes", "vm", "ls"], "unknown option '--tty=yes'"),
])
def test_bad_options_are_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message) as err:
        parse_args(argv)
    assert "mm exec --help" in err.value.hint


def test_checked_env_and_workdir(tmp_path):
    env_file = tmp_path / "e.env"
    env_file.write_text("# comment\nA=from-file\nB=2\n")
    opts = ExecOptions("vm", ["env"], env=["A=override", "HOME_SET"], env_file=[str(env_file)])
    os.environ["HOME_SET"] = "yes"
    try:
        env, workdir = checked(opts)
    finally:
        del os.environ["HOME_SET"]
    assert env == {"A": "override", "B": "2", "HOME_SET": "yes"}
    assert workdir is None


@pytest.mark.parametrize("opts, message", [
    (ExecOptions("vm", ["ls"], workdir="relative"), "not absolute"),
    (ExecOptions("vm", ["ls"], env=["1BAD=x"]), "invalid environment variable"),
    (ExecOptions("vm", ["ls"], env_file=["/no/such/file"]), "cannot read --env-file"),
    (ExecOptions("vm", ["ls"], user=""), "--user needs a name"),
])
def test_checked_refuses_bad_values(opts, message):
    with pytest.raises(UsageError, match=message):
        checked(opts)


def test_it_without_a_terminal_is_refused():
    r, w = os.pipe()
    try:
        with pytest.raises(UsageError, match="not a TTY"):
            checked(ExecOptions("vm", ["sh"], interactive=True, tty=True), in_fd=r)
        checked(ExecOptions("vm", ["sh"], tty=True), in_fd=r)  # -t alone needs no terminal
    finally:
        os.close(r)
        os.close(w)


# -- the command in-process: errors before anything reaches a guest ---------------------

@pytest.fixture
def mm(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MM_STATE", str(tmp_path / "state"))
    monkeypatch.delenv("MM_DEBUG", raising=False)
    for name in ("exec", "cp", "top", "ssh"):
        monkeypatch.setitem(cli_main.COMMANDS, name, f"vmm.cli.{name}")
    monkeypatch.setitem(cli_main.FAST_PATHS, "exec", "vmm.cli.exec:fast")

    def run(*argv):
        code = cli_main.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _machine(name, state, worker=None, **fields):
    m = open_machines()
    rec = m.create("busybox", name=name, config={"worker": worker or {}})
    if state is State.CREATED:
        return rec
    rec = m.begin_start(rec.id)
    pid, start = self_identity()  # a live "worker", so the record is not reconciled to dead
    m.set_worker(rec.id, rec.generation, pid, start)
    if state is State.RUNNING:
        return m.transition(rec.id, State.RUNNING, **fields)
    m.transition(rec.id, State.RUNNING)
    if state is State.PAUSED:
        return m.transition(rec.id, State.PAUSED)
    return m.transition(rec.id, State.EXITED, exit_code=0, exit_reason="poweroff")


@pytest.mark.parametrize("state, message, hint", [
    (State.EXITED, "machine vm1 is not running: it is exited", "mm start vm1"),
    (State.CREATED, "machine vm1 is not running: it is created", "mm start vm1"),
    (State.PAUSED, "machine vm1 is paused", "mm unpause vm1"),
])
@pytest.mark.parametrize("command", [["exec", "vm1", "true"], ["top", "vm1"], ["cp", "vm1:/etc/hosts", "-"]])
def test_machine_that_is_not_running(mm, state, message, hint, command):
    _machine("vm1", state)
    code, out, err = mm(*command)
    assert code == ExitStatus.ERROR
    assert f"error: {message}" in err and hint in err and "Traceback" not in err
    assert open_machines().get("vm1").state is state  # nothing changed


def test_unknown_machine(mm):
    code, _, err = mm("exec", "nosuch", "true")
    assert code == ExitStatus.ERROR and "no such machine: nosuch" in err


def test_machine_without_an_agent(mm):
    _machine("plain", State.RUNNING, worker={"factory": "x:y", "machine": {}})
    code, _, err = mm("exec", "plain", "true")
    assert code == ExitStatus.ERROR and "has no guest agent" in err


def test_usage_error_exit_status(mm):
    code, _, err = mm("exec", "-Z", "vm", "true")
    assert code == ExitStatus.USAGE and "unknown option '-Z'" in err


def test_help_lists_docker_options(mm):
    code, out, _ = mm("exec", "--help")
    assert code == 0
    for flag in ("--interactive", "--tty", "--detach", "--env", "--env-file", "--user", "--workdir"):
        assert flag in out
