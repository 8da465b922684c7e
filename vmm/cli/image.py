"""`mm image`: pull, ls, inspect, rm, prune, import, build-default (the OCI image cache)."""
from __future__ import annotations

import typer


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def pull(ref: str = typer.Argument(..., help="image reference, e.g. alpine:3.20 or 127.0.0.1:5000/app:1"),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
         rootfs: bool = typer.Option(False, "--rootfs", help="also build the root filesystem now"),
         json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Pull an image from its registry into the local cache."""
    from vmm.cli.output import emit_json
    from vmm.image import Store, parse
    from vmm.image.images import lookup
    from vmm.image.pull import pull as do_pull

    parsed = parse(ref)
    store = Store()
    digest = do_pull(parsed, store, quiet=quiet or json)
    img = lookup(parsed, store)
    if rootfs:
        img.rootfs_path  # noqa: B018 - builds it
    if json:
        emit_json({"name": img.name, "digest": digest, "rootfs": str(img.rootfs_file())})
    else:
        print(f"{parsed.familiar()}: {digest}")


def ls(json: bool = typer.Option(False, "--json", help="print the images as JSON")) -> None:
    """List local images."""
    from vmm.cli.output import emit_json, emit_table
    from vmm.image import Store
    from vmm.image.images import load
    from vmm.image.reference import parse as parse_ref

    store, rows = Store(), []
    for rec in store.refs():
        try:
            img = load(store, rec["name"], rec["digest"], rec.get("index_digest"))
            size, built = img.size, img.rootfs_file().exists()
        except Exception:  # a broken record still gets listed, so it can be removed
            size, built = 0, False
        rows.append({"name": parse_ref(rec["name"]).familiar(), "full_name": rec["name"], "digest": rec["digest"],
                     "id": rec["digest"][7:19], "size": size, "size_h": _human(size),
                     "rootfs": "yes" if built else "no", "source": rec.get("source", "")})
    if json:
        emit_json(rows)
    else:
        emit_table([dict(r, size=r["size_h"]) for r in rows], ["name", "id", "size", "rootfs"])


def inspect(ref: str = typer.Argument(..., help="image reference or digest (prefix)"),
            json: bool = typer.Option(False, "--json", help="print as JSON (the default output)"),
            build: bool = typer.Option(False, "--rootfs", help="build the root filesystem if missing")) -> None:
    """Show an image's digest, config, layers and root filesystem path."""
    from vmm.cli.output import emit_json
    from vmm.image import resolve

    img = resolve(ref, pull=False)
    if build:
        img.rootfs_path  # noqa: B018 - builds it
    emit_json(img.to_dict())


def rm(refs: list[str] = typer.Argument(..., help="image references to remove"),
       json: bool = typer.Option(False, "--json", help="print what was removed as JSON")) -> None:
    """Remove images (their names), then the blobs and root filesystems no image uses."""
    from vmm.cli.output import emit_json
    from vmm.image import ImageNotFound, Store, lookup

    store, names = Store(), []
    for ref in refs:
        img = lookup(ref, store)
        if img is None:
            raise ImageNotFound(f"no image {ref!r} in the local cache", "see `mm image ls`")
        store.remove_ref(img.name)
        names.append(img.name)
    removed = store.gc(partials=False)
    if json:
        emit_json({"removed": names, **removed})
    else:
        for name in names:
            print(f"removed {name}")


def prune(json: bool = typer.Option(False, "--json", help="print what was removed as JSON")) -> None:
    """Delete blobs and root filesystems no image uses, and leftovers of interrupted pulls."""
    from vmm.cli.output import emit_json
    from vmm.image import Store

    removed = Store().gc()
    if json:
        emit_json(removed)
    else:
        print(f"removed {removed['blobs']} blobs, {removed['rootfs']} root filesystems, "
              f"{removed['tmp']} temporary files; freed {_human(removed['bytes'])}")


def import_(path: str = typer.Argument(..., help="oci-archive, docker-archive (docker save) or OCI layout dir"),
            name: str = typer.Argument(None, help="name to give the image (default: the one it carries)"),
            json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Import an image from a local archive or OCI layout directory."""
    from vmm.cli.output import emit_json
    from vmm.image.importer import import_path

    final, digest = import_path(path, name)
    if json:
        emit_json({"name": final, "digest": digest})
    else:
        print(f"{final}: {digest}")


def build_default(json: bool = typer.Option(False, "--json", help="print the result as JSON")) -> None:
    """Build the built-in busybox image (mm/default:latest) and its root filesystem; idempotent."""
    from vmm.cli.output import emit_json
    from vmm.image import resolve
    from vmm.image.default import build_default as build

    name, digest, built = build()
    rootfs = resolve(name, pull=False).rootfs_path
    if json:
        emit_json({"name": name, "digest": digest, "built": built, "rootfs": str(rootfs)})
    else:
        print(f"{name}: {digest} ({'built' if built else 'cached'}) rootfs {rootfs}")


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
