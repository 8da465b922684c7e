"""`mm kernel` and `mm lab` commands in-process, against empty cache and state directories."""
from __future__ import annotations

import json

import pytest

from vmm.cli.main import main


@pytest.fixture
def empty(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MM_STATE", str(tmp_path / "state"))
    monkeypatch.delenv("MM_KERNEL", raising=False)
    return tmp_path


def test_kernel_path_before_a_build_says_what_to_run(empty, capsys):
    assert main(["kernel", "path"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the guest kernel is not built")
    assert "hint: run `mm kernel build`" in err
    assert "Traceback" not in err


def test_kernel_path_json_with_mm_kernel(empty, monkeypatch, capsys):
    mine = empty / "vmlinux"
    mine.write_bytes(b"\x7fELF")
    monkeypatch.setenv("MM_KERNEL", str(mine))
    assert main(["kernel", "path", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"source": "MM_KERNEL", "vmlinux": str(mine), "bzimage": str(mine), "config": None}


def test_lab_status_json_when_nothing_is_there(empty, capsys):
    assert main(["lab", "status", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prepared"] is False and out["running"] is False and out["pid"] is None


def test_lab_exec_without_a_prepared_lab_is_a_clear_error(empty, capsys):
    assert main(["lab", "exec", "--", "true"]) == 1
    err = capsys.readouterr().err
    assert "error: the lab is not prepared" in err and "hint: run `mm lab prepare`" in err


def test_lab_exec_rejects_a_bad_timeout(empty, capsys):
    assert main(["lab", "exec", "--timeout", "-1", "--", "true"]) == 1
    assert "bad timeout" in capsys.readouterr().err


def test_lab_up_rejects_silly_memory(empty, capsys):
    assert main(["lab", "up", "--memory", "1"]) == 1
    assert "out of range" in capsys.readouterr().err


def test_lab_down_when_not_running(empty, capsys):
    assert main(["lab", "down"]) == 0
    assert "not running" in capsys.readouterr().err
