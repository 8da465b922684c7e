"""`mm ssh [-t|-T] MACHINE [CMD...]`: the real OpenSSH client into a machine started with
`--ssh`, with its own key and a pinned host key (vmm/machines/ssh.py builds the command
line); mm becomes `ssh` (exec), so the exit status is ssh's: the remote command's."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("ssh", context_settings={"allow_interspersed_args": False})
    def ssh(
        machine: str = typer.Argument(..., help="machine name or id"),
        command: list[str] = typer.Argument(None, help="command to run (default: a login shell)"),
        tty: bool = typer.Option(False, "-t", help="force a terminal (ssh -t)"),
        no_tty: bool = typer.Option(False, "-T", help="no terminal (ssh -T)"),
    ) -> None:
        """Log in to a machine over SSH (or run CMD there)."""
        import os
        import sys

        from vmm.errors import UsageError
        from vmm.machines.db import open_control
        from vmm.machines.ssh import ssh_argv

        if tty and no_tty:
            raise UsageError("-t and -T contradict each other")
        cmd = list(command or [])
        if cmd[:1] == ["--"]:  # `mm ssh NAME -- CMD`: the separator is ours, not the command's
            cmd = cmd[1:]
        argv = ssh_argv(open_control(), machine, cmd, True if tty else False if no_tty else None)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(argv[0], argv)
