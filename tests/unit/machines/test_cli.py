"""The lifecycle commands in-process: parsing, output shapes, clear errors."""
from __future__ import annotations

import json

import pytest

from vmm.cli import main as cli_main
from vmm.errors import ExitStatus
from vmm.machines import State
from vmm.machines.db import open_machines

MINE = {n: "vmm.cli.lifecycle" for n in ("start", "stop", "restart", "kill", "rm", "pause", "unpause", "wait")}
MINE |= {"ps": "vmm.cli.ps", "inspect": "vmm.cli.ps", "logs": "vmm.cli.logs", "console": "vmm.cli.logs",
         "stats": "vmm.cli.stats", "system": "vmm.cli.prune"}


@pytest.fixture
def mm(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MM_STATE", str(tmp_path / "state"))
    monkeypatch.delenv("MM_DEBUG", raising=False)  # another test's --debug may have set it
    for name, module in MINE.items():
        monkeypatch.setitem(cli_main.COMMANDS, name, module)
    monkeypatch.setitem(cli_main.FAST_PATHS, "ps", "vmm.cli.ps:fast_ps")

    def run(*argv):
        code = cli_main.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _exited(name, code=3):
    m = open_machines()
    rec = m.begin_start(m.create("alpine:3.20", name=name, config={"cmd": ["echo", "hi"]}).id)
    m.transition(rec.id, State.RUNNING)
    return m.transition(rec.id, State.EXITED, exit_code=code, exit_reason="poweroff", finished_at=rec.created)


def test_ps_empty_and_all(mm):
    code, out, _ = mm("ps")
    assert code == 0 and out.split() == ["MACHINE", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "IP", "NAMES"]
    _exited("web")
    code, out, _ = mm("ps")
    assert "web" not in out
    code, out, _ = mm("ps", "-a")
    assert "web" in out and "Exited (3)" in out and "echo hi" in out


def test_ps_json_and_quiet(mm):
    rec = _exited("web")
    code, out, _ = mm("ps", "-a", "--format", "json")
    data = json.loads(out)
    assert data[0]["name"] == "web" and data[0]["state"] == "exited" and data[0]["exit_code"] == 3
    code, out, _ = mm("ps", "-aq")
    assert out.split() == [rec.short_id]


def test_ps_bad_format(mm):
    code, _, err = mm("ps", "--format", "yaml")
    assert code == ExitStatus.USAGE and "error: unknown --format" in err and "hint:" in err


def test_ps_help_falls_back_to_typer(mm):
    code, out, _ = mm("ps", "--help")
    assert code == 0 and "--all" in out


def test_inspect(mm):
    rec = _exited("web")
    code, out, _ = mm("inspect", "web", "--json")
    data = json.loads(out)
    for key in ("name", "id", "state", "image", "ip", "pid", "exit_code", "created"):
        assert key in data
    assert data["id"] == rec.id and data["pid"] is None and data["image"] == "alpine:3.20"
    code, out, _ = mm("inspect", rec.short_id, "web")
    assert len(json.loads(out)) == 2


@pytest.mark.parametrize("cmd", ["inspect", "stop", "start", "kill", "rm", "pause", "unpause", "wait", "logs"])
def test_unknown_machine(mm, cmd):
    code, out, err = mm(cmd, "nosuch")
    assert code == ExitStatus.ERROR
    assert "error: no such machine: nosuch" in err and "hint: `mm ps -a`" in err
    assert "Traceback" not in err


def test_wrong_state_changes_nothing(mm):
    rec = _exited("web")
    code, _, err = mm("pause", "web")
    assert code == ExitStatus.ERROR and "is exited" in err
    assert open_machines().get("web") == rec


def test_rm_and_several_names(mm):
    _exited("a")
    _exited("b")
    code, out, err = mm("rm", "a", "nosuch", "b")
    assert code == ExitStatus.ERROR and out.split() == ["a", "b"] and "nosuch" in err
    assert open_machines().list() == []


def test_wait_prints_exit_code(mm):
    _exited("w", code=7)
    assert mm("wait", "w")[:2] == (0, "7\n")


def test_logs_tail(mm):
    from vmm.machines.layout import MachinePaths

    rec = _exited("l")
    p = MachinePaths.for_id(rec.id).create()
    p.console_log.write_bytes(b"one\ntwo\nthree\n")
    assert mm("logs", "l")[1] == "one\ntwo\nthree\n"
    assert mm("logs", "--tail", "2", "l")[1] == "two\nthree\n"
    assert mm("logs", "-n", "0", "l")[1] == ""
    code, _, err = mm("logs", "--tail", "x", "l")
    assert code == ExitStatus.USAGE


def test_stop_bad_time(mm):
    _exited("t")
    code, _, err = mm("stop", "-t", "-1", "t")
    assert code == ExitStatus.USAGE and "--time" in err


def test_system_prune(mm):
    _exited("p")
    code, out, _ = mm("system", "prune", "-f")
    assert code == 0 and "removed p" in out
    assert open_machines().list() == []
