"""`mm cp [-a] [-q] SRC DEST`: copy files and directories between the host and a
machine, with Docker's rules (vmm/machines/copy.py has them): one side is
`MACHINE:PATH`; `-` as SRC extracts a tar stream from stdin into a machine directory,
`-` as DEST writes the machine path as a tar stream to stdout."""
from __future__ import annotations

import typer


def _size(n: int) -> str:
    """Docker's summary units (decimal, like `Successfully copied 2.05kB`)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n}B"


def register(app: typer.Typer) -> None:
    @app.command("cp")
    def cp(
        src: str = typer.Argument(..., help="host path, MACHINE:PATH, or - (a tar stream on stdin)"),
        dest: str = typer.Argument(..., help="host path, MACHINE:PATH, or - (a tar stream to stdout)"),
        archive: bool = typer.Option(False, "-a", "--archive", help="keep uid/gid from the source"),
        quiet: bool = typer.Option(False, "-q", "--quiet", help="no summary line on stderr"),
    ) -> None:
        """Copy files/directories between the host and a machine."""
        import sys

        from vmm.machines.copy import copy, parse_cp_args
        from vmm.machines.db import open_control

        s, d = parse_cp_args(src, dest)
        copied = copy(open_control(), s, d, stdin=sys.stdin.buffer, stdout=sys.stdout.buffer, archive=archive)
        if not quiet and not d.is_stdio:
            print(f"Successfully copied {_size(copied)} to {d}", file=sys.stderr)
