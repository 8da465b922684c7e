"""The CLI prints errors as one message plus a hint, never a traceback (unless --debug)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from vmm.cli import main as cli_main
from vmm.errors import ExitStatus, MMError, UsageError


def _app_raising(exc: Exception):
    def register(app: typer.Typer) -> None:
        @app.command("boom")
        def boom() -> None:
            raise exc

    return register


@pytest.fixture
def boom_command(monkeypatch):
    """A throwaway command module registered under the name `boom`."""
    import types

    def install(exc: Exception):
        module = types.ModuleType("tests_boom_cmd")
        module.register = _app_raising(exc)
        monkeypatch.setitem(sys.modules, "tests_boom_cmd", module)
        monkeypatch.setitem(cli_main.COMMANDS, "boom", "tests_boom_cmd")

    return install


def test_mm_error_prints_message_and_hint(boom_command, capsys):
    boom_command(MMError("the disk is full", hint="free some space"))
    assert cli_main.main(["boom"]) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert err == "error: the disk is full\nhint: free some space\n"


def test_error_subclass_sets_exit_status(boom_command, capsys):
    boom_command(UsageError("bad --memory value '12Q'"))
    assert cli_main.main(["boom"]) == ExitStatus.USAGE
    assert "Traceback" not in capsys.readouterr().err


def test_debug_shows_traceback(boom_command, capsys, monkeypatch):
    # --debug exports MM_DEBUG=1 for child processes; monkeypatch restores it after the test.
    monkeypatch.setenv("MM_DEBUG", "0")
    boom_command(MMError("kaput"))
    assert cli_main.main(["--debug", "boom"]) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: kaput" in err


def test_unexpected_exception_is_one_line_without_debug(boom_command, capsys, monkeypatch):
    monkeypatch.delenv("MM_DEBUG", raising=False)
    boom_command(RuntimeError("oops"))
    assert cli_main.main(["boom"]) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "internal error: RuntimeError: oops" in err and "--debug" in err


def test_unknown_option_is_a_usage_error(capsys):
    assert cli_main.main(["doctor", "--no-such-flag"]) == ExitStatus.USAGE
    assert "No such option" in capsys.readouterr().err


def test_version_is_fast_path():
    out = subprocess.run([sys.executable, "-m", "vmm", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("mm ")
