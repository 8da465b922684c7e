"""Manifest kinds, platform choice and descriptor checks."""
import json

import pytest

from vmm.image import manifest as mf
from vmm.image.errors import ManifestError

D = "sha256:" + "b" * 64


def test_platform_choice():
    index = {"manifests": [
        {"digest": "sha256:" + "1" * 64, "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": D, "size": 2, "platform": {"os": "linux", "architecture": "amd64"}}]}
    assert mf.select_platform(index)["digest"] == D
    with pytest.raises(ManifestError, match="linux/arm64"):
        mf.select_platform({"manifests": index["manifests"][:1]})


def test_kinds():
    assert mf.load(json.dumps({"schemaVersion": 2, "manifests": []}).encode())[0] == mf.OCI_INDEX
    assert mf.load(json.dumps({"schemaVersion": 2, "mediaType": mf.DOCKER_MANIFEST}).encode())[0] == mf.DOCKER_MANIFEST
    with pytest.raises(ManifestError, match="schema 1"):
        mf.load(json.dumps({"schemaVersion": 1, "fsLayers": []}).encode())
    with pytest.raises(ManifestError):
        mf.load(b"not json")


def test_descriptors_checked():
    good = {"digest": D, "size": 3}
    config, layers = mf.image_parts({"config": good, "layers": [dict(good, mediaType=mf.OCI_LAYER_GZIP)]})
    assert config == good and len(layers) == 1
    for bad in ({"digest": "md5:x", "size": 1}, {"digest": D, "size": -1}, {"digest": "sha256:zz", "size": 1}):
        with pytest.raises(ManifestError):
            mf.image_parts({"config": bad, "layers": []})
    with pytest.raises(ManifestError, match="arm64"):
        mf.check_config({"os": "linux", "architecture": "arm64"})
