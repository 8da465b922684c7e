"""`mm lab prepare | up | exec -- CMD | down | status`: the QEMU TCG lab with nested SVM."""
from __future__ import annotations

import typer

lab_app = typer.Typer(help="The lab: a QEMU TCG machine where real Linux guests run on KVM.", no_args_is_help=True)


@lab_app.command("prepare")
def prepare(force: bool = typer.Option(False, "--force", help="download and unpack the kernel again")) -> None:
    """Fetch Debian's kernel package into the cache and build the lab's initramfs (idempotent)."""
    import sys

    from vmm.lab import prepare as do_prepare

    assets = do_prepare(force=force, log=lambda msg: print(msg, file=sys.stderr))
    print(f"{assets.package} {assets.version} in {assets.root}")


@lab_app.command("up")
def up(
    memory: int = typer.Option(None, "--memory", help="lab memory in MiB (default 8192, MM_LAB_MEMORY)"),
    cpus: int = typer.Option(None, "--cpus", help="lab vCPUs (default 2, MM_LAB_CPUS)"),
) -> None:
    """Boot the lab (no-op when it is running)."""
    from vmm.lab import Lab, LabSettings

    Lab(LabSettings.from_env(memory, cpus)).ensure_up()


@lab_app.command(
    "exec", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True}
)
def exec_(
    argv: list[str] = typer.Argument(..., help="the command and its arguments (after --)"),
    timeout: float = typer.Option(None, "--timeout", help="kill the command after this many seconds (exit 124)"),
) -> None:
    """Run a command in the lab (booting it first if needed); its exit code becomes ours.

    It runs chrooted in the host's filesystem at the same paths, in the current directory,
    with MM_* and PATH from here; stdin is /dev/null; output streams as it comes.
    """
    import os

    from vmm.cli.main import print_error
    from vmm.lab import Lab, LabTimeout

    try:
        rc = Lab().exec_stream(argv, timeout=timeout, cwd=os.getcwd())
    except LabTimeout as err:
        print_error(err)
        raise typer.Exit(124)
    raise typer.Exit(rc)


@lab_app.command("down")
def down() -> None:
    """Stop the lab."""
    import sys

    from vmm.lab import Lab

    if not Lab().down():
        print("the lab was not running", file=sys.stderr)


@lab_app.command("status")
def status(json: bool = typer.Option(False, "--json", help="print as JSON")) -> None:
    """Whether the lab is prepared and running, and where its serial log is."""
    from vmm.lab import Lab

    info = Lab().status()
    if json:
        from vmm.cli.output import emit_json

        emit_json(info)
        return
    print(f"prepared   {'yes, ' + info['kernel'] if info['prepared'] else 'no (run `mm lab prepare`)'}")
    if info["running"]:
        up_s = f", up {info['uptime']:.0f} s" if info.get("uptime") is not None else ", not answering"
        print(f"running    yes, pid {info['pid']}, {info['memory_mib']} MiB, {info['cpus']} vCPUs{up_s}")
    else:
        print("running    no")
    print(f"serial log {info['serial_log']}")


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")
