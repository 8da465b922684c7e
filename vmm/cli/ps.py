"""`mm ps` and `mm inspect`: what machines exist and in which state, truthfully.

Both reconcile records with reality first: a machine whose worker died shows as
`dead`. `ps` is on the start-up budget (≤ 60 ms), so it imports only the store.
"""
from __future__ import annotations

import time

INSPECT_KEYS = ("name", "id", "short_id", "state", "image", "ip", "pid", "exit_code", "exit_reason",
                "error", "created", "started_at", "finished_at", "labels", "config", "generation",
                "auto_remove")


def _ago(t: float | None, now: float) -> str:
    if not t:
        return ""
    s = max(0, int(now - t))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= size:
            n = s // size
            return f"{n} {unit}{'s' if n > 1 else ''}"
    return f"{s} second{'s' if s != 1 else ''}"


def status_text(rec, now: float | None = None) -> str:
    """Docker-style STATUS: `Up 5 minutes`, `Exited (0) 2 hours ago`, `Dead (worker gone)`."""
    now = now or time.time()
    state = rec.state.value
    if state == "running":
        return f"Up {_ago(rec.started_at, now)}"
    if state == "paused":
        return f"Up {_ago(rec.started_at, now)} (Paused)"
    if state == "exited":
        return f"Exited ({rec.exit_code}) {_ago(rec.finished_at, now)} ago"
    if state == "dead":
        return "Dead (worker gone)" if rec.error and "worker" in rec.error else "Dead"
    return state.capitalize()


def ps_rows(records, now: float | None = None) -> list[dict]:
    now = now or time.time()
    rows = []
    for r in records:
        cmd = " ".join(r.config.get("cmd") or [])
        rows.append({"machine id": r.short_id, "image": r.image, "command": cmd[:30],
                     "created": f"{_ago(r.created, now)} ago", "status": status_text(r, now),
                     "ip": r.ip or "", "names": r.name})
    return rows


def show_ps(all_: bool, quiet: bool, fmt: str) -> int:
    from vmm.errors import UsageError
    from vmm.machines.db import open_machines

    if fmt not in ("table", "json"):
        raise UsageError(f"unknown --format {fmt!r}", "use --format table or --format json")
    records = open_machines().reconcile_all(include_stopped=all_)
    if quiet:
        for r in records:
            print(r.short_id)
    elif fmt == "json":
        from vmm.cli.output import emit_json

        emit_json([{k: r.to_dict()[k] for k in INSPECT_KEYS} for r in records])
    else:
        from vmm.cli.output import emit_table

        emit_table(ps_rows(records), ["machine id", "image", "command", "created", "status", "ip", "names"])
    return 0


def fast_ps(args: list[str]) -> int | None:
    """`mm ps` without typer (see FAST_PATHS in vmm/cli/main.py); None for anything unusual."""
    all_, quiet, fmt = False, False, "table"
    it = iter(args)
    for arg in it:
        if arg in ("-a", "--all"):
            all_ = True
        elif arg in ("-q", "--quiet"):
            quiet = True
        elif arg in ("-aq", "-qa"):
            all_ = quiet = True
        elif arg == "--format":
            fmt = next(it, "")
        elif arg.startswith("--format="):
            fmt = arg.split("=", 1)[1]
        else:
            return None  # help, typos: typer explains
    return show_ps(all_, quiet, fmt)


def show_inspect(names: list[str]) -> int:
    """Everything recorded about machines, as JSON (one object for one name, else a list)."""
    from vmm.cli.output import emit_json
    from vmm.machines.db import open_control

    control = open_control()
    out = [{k: control.find(n).to_dict()[k] for k in INSPECT_KEYS} for n in names]
    emit_json(out[0] if len(out) == 1 else out)
    return 0


def fast_inspect(args: list[str]) -> int | None:
    """`mm inspect` without typer; None for --help."""
    from vmm.cli.fastargs import Grammar, parse
    from vmm.errors import UsageError

    g = Grammar("inspect", flags={"--json": "json"})
    parsed = parse(g, args)
    if parsed is None:
        return None
    if not parsed[1]:
        raise UsageError("mm inspect needs at least one machine name or id", g.hint)
    return show_inspect(parsed[1])


def register(app) -> None:
    import typer

    @app.command("ps")
    def ps(
        all_: bool = typer.Option(False, "-a", "--all", help="show every machine (default: running ones)"),
        quiet: bool = typer.Option(False, "-q", "--quiet", help="only ids"),
        fmt: str = typer.Option("table", "--format", help="table or json"),
    ) -> None:
        """List machines (a dead worker shows as `dead`)."""
        return show_ps(all_, quiet, fmt)

    @app.command("inspect")
    def inspect(
        names: list[str] = typer.Argument(..., help="machine names or ids"),
        json_: bool = typer.Option(False, "--json", help="JSON output (always; the flag is accepted for scripts)"),
    ) -> None:
        """Everything recorded about machines, as JSON (one object for one name, else a list)."""
        show_inspect(names)
