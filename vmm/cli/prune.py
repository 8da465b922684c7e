"""`mm system prune`: remove exited and dead machines and whatever crashed ones left
behind (sockets, disks, logs, network attachments), and stop this uid's worker fork
servers (vmm.worker.forkserver). Parsed by hand on the fast path
(vmm/cli/fastargs.py)."""
from __future__ import annotations


def do_prune(force: bool = False) -> int:
    """Remove every stopped (exited or dead) machine and leftovers no machine owns."""
    import sys

    from vmm.machines.db import open_control

    if not force and sys.stdin.isatty():
        import typer

        typer.confirm("Remove all stopped machines and their files?", abort=True)
    removed = open_control().prune()
    for rec in removed:
        print(f"removed {rec.name} ({rec.short_id})")
    print(f"{len(removed)} machine(s) removed")
    from vmm.worker.forkserver_client import stop_all

    stopped = stop_all()  # the next mm run starts a fresh one
    if stopped:
        print(f"{len(stopped)} worker fork server(s) stopped")
    return 0


def fast_system(args: list[str]) -> int | None:
    """`mm system prune [-f]` without typer; None for anything else (typer explains)."""
    from vmm.cli.fastargs import Grammar, parse

    if args[:1] != ["prune"]:
        return None
    parsed = parse(Grammar("system prune", flags={"-f": "force", "--force": "force"}), args[1:])
    if parsed is None or parsed[1]:
        return None
    return do_prune(**parsed[0])


def register(app) -> None:
    import typer

    system = typer.Typer(help="Whole-installation housekeeping.", no_args_is_help=True)

    @system.command("prune")
    def prune(force: bool = typer.Option(False, "-f", "--force", help="do not ask")) -> None:
        """Remove every stopped (exited or dead) machine and leftovers no machine owns."""
        do_prune(force)

    app.add_typer(system, name="system")
