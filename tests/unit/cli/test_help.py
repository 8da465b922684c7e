"""Every command's --help renders (rich reads help text as markup: a stray `[/x]` in an
option's help made `mm run --help` crash once)."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from vmm.cli.main import COMMANDS, build_app

SUBCOMMANDS = [["image", "pull"], ["image", "import"], ["network", "create"], ["lab", "exec"],
               ["kernel", "build"], ["system", "prune"]]


@pytest.mark.parametrize("argv", [[c] for c in sorted(COMMANDS)] + SUBCOMMANDS, ids=" ".join)
def test_help_renders(argv):
    res = CliRunner().invoke(build_app(argv[0]), [*argv, "--help"], prog_name="mm")
    assert res.exit_code == 0, (res.output, res.exception)
    assert "Usage" in res.output
