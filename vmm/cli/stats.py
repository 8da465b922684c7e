"""`mm stats`: live numbers of running machines from their workers (`--no-stream` for one
sample, `--json` for scripts). Parsed by hand on the fast path (vmm/cli/fastargs.py)."""
from __future__ import annotations


def _row(name: str, s: dict) -> dict:
    vm = s.get("vm") or {}
    return {
        "name": name,
        "state": s.get("state", ""),
        "uptime": f"{s.get('uptime_s', 0):.0f}s",
        "worker cpu": f"{s.get('worker_cpu_s', 0):.2f}s",
        "worker rss": f"{s.get('worker_rss_kib', 0) / 1024:.1f}MiB",
        "vcpus": vm.get("vcpus", ""),
        "memory": f"{vm['memory'] >> 20}MiB" if isinstance(vm.get("memory"), int) else "",  # bytes, from vmm.machine
        "console": f"{s.get('console_bytes', 0)}B",
    }


def show_stats(names: list[str], no_stream: bool = False, json_: bool = False) -> int:
    """Resource use of running machines: a sample a second, one with --no-stream or --json."""
    import sys
    import time

    from vmm.cli.output import emit_json, emit_table
    from vmm.machines.db import open_control

    c = open_control()
    refs = names or [r.id for r in c.machines.reconcile_all(include_stopped=False)]
    while True:
        samples = {c.find(ref).name: c.stats(ref) for ref in refs}
        if json_:
            emit_json(samples)
            return 0
        if not no_stream:
            sys.stdout.write("\x1b[2J\x1b[H")
        emit_table([_row(n, s) for n, s in samples.items()],
                   ["name", "state", "uptime", "worker cpu", "worker rss", "vcpus", "memory", "console"])
        if no_stream:
            return 0
        sys.stdout.flush()
        time.sleep(1.0)


def fast_stats(args: list[str]) -> int | None:
    from vmm.cli.fastargs import Grammar, parse

    parsed = parse(Grammar("stats", flags={"--no-stream": "no_stream", "--json": "json_"}), args)
    return None if parsed is None else show_stats(parsed[1], **parsed[0])


def register(app) -> None:
    import typer

    @app.command("stats")
    def stats(
        names: list[str] = typer.Argument(None, help="machine names or ids (default: every running one)"),
        no_stream: bool = typer.Option(False, "--no-stream", help="print one sample and exit"),
        json_: bool = typer.Option(False, "--json", help="one JSON sample"),
    ) -> None:
        """Resource use of running machines."""
        show_stats(names or [], no_stream, json_)
