"""`mm doctor`: print the host checks; non-zero exit when any check fails."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def doctor(json: bool = typer.Option(False, "--json", help="print the checks as JSON")) -> int:
        """Check what this host can do (KVM flavour, userfaultfd, tun, netns, nftables, seccomp, kernel, lab)."""
        import dataclasses

        from vmm.cli.output import emit_json
        from vmm.doctor import FAIL, run_checks

        checks = run_checks()
        if json:
            emit_json([dataclasses.asdict(c) for c in checks])
        else:
            for c in checks:
                print(f"{c.status:<5} {c.name:<13} {c.detail}")
                if c.hint and c.status != "ok":
                    print(f"{'':<19} hint: {c.hint}")
        failed = any(c.status == FAIL for c in checks)
        if failed:
            raise typer.Exit(1)
        return 0
