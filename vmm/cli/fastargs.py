"""Docker-style argv parsed by hand, for the commands on the start-up budget.

typer builds a pydantic adapter for every parameter: ~0.2 s per command on the
development host and 20-30 s inside the lab (TCG), paid again by every `mm stop` or
`mm run`. The commands a user (or a script) runs most therefore parse their own
arguments with a `Grammar` and run without typer (FAST_PATHS in vmm/cli/main.py);
`--help` still goes to the typer command, which shares the code that does the work.

    g = Grammar("stop", values={"-t": "time", "--time": "time"})
    opts, names = parse(g, ["-t", "5", "web"])       # ({"time": "5"}, ["web"]); None for --help

getopt's rules, as Docker's CLI has them: `--opt=value` or `--opt value`, short flags
clustered (`-it`), a short option's value attached (`-eA=1`) or next, `--` ends the
options. With `stop_at_positional` (run, exec) the options end at the first positional
argument, so a command's own flags are left alone. Unknown options are a UsageError.
"""
from __future__ import annotations

from vmm.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~40 ms of `mm run` start-up in the lab (tests/unit/cli/test_run_imports.py)
    from typing import Any

HELP = frozenset({"-h", "--help"})


class Grammar:
    """A command's options: `flags` (option -> dest, True when given), `values` (option
    -> dest, takes a value), `repeated` (dests collecting every value given). A plain
    class: dataclasses costs an import of `inspect` on the start-up path."""

    __slots__ = ("command", "flags", "values", "repeated", "stop_at_positional")

    def __init__(self, command: str, flags: dict[str, str] | None = None, values: dict[str, str] | None = None,
                 repeated: frozenset[str] = frozenset(), stop_at_positional: bool = False) -> None:
        self.command, self.flags, self.values = command, flags or {}, values or {}
        self.repeated, self.stop_at_positional = repeated, stop_at_positional

    @property
    def hint(self) -> str:
        return f"`mm {self.command} --help` lists the options"


def parse(g: Grammar, args: list[str]) -> tuple[dict[str, Any], list[str]] | None:
    """(option values by dest, positional arguments); None when help was asked for."""
    opts: dict[str, Any] = {dest: [] for dest in g.repeated}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positional += args[i + 1:]
            break
        if arg in HELP:
            return None
        if not arg.startswith("-") or arg == "-":
            if g.stop_at_positional:
                positional += args[i:]
                break
            positional.append(arg)
        elif arg.startswith("--"):
            i = _long(g, args, i, opts)
        else:
            i = _short_cluster(g, args, i, opts)
        i += 1
    return opts, positional


def _set(g: Grammar, opts: dict[str, Any], dest: str, value: Any) -> None:
    if dest in g.repeated:
        opts[dest].append(value)
    else:
        opts[dest] = value


def _value(g: Grammar, args: list[str], i: int, option: str) -> tuple[str, int]:
    if i + 1 >= len(args):
        raise UsageError(f"{option} needs a value", g.hint)
    return args[i + 1], i + 1


def _long(g: Grammar, args: list[str], i: int, opts: dict[str, Any]) -> int:
    name, eq, value = args[i].partition("=")
    if name in g.flags and not eq:
        _set(g, opts, g.flags[name], True)
    elif name in g.values:
        if not eq:
            value, i = _value(g, args, i, name)
        _set(g, opts, g.values[name], value)
    else:
        raise UsageError(f"unknown option {args[i]!r} for mm {g.command}", g.hint)
    return i


def _short_cluster(g: Grammar, args: list[str], i: int, opts: dict[str, Any]) -> int:
    """`-it`, `-ite KEY=V`, `-eKEY=V`; returns the index of the last argument consumed."""
    cluster = args[i][1:]
    for pos, letter in enumerate(cluster):
        opt = "-" + letter
        if opt in g.flags:
            _set(g, opts, g.flags[opt], True)
        elif opt in g.values:
            value = cluster[pos + 1:]
            if not value:
                value, i = _value(g, args, i, opt)
            _set(g, opts, g.values[opt], value)
            return i
        else:
            raise UsageError(f"unknown option {opt!r} for mm {g.command}", g.hint)
    return i


def number(text: str, option: str, hint: str) -> float:
    """A float option's value (typer's conversion), refused clearly when it is not one."""
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{option} must be a number, not {text!r}", hint) from None
