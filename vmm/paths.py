"""Where mm keeps things: the cache (slow, rebuildable results) and the state (machines, leases).

MM_CACHE overrides the cache (default ~/.cache/mm); MM_STATE overrides the state
directory (default /var/lib/mm for root, $XDG_DATA_HOME/mm otherwise).
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    env = os.environ.get("MM_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mm"


def state_dir() -> Path:
    env = os.environ.get("MM_STATE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/mm")
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "mm"


def ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
