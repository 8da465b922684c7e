"""Which host directories the cell binds: only where loaded code lives, each once."""
from __future__ import annotations

import os
import sys

import vmm
from vmm.jail.cell import _outermost, code_roots


def test_outermost_keeps_one_bind_per_tree():
    assert _outermost({"/a/b", "/a", "/ab", "/c/d/e", "/c/d"}) == ["/a", "/ab", "/c/d"]


def test_code_roots_cover_every_loaded_module():
    roots = code_roots()
    assert os.path.dirname(os.path.abspath(os.__file__)) in roots or any(
        os.__file__.startswith(r + "/") for r in roots)
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path:
            assert any(os.path.abspath(path).startswith(r + "/") or os.path.realpath(path).startswith(r + "/")
                       for r in roots), path
    assert not any(r in ("/", "/etc", "/root", "/home", "/dev", "/var") for r in roots)
    assert any(os.path.abspath(vmm.__file__).startswith(r + "/") for r in roots)


def test_code_roots_see_a_module_imported_after_an_earlier_call(tmp_path, monkeypatch):
    """The memo (one look per module) must not hide a module imported between two calls:
    the VMM calls it early, and again after the machine factory imported more."""
    code_roots()
    (tmp_path / "mm_late_module.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.import_module("mm_late_module")
    try:
        assert str(tmp_path) in code_roots()
    finally:
        sys.modules.pop("mm_late_module", None)
