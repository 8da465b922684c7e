"""`mm image pull`: manifest (or index → linux/amd64 manifest), config, then layers in parallel.

Blobs land in the store verified; the reference is recorded last, so an interrupted
pull never leaves an image that looks complete. Progress bars (rich) go to stderr and
only when it is a terminal.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import sys
from typing import Any, Callable, Iterator

from vmm.image import manifest as mf
from vmm.image.reference import Reference
from vmm.image.store import Store

PARALLEL_LAYERS = 5


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yields `track(label, total) -> update(done)`; a no-op when not shown."""
    if not show:
        yield lambda label, total: (lambda done: None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        def track(label: str, total: int) -> Callable[[int], None]:
            task = bar.add_task(label, total=total)
            return lambda done: bar.update(task, completed=done)

        yield track


def pull(ref: Reference, store: Store | None = None, quiet: bool = False) -> str:
    """Pull `ref` into the store and record it; returns the manifest digest."""
    from vmm.image.registry import RegistryClient

    store = store or Store()
    show = not quiet and sys.stderr.isatty()
    client = RegistryClient(ref)
    try:
        with store.using():
            index_digest, digest, doc = _resolve_manifest(client, store, ref)
            config_desc, layers = mf.image_parts(doc)
            with _progress(show) as track:
                _fetch_layers(client, store, [config_desc, *layers], track)
            mf.check_config(json.loads(store.read_blob(config_desc["digest"])))
            if ref.tag:
                store.set_ref(f"{ref.name}:{ref.tag}", digest, index_digest, source="registry")
            if ref.digest:
                store.set_ref(f"{ref.name}@{ref.digest}", digest, index_digest, source="registry")
    finally:
        client.close()
    return digest


def _resolve_manifest(client, store: Store, ref: Reference) -> tuple[str | None, str, dict[str, Any]]:
    data, kind, digest = client.manifest(ref.selector)
    kind, doc = mf.load(data, kind)
    index_digest = None
    if mf.is_index(kind):
        index_digest = store.put_bytes(data, digest)
        desc = mf.select_platform(doc)
        data, kind, digest = client.manifest(desc["digest"])
        kind, doc = mf.load(data, kind)
        if mf.is_index(kind):
            from vmm.image.errors import ManifestError

            raise ManifestError(f"{ref}: an index inside an index is not supported")
    store.put_bytes(data, digest)
    return index_digest, digest, doc


def _fetch_layers(client, store: Store, descs: list[dict[str, Any]], track) -> None:
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_LAYERS, thread_name_prefix="pull") as pool:
        # The config is small: it needs no bar of its own but rides in the same pool.
        futures = [pool.submit(client.fetch_blob, store, desc,
                               track(desc["digest"][7:19], desc["size"]) if i else None)
                   for i, desc in enumerate(descs)]
        try:
            for fut in concurrent.futures.as_completed(futures):
                fut.result()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
