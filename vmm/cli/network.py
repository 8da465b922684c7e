"""`mm network ls | inspect | create | rm | prune`: user-defined VM networks."""
from __future__ import annotations

import typer

network_app = typer.Typer(help="Manage VM networks (bridge, subnet, NAT).", no_args_is_help=True)


@network_app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List networks."""
    from vmm.cli.output import emit_json, emit_table
    from vmm.network import manage

    rows = manage.list_all()
    if as_json:
        emit_json(rows)
    else:
        emit_table(rows, ["name", "bridge", "subnet", "gateway", "internal", "machines"])


@network_app.command("inspect")
def inspect(name: str = typer.Argument(..., help="network name"),
            as_json: bool = typer.Option(True, "--json/--no-json", help="print JSON (default)")) -> None:
    """Show a network and the machines attached to it."""
    from vmm.cli.output import emit_json, emit_table
    from vmm.network import manage

    data = manage.inspect(name)
    if as_json:
        emit_json(data)
    else:
        emit_table(data["machines"], ["vm_id", "ip", "netns", "owner_pid", "owner_alive"])


@network_app.command("create")
def create(name: str = typer.Argument(..., help="network name"),
           subnet: str = typer.Option(..., "--subnet", help="IPv4 subnet in CIDR form, e.g. 10.89.0.0/16"),
           internal: bool = typer.Option(False, "--internal", help="no access outside the network"),
           as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Create a network."""
    from vmm.cli.output import emit_json
    from vmm.network import manage

    net = manage.create(name, subnet, internal)
    if as_json:
        emit_json(net.as_dict())
    else:
        print(net.name)


@network_app.command("rm")
def rm(names: list[str] = typer.Argument(..., help="network name(s)")) -> None:
    """Remove networks no machine uses."""
    from vmm.network import manage

    for name in names:
        manage.remove(name)
        print(name)


@network_app.command("prune")
def prune(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Reclaim leases, namespaces, links and rules left by crashed machines."""
    from vmm.cli.output import emit_json
    from vmm.network import manage

    report = manage.prune(is_live=_lease_alive())
    if as_json:
        emit_json(report.as_dict())
        return
    for kind, items in report.as_dict().items():
        for item in items:
            print(f"removed {kind[:-1] if kind != 'leases' else 'lease'}: {item}")


def _lease_alive():
    """A lease is live while its machine exists (running or stopped: `mm start` boots it on
    the same network) or its owner process runs (a `mm run` still provisioning). The
    owner alone is not enough: it is the `mm run` that attached, gone after `-d`."""
    from vmm.machines.db import open_control
    from vmm.network import ipam

    machines = {rec.id for rec in open_control().machines.list()}
    return lambda lease: lease.vm_id in machines or ipam.owner_alive(lease)


def register(app: typer.Typer) -> None:
    app.add_typer(network_app, name="network")
