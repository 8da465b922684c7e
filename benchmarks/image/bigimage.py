"""The ~100 MB benchmark image: 4 gzip layers of 100 files × 256 KiB (half random, half text).

Written once as an OCI layout under the cache dir (seeded, so every run measures the
same bytes) and pushed to a docker-registry on 127.0.0.1 by the benchmarks.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

from tests.unit.image.ocitools import tar_bytes, write_layout
from vmm import paths

LAYERS, FILES, FILE_SIZE = 4, 100, 256 << 10  # 4 × 100 × 256 KiB = 100 MiB uncompressed
NAME, TAG = "bench/big", "100m"


def layer(seed: int) -> bytes:
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghij ") for _ in range(64)) for _ in range(256)]
    entries = [("dir", f"l{seed}")]
    for i in range(FILES):
        half = FILE_SIZE // 2
        text = b"".join(rng.choice(words) for _ in range(half // 64))
        entries.append(("file", f"l{seed}/f{i}", rng.randbytes(half) + text))
    return tar_bytes(entries)


def ensure_layout() -> Path:
    """The layout's directory, written on first use."""
    path = paths.cache_dir() / "bench" / "image-100m"
    if not (path / "index.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        write_layout(path, [layer(i) for i in range(LAYERS)], tag=TAG)
    return path
