"""`mm image SUB` parsed by hand (vmm/cli/image_actions.py): the same actions as the typer
commands, usage errors with hints, help and unknown subcommands left to typer, and no
typer import on the way."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vmm.cli import image_actions
from vmm.errors import UsageError
from vmm.paths import REPO_ROOT


@pytest.mark.parametrize("args", [[], ["bogus"], ["pull", "--help"], ["ls", "-h"]])
def test_help_and_unknown_subcommands_go_to_typer(args):
    assert image_actions.fast(args) is None


@pytest.mark.parametrize("args, message", [
    (["pull"], "takes exactly 1 argument, got 0"),
    (["pull", "a", "b"], "takes exactly 1 argument, got 2"),
    (["ls", "x"], "takes no arguments, got 1"),
    (["rm"], "takes 1 or more arguments, got 0"),
    (["import", "a", "b", "c"], "takes 1 to 2 arguments, got 3"),
    (["pull", "--bogus", "x"], "unknown option '--bogus' for mm image pull"),
])
def test_usage_errors_name_the_command(args, message):
    with pytest.raises(UsageError, match=message) as err:
        image_actions.fast(args)
    assert "mm image " in err.value.message and "--help" in err.value.hint


def test_arguments_and_flags_reach_the_action(monkeypatch):
    seen = {}
    monkeypatch.setitem(image_actions._SUBCOMMANDS, "pull", (*image_actions._SUBCOMMANDS["pull"][:3],
                        lambda **kw: seen.update(kw), ("ref",)))
    monkeypatch.setitem(image_actions._SUBCOMMANDS, "rm", (*image_actions._SUBCOMMANDS["rm"][:3],
                        lambda refs, **kw: seen.update(refs=refs, **kw), ()))
    assert image_actions.fast(["pull", "-q", "--json", "alpine:3.20"]) == 0
    assert seen == {"ref": "alpine:3.20", "quiet": True, "json": True}
    seen.clear()
    assert image_actions.fast(["rm", "a", "b", "--json"]) == 0
    assert seen == {"refs": ["a", "b"], "json": True}


def test_mm_image_ls_runs_without_typer(tmp_path):
    code = ("import sys, json; from vmm.cli.main import main; rc = main(['image', 'ls', '--json']); "
            "print(json.dumps({'rc': rc, 'typer': 'typer' in sys.modules}), file=sys.stderr)")
    env = {**os.environ, "MM_CACHE": str(tmp_path / "cache"), "MM_STATE": str(tmp_path / "state")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert json.loads(res.stdout) == []
    assert json.loads(res.stderr.strip().splitlines()[-1]) == {"rc": 0, "typer": False}
