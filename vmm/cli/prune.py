"""`mm system prune`: remove exited and dead machines and whatever crashed ones left
behind (sockets, disks, logs, network attachments)."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    system = typer.Typer(help="Whole-installation housekeeping.", no_args_is_help=True)

    @system.command("prune")
    def prune(force: bool = typer.Option(False, "-f", "--force", help="do not ask")) -> None:
        """Remove every stopped (exited or dead) machine and leftovers no machine owns."""
        import sys

        from vmm.machines.db import open_control

        if not force and sys.stdin.isatty():
            typer.confirm("Remove all stopped machines and their files?", abort=True)
        removed = open_control().prune()
        for rec in removed:
            print(f"removed {rec.name} ({rec.short_id})")
        print(f"{len(removed)} machine(s) removed")

    app.add_typer(system, name="system")
