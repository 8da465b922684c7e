"""`mm start|stop|restart|kill|rm|wait|pause|unpause`: Docker's lifecycle commands.

Each takes one or more machine names or ids, acts on them in order, prints each name
it acted on (as Docker does) and reports the first failure as the command's error
after trying the rest. Arguments are parsed by hand on the fast path (`fast_*`, see
vmm/cli/fastargs.py: typer alone costs seconds in the lab); `--help` goes to the typer
commands, which call the same `do_*` functions.
"""
from __future__ import annotations

from typing import Callable

from vmm.cli.fastargs import Grammar, number, parse

_TIME = {"-t": "time", "--time": "time"}
GRAMMARS = {
    "start": Grammar("start"),
    "stop": Grammar("stop", values=_TIME),
    "restart": Grammar("restart", values=_TIME),
    "kill": Grammar("kill", values={"-s": "signal", "--signal": "signal"}),
    "rm": Grammar("rm", flags={"-f": "force", "--force": "force"}),
    "wait": Grammar("wait"),
    "pause": Grammar("pause"),
    "unpause": Grammar("unpause"),
}


def _each(names: list[str], action: Callable[[str], object]) -> None:
    from vmm.cli.main import print_error
    from vmm.errors import MMError

    first: MMError | None = None
    for name in names:
        try:
            action(name)
            print(name, flush=True)
        except MMError as err:
            if first is not None:
                print_error(first)
            first = err
    if first is not None:
        raise first


def _control():
    from vmm.machines.db import open_control

    return open_control()


def _timeout(value: float) -> float:
    from vmm.errors import UsageError

    if value < 0:
        raise UsageError(f"--time must be >= 0, not {value:g}")
    return value


def do_start(names: list[str]) -> None:
    c = _control()
    _each(names, c.start)


def do_stop(names: list[str], time_: float = 10.0) -> None:
    c, t = _control(), _timeout(time_)
    _each(names, lambda n: c.stop(n, t))


def do_restart(names: list[str], time_: float = 10.0) -> None:
    c, t = _control(), _timeout(time_)
    _each(names, lambda n: (c.stop(n, t), c.start(n)))


def do_kill(names: list[str], signal: str = "KILL") -> None:
    c = _control()
    _each(names, lambda n: c.kill(n, signal))


def do_rm(names: list[str], force: bool = False) -> None:
    c = _control()
    _each(names, lambda n: c.remove(n, force))


def do_pause(names: list[str]) -> None:
    c = _control()
    _each(names, c.pause)


def do_unpause(names: list[str]) -> None:
    c = _control()
    _each(names, c.unpause)


def do_wait(names: list[str]) -> None:
    c = _control()
    for name in names:
        print(c.wait(name), flush=True)


ACTIONS: dict[str, Callable[..., None]] = {
    "start": do_start, "stop": do_stop, "restart": do_restart, "kill": do_kill, "rm": do_rm,
    "pause": do_pause, "unpause": do_unpause, "wait": do_wait,
}


def fast(command: str, args: list[str]) -> int | None:
    """`mm COMMAND ARGS` without typer; None for --help (typer prints it)."""
    from vmm.errors import UsageError

    g = GRAMMARS[command]
    parsed = parse(g, args)
    if parsed is None:
        return None
    opts, names = parsed
    if not names:
        raise UsageError(f"mm {command} needs at least one machine name or id", g.hint)
    if "time" in opts:
        opts["time_"] = number(opts.pop("time"), "--time", g.hint)
    ACTIONS[command](names, **opts)
    return 0


def _fast(command: str) -> Callable[[list[str]], int | None]:
    def run(args: list[str]) -> int | None:
        return fast(command, args)

    return run


fast_start, fast_stop, fast_restart, fast_kill = (_fast(c) for c in ("start", "stop", "restart", "kill"))
fast_rm, fast_wait, fast_pause, fast_unpause = (_fast(c) for c in ("rm", "wait", "pause", "unpause"))


def register(app) -> None:
    import typer

    names_arg = typer.Argument(..., help="machine names or ids")
    time_opt = typer.Option(10.0, "-t", "--time", help="seconds before the VM is killed")

    @app.command("start")
    def start(names: list[str] = names_arg) -> None:
        """Start stopped machines (detached)."""
        do_start(names)

    @app.command("stop")
    def stop(names: list[str] = names_arg, time_: float = time_opt) -> None:
        """Stop machines: ask the guest to shut down, kill after --time seconds."""
        do_stop(names, time_)

    @app.command("restart")
    def restart(names: list[str] = names_arg, time_: float = time_opt) -> None:
        """Stop machines (if running), then start them."""
        do_restart(names, time_)

    @app.command("kill")
    def kill(
        names: list[str] = names_arg,
        signal: str = typer.Option("KILL", "-s", "--signal",
                                   help="KILL powers the VM off now; TERM/INT/HUP/QUIT ask the guest to shut down"),
    ) -> None:
        """Kill machines (power off at once by default)."""
        do_kill(names, signal)

    @app.command("rm")
    def rm(
        names: list[str] = names_arg,
        force: bool = typer.Option(False, "-f", "--force", help="kill running machines first"),
    ) -> None:
        """Remove machines and everything they left (worker, socket, disks, logs, network)."""
        do_rm(names, force)

    @app.command("pause")
    def pause(names: list[str] = names_arg) -> None:
        """Pause every vCPU of machines."""
        do_pause(names)

    @app.command("unpause")
    def unpause(names: list[str] = names_arg) -> None:
        """Resume paused machines."""
        do_unpause(names)

    @app.command("wait")
    def wait(names: list[str] = names_arg) -> None:
        """Block until machines end; print each exit code."""
        do_wait(names)
