"""Image numbers: pull vs `skopeo copy`, root filesystem build (ext4 vs erofs), cached resolve.

The test image is ~100 MB of layers (benchmarks/image/bigimage.py: 4 layers, 100 files
each, half random and half text, gzip), pushed to a docker-registry on 127.0.0.1. Run:
    .venv/bin/python -m pytest benchmarks/image --benchmark-only -p no:cacheprovider
For the recorded figures (contenders alternating, results file written), run
    .venv/bin/python -m benchmarks.image.pull_compare
Targets (issue 6): our pull / skopeo's ≥ 1.0 in our favour; cached resolve to rootfs ≤ 20 ms.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from benchmarks.image.bigimage import ensure_layout
from tests.image.conftest import Registry


@pytest.fixture(scope="module")
def layout():
    return ensure_layout()


@pytest.fixture(scope="module")
def registry(layout, tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("bench-registry"))
    reg.push(layout, "bench/big", "100m")
    yield reg
    reg.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_CACHE", str(tmp_path / "cache"))
    from vmm.image import Store

    return Store()


def test_pull_mm(benchmark, registry, cache):
    from vmm.image import parse
    from vmm.image.pull import pull

    ref = parse(f"{registry.host}/bench/big:100m")
    benchmark.pedantic(pull, args=(ref, cache, True), setup=lambda: shutil.rmtree(cache.root, ignore_errors=True),
                       rounds=5, warmup_rounds=1)


def test_pull_skopeo(benchmark, registry, tmp_path):
    dest = tmp_path / "oci"

    def copy():
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{registry.host}/bench/big:100m", f"oci:{dest}:100m"], check=True)

    benchmark.pedantic(copy, setup=lambda: shutil.rmtree(dest, ignore_errors=True), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("fmt", ["ext4", "erofs"])
def test_rootfs_build(benchmark, registry, cache, fmt):
    from vmm.image import resolve
    from vmm.image.rootfs import build

    img = resolve(f"{registry.host}/bench/big:100m")
    target = img.rootfs_file(fmt)
    benchmark.pedantic(build, args=(cache, img.digest, img.layer_pairs(), fmt),
                       setup=lambda: target.unlink(missing_ok=True), rounds=2)
    benchmark.extra_info["rootfs_bytes"] = os.stat(target).st_blocks * 512
    benchmark.extra_info["layer_bytes"] = img.size


def test_resolve_cached_rootfs(benchmark, registry, cache):
    from vmm.image import resolve

    ref = f"{registry.host}/bench/big:100m"
    resolve(ref).rootfs_path  # noqa: B018 - built once, outside the timing
    benchmark(lambda: resolve(ref, pull=False).rootfs_path)
