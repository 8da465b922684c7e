"""`mm image`: pull, ls, inspect, rm, prune, import, build-default (the OCI image cache).

The typer commands, for `--help` and anything the hand parser hands back; the work and
the fast path (no typer) are in vmm/cli/image_actions.py."""
from __future__ import annotations

import typer

from vmm.cli import image_actions as act


def pull(ref: str = typer.Argument(..., help="image reference, e.g. alpine:3.20 or 127.0.0.1:5000/app:1"),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
         rootfs: bool = typer.Option(False, "--rootfs", help="also build the root filesystem now"),
         json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Pull an image from its registry into the local cache."""
    act.pull(ref, quiet, rootfs, json)


def ls(json: bool = typer.Option(False, "--json", help="print the images as JSON")) -> None:
    """List local images."""
    act.ls(json)


def inspect(ref: str = typer.Argument(..., help="image reference or digest (prefix)"),
            json: bool = typer.Option(False, "--json", help="print as JSON (the default output)"),
            build: bool = typer.Option(False, "--rootfs", help="build the root filesystem if missing")) -> None:
    """Show an image's digest, config, layers and root filesystem path."""
    act.inspect(ref, json, build)


def rm(refs: list[str] = typer.Argument(..., help="image references to remove"),
       json: bool = typer.Option(False, "--json", help="print what was removed as JSON")) -> None:
    """Remove images (their names), then the blobs and root filesystems no image uses."""
    act.rm(refs, json)


def prune(json: bool = typer.Option(False, "--json", help="print what was removed as JSON")) -> None:
    """Delete blobs and root filesystems no image uses, and leftovers of interrupted pulls."""
    act.prune(json)


def import_(path: str = typer.Argument(..., help="oci-archive, docker-archive (docker save) or OCI layout dir"),
            name: str = typer.Argument(None, help="name to give the image (default: the one it carries)"),
            json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Import an image from a local archive or OCI layout directory."""
    act.import_(path, name, json)


def build_default(json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Build the built-in busybox image (mm/default:latest) and its root filesystem; idempotent."""
    act.build_default(json)


def register(app: typer.Typer) -> None:
    image_app = typer.Typer(help="Manage OCI images (pull, import, list, inspect, remove).", no_args_is_help=True)
    app.add_typer(image_app, name="image")
    image_app.command("pull")(pull)
    image_app.command("ls")(ls)
    image_app.command("inspect")(inspect)
    image_app.command("rm")(rm)
    image_app.command("prune")(prune)
    image_app.command("import")(import_)
    image_app.command("build-default")(build_default)
