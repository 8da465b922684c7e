"""The `mm` launcher setup.sh writes (write_launcher): python -S, with the checkout and
the venv's site-packages put on sys.path by the launcher itself."""
from __future__ import annotations

import subprocess

import pytest

from vmm.paths import REPO_ROOT

LAUNCHER = REPO_ROOT / ".venv" / "bin" / "mm"


@pytest.fixture
def launcher():
    if not LAUNCHER.exists() or "write_launcher" not in LAUNCHER.read_text():
        pytest.skip("no launcher from setup.sh in this checkout's .venv (run ./setup.sh setup)")
    return str(LAUNCHER)


def test_it_starts_python_without_site(launcher):
    first = LAUNCHER.read_text().splitlines()[0]
    assert first.startswith("#!") and first.endswith(" -S")


def test_commands_find_the_checkout_and_third_party_packages(launcher):
    version = subprocess.run([launcher, "--version"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert version.returncode == 0 and version.stdout.startswith("mm "), version.stderr
    # --help builds the typer app: typer and click come from the venv's site-packages
    helped = subprocess.run([launcher, "image", "--help"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert helped.returncode == 0 and "pull" in helped.stdout, helped.stderr
