"""What `mm image` does, without typer: one plain function per subcommand, and `fast`,
which parses `mm image SUB ...` by hand (vmm/cli/fastargs.py) and runs it.

typer's command layer costs ~0.17 s per `mm image pull` on the development host, half
of a 66 MB pull from a local registry (benchmarks/results/image-*.md), and seconds in the
lab; vmm/cli/image.py keeps the typer commands for `--help`, and they call these too."""
from __future__ import annotations

from vmm.cli.fastargs import Grammar, parse
from vmm.errors import UsageError


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def pull(ref: str, quiet: bool = False, rootfs: bool = False, json: bool = False) -> None:
    from vmm.cli.output import emit_json
    from vmm.image import Store, parse as parse_ref
    from vmm.image.images import lookup
    from vmm.image.pull import pull as do_pull

    parsed = parse_ref(ref)
    store = Store()
    digest = do_pull(parsed, store, quiet=quiet or json)
    img = lookup(parsed, store)
    if rootfs:
        img.rootfs_path  # noqa: B018 - builds it
    if json:
        emit_json({"name": img.name, "digest": digest, "rootfs": str(img.rootfs_file())})
    else:
        print(f"{parsed.familiar()}: {digest}")


def ls(json: bool = False) -> None:
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
                     "id": rec["digest"][7:19], "size": size, "size_h": human(size),
                     "rootfs": "yes" if built else "no", "source": rec.get("source", "")})
    if json:
        emit_json(rows)
    else:
        emit_table([dict(r, size=r["size_h"]) for r in rows], ["name", "id", "size", "rootfs"])


def inspect(ref: str, json: bool = False, build: bool = False) -> None:
    from vmm.cli.output import emit_json
    from vmm.image import resolve

    img = resolve(ref, pull=False)
    if build:
        img.rootfs_path  # noqa: B018 - builds it
    emit_json(img.to_dict())


def rm(refs: list[str], json: bool = False) -> None:
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


def prune(json: bool = False) -> None:
    from vmm.cli.output import emit_json
    from vmm.image import Store

    removed = Store().gc()
    if json:
        emit_json(removed)
    else:
        print(f"removed {removed['blobs']} blobs, {removed['rootfs']} root filesystems, "
              f"{removed['tmp']} temporary files; freed {human(removed['bytes'])}")


def import_(path: str, name: str | None = None, json: bool = False) -> None:
    from vmm.cli.output import emit_json
    from vmm.image.importer import import_path

    final, digest = import_path(path, name)
    if json:
        emit_json({"name": final, "digest": digest})
    else:
        print(f"{final}: {digest}")


def build_default(json: bool = False) -> None:
    from vmm.cli.output import emit_json
    from vmm.image import resolve
    from vmm.image.default import build_default as build

    name, digest, built = build()
    rootfs = resolve(name, pull=False).rootfs_path
    if json:
        emit_json({"name": name, "digest": digest, "built": built, "rootfs": str(rootfs)})
    else:
        print(f"{name}: {digest} ({'built' if built else 'cached'}) rootfs {rootfs}")


_JSON = {"--json": "json"}
# subcommand -> (grammar, least and most positional arguments, action, positional names)
_SUBCOMMANDS = {
    "pull": (Grammar("image pull", flags={"-q": "quiet", "--quiet": "quiet", "--rootfs": "rootfs", **_JSON}),
             1, 1, pull, ("ref",)),
    "ls": (Grammar("image ls", flags=_JSON), 0, 0, ls, ()),
    "inspect": (Grammar("image inspect", flags={"--rootfs": "build", **_JSON}), 1, 1, inspect, ("ref",)),
    "rm": (Grammar("image rm", flags=_JSON), 1, None, rm, ()),
    "prune": (Grammar("image prune", flags=_JSON), 0, 0, prune, ()),
    "import": (Grammar("image import", flags=_JSON), 1, 2, import_, ("path", "name")),
    "build-default": (Grammar("image build-default", flags=_JSON), 0, 0, build_default, ()),
}


def fast(args: list[str]) -> int | None:
    """`mm image SUB ARGS` without typer; None (typer takes it) for help or no subcommand."""
    if not args or args[0] not in _SUBCOMMANDS:
        return None
    g, least, most, action, names = _SUBCOMMANDS[args[0]]
    parsed = parse(g, args[1:])
    if parsed is None:
        return None
    opts, positional = parsed
    if len(positional) < least or (most is not None and len(positional) > most):
        want = ("no arguments" if most == 0 else f"exactly {least} argument" if least == most
                else f"{least} or more arguments" if most is None else f"{least} to {most} arguments")
        raise UsageError(f"mm {g.command} takes {want}, got {len(positional)}", g.hint)
    if not names and most is None:
        action(positional, **opts)
    else:
        action(**dict(zip(names, positional)), **opts)
    return 0
