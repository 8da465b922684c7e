"""Keeping the lab's cached view of the code current.

Python start-up in the lab is dominated by file look-ups: every `import` stats and
reads modules over 9p, and each 9p round trip is emulated (TCG). The checkout and the
venv are therefore mounted with `cache=loose` (the guest caches dentries, attributes
and pages and never revalidates them), which cuts a worker's imports roughly in half.
The price of loose caching is staleness: an edit on the host is not seen inside. So
every `mm lab exec` carries a *stamp* of the host's code (newest mtime/ctime and the
number of files, without caches and results), and when it differs from the stamp the
agent last saw, the agent drops the lab kernel's caches (dentries, inodes, pages)
before running the command, so every look-up asks the host again. (Remounting the
shares cannot work: a 9p tag has one channel, held by any process still using the old
mount.) Files open in running processes keep their view; new look-ups see the host as
it is now.

    stamp = code_stamp(REPO_ROOT)                     # host, ~5 ms for this tree
    req["refresh"] = {"stamp": stamp}

The agent's side is `vmm.lab.agent.Refresher` (the agent imports nothing of ours).
"""
from __future__ import annotations

import glob
import hashlib
import os

# Directories whose contents are not code a command imports: skipped by the stamp (the
# host writing .pyc files or benchmark results must not force cache drops).
SKIP_DIRS = frozenset({".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", ".benchmarks", "results", "build"})


def code_stamp(*roots) -> str:
    """A short fingerprint of the trees under `roots` (files and directories): it
    changes when a file is edited, added, removed or renamed."""
    def entries():
        for root in roots:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
                yield from (os.path.join(dirpath, name) for name in filenames + dirnames)
    return _fingerprint(entries())


def venv_stamp(venv) -> str:
    """What a pip install or uninstall changes in a venv: site-packages' own entries (a
    package's files are installed with its entry there)."""
    return _fingerprint(os.path.join(site, name) for site in glob.glob(os.path.join(venv, "lib", "python*", "site-packages"))
                        for name in os.listdir(site))


def _fingerprint(paths) -> str:
    """The newest mtime/ctime among `paths` and their number, hashed short."""
    newest, count = 0, 0
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue  # vanished while we walked: the next stamp sees it
        newest, count = max(newest, st.st_mtime_ns, st.st_ctime_ns), count + 1
    return hashlib.sha256(f"{newest}:{count}".encode()).hexdigest()[:16]
