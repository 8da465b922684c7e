"""`mm start|stop|restart|kill|rm|wait|pause|unpause`: Docker's lifecycle commands.

Each takes one or more machine names or ids, acts on them in order, prints each name
it acted on (as Docker does) and reports the first failure as the command's error
after trying the rest.
"""
from __future__ import annotations

from typing import Callable

import typer

NAMES = typer.Argument(..., help="machine names or ids")


def _each(names: list[str], action: Callable[[str], object]) -> None:
    from vmm.cli.main import print_error
    from vmm.errors import MMError

    first: MMError | None = None
    for name in names:
        try:
            action(name)
            print(name)
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
        raise UsageError(f"--time must be >= 0, not {value}")
    return value


def register(app: typer.Typer) -> None:
    @app.command("start")
    def start(names: list[str] = NAMES) -> None:
        """Start stopped machines (detached)."""
        c = _control()
        _each(names, c.start)

    @app.command("stop")
    def stop(
        names: list[str] = NAMES,
        time_: float = typer.Option(10.0, "-t", "--time", help="seconds before the VM is killed"),
    ) -> None:
        """Stop machines: ask the guest to shut down, kill after --time seconds."""
        c, t = _control(), _timeout(time_)
        _each(names, lambda n: c.stop(n, t))

    @app.command("restart")
    def restart(
        names: list[str] = NAMES,
        time_: float = typer.Option(10.0, "-t", "--time", help="seconds before the VM is killed"),
    ) -> None:
        """Stop machines (if running), then start them."""
        c, t = _control(), _timeout(time_)
        _each(names, lambda n: (c.stop(n, t), c.start(n)))

    @app.command("kill")
    def kill(
        names: list[str] = NAMES,
        signal: str = typer.Option("KILL", "-s", "--signal",
                                   help="KILL powers the VM off now; TERM/INT/HUP/QUIT ask the guest to shut down"),
    ) -> None:
        """Kill machines (power off at once by default)."""
        c = _control()
        _each(names, lambda n: c.kill(n, signal))

    @app.command("rm")
    def rm(
        names: list[str] = NAMES,
        force: bool = typer.Option(False, "-f", "--force", help="kill running machines first"),
    ) -> None:
        """Remove machines and everything they left (worker, socket, disks, logs, network)."""
        c = _control()
        _each(names, lambda n: c.remove(n, force))

    _register_running(app)


def _register_running(app: typer.Typer) -> None:
    """The commands for machines that run: pause, unpause, wait."""

    @app.command("pause")
    def pause(names: list[str] = NAMES) -> None:
        """Pause every vCPU of machines."""
        c = _control()
        _each(names, c.pause)

    @app.command("unpause")
    def unpause(names: list[str] = NAMES) -> None:
        """Resume paused machines."""
        c = _control()
        _each(names, c.unpause)

    @app.command("wait")
    def wait(names: list[str] = NAMES) -> None:
        """Block until machines end; print each exit code."""
        c = _control()
        for name in names:
            print(c.wait(name))
