"""The hand parsers of the fast path (vmm/cli/fastargs.py): getopt's rules, clear errors,
and `mm run`'s table kept in step with the typer command that prints its --help."""
from __future__ import annotations

import inspect

import pytest

from vmm.cli import lifecycle, run
from vmm.cli.fastargs import Grammar, parse
from vmm.errors import UsageError

RUN = Grammar("run", run._FLAGS, run._VALUES, run._REPEATED, stop_at_positional=True)


def test_run_options_end_at_the_image():
    opts, rest = parse(RUN, ["-it", "--rm", "-e", "A=1", "-eB=2", "--name=web", "img", "sh", "-c", "ls -e", "--rm"])
    assert opts == {"interactive": True, "tty": True, "rm": True, "env": ["A=1", "B=2"], "name": "web",
                    "env_file": [], "publish": [], "label": []}
    assert rest == ["img", "sh", "-c", "ls -e", "--rm"]


def test_double_dash_and_help():
    assert parse(RUN, ["--", "img", "true"])[1] == ["img", "true"]
    assert parse(RUN, ["-d", "--help"]) is None
    assert parse(RUN, ["img", "--help"])[1] == ["img", "--help"], "after the image, --help is the command's"


@pytest.mark.parametrize("argv, message", [
    (["--bogus", "img"], "unknown option '--bogus'"),
    (["-x", "img"], "unknown option '-x'"),
    (["-dx", "img"], "unknown option '-x'"),
    (["--name"], "--name needs a value"),
    (["-e"], "-e needs a value"),
    (["--rm=yes", "img"], "unknown option '--rm=yes'"),
])
def test_bad_options_are_refused(argv, message):
    with pytest.raises(UsageError) as err:
        parse(RUN, argv)
    assert message in err.value.message and "mm run --help" in err.value.hint


def test_lifecycle_options_may_follow_names():
    assert parse(lifecycle.GRAMMARS["stop"], ["a", "-t", "3", "b"]) == ({"time": "3"}, ["a", "b"])
    assert parse(lifecycle.GRAMMARS["rm"], ["-f", "a"]) == ({"force": True}, ["a"])


def test_lifecycle_needs_names_and_a_numeric_time():
    with pytest.raises(UsageError, match="at least one machine"):
        lifecycle.fast("stop", [])
    with pytest.raises(UsageError, match="--time must be a number"):
        lifecycle.fast("stop", ["-t", "soon", "a"])


def test_run_fast_table_matches_the_typer_command():
    """Every option the typer `run` declares (what --help shows) parses the same by hand,
    with the same defaults as options_from."""
    import typer

    app = typer.Typer(add_completion=False)
    run.register(app)
    command = typer.main.get_command(app)
    declared = {}
    for param in command.params:
        if param.param_type_name == "option":
            for opt in param.opts:
                declared[opt] = (param.name, param.is_flag, param.default)
    fast = {**{o: (d, True) for o, d in run._FLAGS.items()}, **{o: (d, False) for o, d in run._VALUES.items()}}
    assert {o: (n, flag) for o, (n, flag, _) in declared.items() if o not in ("-h", "--help")} == fast
    defaults = {k: p.default for k, p in inspect.signature(run.options_from).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for opt, (name, flag, default) in declared.items():
        want = () if name in run._REPEATED else default
        assert defaults[name] == (want if not isinstance(want, list) else tuple(want)), opt
