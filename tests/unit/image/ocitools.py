"""Test helpers: build layer tarballs and OCI layouts / archives in Python (no daemon needed)."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from vmm.image import manifest as mf

MTIME = 1_600_000_000


def tar_bytes(entries: list[tuple]) -> bytes:
    """Entries: ("dir", name[, mode]), ("file", name, data[, mode[, xattrs]]), ("symlink", name, target),
    ("hardlink", name, target), ("chr"/"blk", name, major, minor), ("fifo", name)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            kind, name = entry[0], entry[1]
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, data = MTIME, 0, 0, None
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, entry[2] if len(entry) > 2 else 0o755
            elif kind == "file":
                payload = entry[2] if isinstance(entry[2], bytes) else entry[2].encode()
                info.mode = entry[3] if len(entry) > 3 else 0o644
                if len(entry) > 4:
                    info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in entry[4].items()}
                if len(entry) > 5:
                    info.uid, info.gid = entry[5]
                info.size, data = len(payload), io.BytesIO(payload)
            elif kind == "symlink":
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry[2], 0o777
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, entry[2]
            elif kind in ("chr", "blk"):
                info.type = tarfile.CHRTYPE if kind == "chr" else tarfile.BLKTYPE
                info.devmajor, info.devminor, info.mode = entry[2], entry[3], 0o666
            elif kind == "fifo":
                info.type, info.mode = tarfile.FIFOTYPE, 0o644
            tar.addfile(info, data)
    return buf.getvalue()


def compress(raw: bytes, how: str | None) -> tuple[bytes, str]:
    if how == "gzip":
        return gzip.compress(raw, compresslevel=1, mtime=0), mf.OCI_LAYER_GZIP
    if how == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(raw), mf.OCI_LAYER_ZSTD
    return raw, mf.OCI_LAYER


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _put(layout: Path, data: bytes) -> dict:
    d = digest_of(data)
    path = layout / "blobs" / "sha256" / d[7:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": d, "size": len(data)}


def image_blobs(layout: Path, layers: list[bytes], how: str | None = "gzip", arch: str = "amd64",
                cmd: list[str] | None = None) -> dict:
    """Write config + layer blobs + manifest into `layout`; returns the manifest descriptor."""
    descs, diff_ids = [], []
    for raw in layers:
        blob, media = compress(raw, how)
        descs.append({"mediaType": media, **_put(layout, blob)})
        diff_ids.append(digest_of(raw))
    config = {"architecture": arch, "os": "linux", "config": {"Cmd": cmd or ["/bin/sh"], "Env": ["PATH=/bin"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    config_desc = {"mediaType": mf.OCI_CONFIG, **_put(layout, json.dumps(config).encode())}
    manifest = mf.build_manifest(config_desc, descs)
    return {"mediaType": mf.OCI_MANIFEST, **_put(layout, manifest),
            "platform": {"os": "linux", "architecture": arch}}


def write_layout(layout: Path, layers: list[bytes], tag: str = "latest", how: str | None = "gzip",
                 arches: tuple[str, ...] = ("amd64",), cmd: list[str] | None = None) -> str:
    """An OCI layout with one image (or a multi-platform index when several arches); returns the top digest."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    descs = [image_blobs(layout, layers, how, arch, cmd) for arch in arches]
    if len(descs) == 1:
        top = descs[0]
    else:
        index = {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": descs}
        top = {"mediaType": mf.OCI_INDEX, **_put(layout, json.dumps(index).encode())}
    top = dict(top, annotations={"org.opencontainers.image.ref.name": tag})
    top.pop("platform", None)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return top["digest"]


def tar_dir(src: Path, out: Path) -> Path:
    with tarfile.open(out, "w") as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
    return out


def write_docker_archive(out: Path, layers: list[bytes], tag: str) -> None:
    """A `docker save`-style archive: <id>.json config, <n>/layer.tar, manifest.json."""
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/true"]},
              "rootfs": {"type": "layers", "diff_ids": [digest_of(raw) for raw in layers]}}
    config_bytes = json.dumps(config).encode()
    files = {f"{digest_of(config_bytes)[7:]}.json": config_bytes}
    names = []
    for i, raw in enumerate(layers):
        files[f"layer{i}/layer.tar"] = raw
        names.append(f"layer{i}/layer.tar")
    files["manifest.json"] = json.dumps([{"Config": f"{digest_of(config_bytes)[7:]}.json",
                                          "RepoTags": [tag], "Layers": names}]).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
