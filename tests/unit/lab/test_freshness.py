"""The lab's code freshness: the host's stamp changes with every edit that matters, and
the agent drops its caches exactly when a request brings a new one; a lab serving
another checkout is refused."""
from __future__ import annotations

import json
import os
import time

import pytest

from vmm.lab import agent
from vmm.lab.freshness import code_stamp, venv_stamp


def _touch_later(path, text):
    time.sleep(0.01)  # a distinct mtime_ns even on coarse clocks
    path.write_text(text)


def test_code_stamp_follows_edits_additions_removals_and_renames(tmp_path):
    (tmp_path / "pkg").mkdir()
    f = tmp_path / "pkg" / "a.py"
    f.write_text("x = 1\n")
    stamps = [code_stamp(tmp_path)]
    _touch_later(f, "x = 2\n")
    stamps.append(code_stamp(tmp_path))
    _touch_later(tmp_path / "pkg" / "b.py", "")
    stamps.append(code_stamp(tmp_path))
    os.unlink(tmp_path / "pkg" / "b.py")
    stamps.append(code_stamp(tmp_path))
    time.sleep(0.01)
    os.rename(f, tmp_path / "pkg" / "c.py")
    stamps.append(code_stamp(tmp_path))
    assert len(set(stamps)) == len(stamps)
    assert code_stamp(tmp_path) == stamps[-1]  # nothing changed: the same stamp


def test_caches_and_results_do_not_change_the_stamp(tmp_path):
    (tmp_path / "a.py").write_text("")
    for d in ("__pycache__", ".git", ".venv", "results"):
        (tmp_path / d).mkdir()
    after = code_stamp(tmp_path)
    _touch_later(tmp_path / "__pycache__" / "a.cpython-311.pyc", "new")
    _touch_later(tmp_path / "results" / "r.json", "{}")
    assert code_stamp(tmp_path) == after


def test_venv_stamp_sees_a_package_installed(tmp_path):
    sp = tmp_path / "lib" / "python3.11" / "site-packages"
    sp.mkdir(parents=True)
    before = venv_stamp(tmp_path)
    _touch_later(sp / "__editable__.x.pth", "/work/main\n")
    assert venv_stamp(tmp_path) != before


def test_refresher_drops_caches_only_for_a_new_stamp(monkeypatch, tmp_path):
    drop = tmp_path / "drop_caches"
    drop.write_text("")
    monkeypatch.setattr(agent.Refresher, "DROP_CACHES", str(drop))
    r = agent.Refresher()
    assert r.apply({"stamp": "s1"}) is None
    assert drop.read_text() == "", "the first stamp after boot is current: the shares were just mounted"
    assert r.apply({"stamp": "s1"}) is None and drop.read_text() == ""
    assert r.apply(None) is None and drop.read_text() == ""
    assert r.apply({"stamp": "s2", "mounts": [["repo", "/x", "o"]]}) is None  # an older client's extra key
    assert drop.read_text() == "2\n"
    assert r.stamp == "s2"
    assert r.apply({"stamp": 3}) == "bad refresh request"
    assert r.apply(["s3"]) == "bad refresh request"


def test_a_failed_drop_is_reported_and_retried_next_time(monkeypatch, tmp_path):
    monkeypatch.setattr(agent.Refresher, "DROP_CACHES", str(tmp_path / "no" / "such"))
    r = agent.Refresher()
    assert r.apply({"stamp": "s1"}) is None
    msg = r.apply({"stamp": "s2"})
    assert "dropping the lab's caches" in msg
    assert r.stamp == "s1"


def test_a_lab_serving_another_checkout_is_refused_clearly(tmp_path, monkeypatch):
    from vmm import paths
    from vmm.errors import MMError
    from vmm.lab.lab import Lab

    lab = Lab.__new__(Lab)
    lab.dir = tmp_path
    (tmp_path / "lab.json").write_text(json.dumps({"port": 1, "checkout": "/elsewhere/clone"}))
    with pytest.raises(MMError) as err:
        lab._check_checkout()
    assert "/elsewhere/clone" in str(err.value) and str(paths.REPO_ROOT) in str(err.value)
    (tmp_path / "lab.json").write_text(json.dumps({"port": 1, "checkout": str(paths.REPO_ROOT)}))
    lab._check_checkout()
    (tmp_path / "lab.json").write_text(json.dumps({"port": 1}))  # booted by older code: not known
    lab._check_checkout()
