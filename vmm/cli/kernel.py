"""`mm kernel build | path`: our guest kernel (kernel/ fragment on Debian's linux-source)."""
from __future__ import annotations

import typer

kernel_app = typer.Typer(help="Build and locate the guest kernel.", no_args_is_help=True)


@kernel_app.command("build")
def build(
    force: bool = typer.Option(False, "--force", help="rebuild even when a cached build exists"),
    jobs: int = typer.Option(2, "--jobs", "-j", min=1, max=64, help="parallel make jobs"),
) -> None:
    """Build the guest kernel (seconds when cached; ~7 minutes on 2 cores otherwise)."""
    import sys

    from vmm.kernel import build as do_build

    out = do_build(force=force, jobs=jobs, log=lambda msg: print(msg, file=sys.stderr))
    print(out)


@kernel_app.command("path")
def path(
    bzimage: bool = typer.Option(False, "--bzimage", help="the bzImage instead of the ELF vmlinux"),
    json: bool = typer.Option(False, "--json", help="print every artifact as JSON"),
) -> None:
    """Print the kernel our VMM boots (MM_KERNEL wins over our build)."""
    import os

    from vmm.kernel import build_dir, kernel_path

    if json:
        from vmm.cli.output import emit_json

        user = os.environ.get("MM_KERNEL")
        emit_json({
            "source": "MM_KERNEL" if user else "built",
            "vmlinux": str(kernel_path("vmlinux")),
            "bzimage": str(kernel_path("bzimage")),
            "config": None if user else str(build_dir() / "config"),
        })
        return
    print(kernel_path("bzimage" if bzimage else "vmlinux"))


def register(app: typer.Typer) -> None:
    app.add_typer(kernel_app, name="kernel")
