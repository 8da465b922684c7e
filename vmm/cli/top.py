"""`mm top [--json] MACHINE [PS_OPTIONS...]`: the guest's processes, as Docker's top shows
a container's: `ps` (default `ps -ef`) run in the guest through its agent, printed as an
aligned table without the `ps` itself; `--json` gives Docker's API shape
(`Titles`, `Processes`)."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("top", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
    def top(
        machine: str = typer.Argument(..., help="machine name or id"),
        ps_args: list[str] = typer.Argument(None, help="options for the guest's ps (default -ef)"),
        json_: bool = typer.Option(False, "--json", help="JSON output (before MACHINE)"),
    ) -> None:
        """Show the processes running in a machine."""
        import sys

        from vmm.machines.db import open_control
        from vmm.machines.exec import as_json, processes

        args = list(ps_args or [])
        if args[:1] == ["--"]:  # `mm top NAME -- -o pid,args`: the separator is ours
            args = args[1:]
        titles, rows = processes(open_control(), machine, args)
        if json_:
            from vmm.cli.output import emit_json

            emit_json(as_json(titles, rows))
            return
        _table(titles, rows, sys.stdout)


def _table(titles: list[str], rows: list[list[str]], stream) -> None:
    width = [max([len(t)] + [len(r[i]) for r in rows if i < len(r)]) for i, t in enumerate(titles)]
    for row in [titles, *rows]:
        cells = [c.ljust(width[i]) if i < len(row) - 1 else c for i, c in enumerate(row)]
        stream.write("   ".join(cells).rstrip() + "\n")
