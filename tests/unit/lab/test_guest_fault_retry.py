"""tests/e2e/conftest.py's GuestHost.run in the lab: a command under which a guest
triple-faulted is run once more, with a warning; a second fault is returned as it is."""
from __future__ import annotations

import pytest

from tests.e2e.conftest import GUEST_TRIPLE_FAULT, GuestHost


class FakeLab:
    """Answers exec with the next of `results` and records the calls."""

    def __init__(self, results) -> None:
        self.results, self.calls = list(results), 0

    def exec(self, argv, timeout=None, env=None, cwd=None):
        self.calls += 1
        return self.results.pop(0)

    def _request(self, req, timeout=None):
        return {}


FAULT = (0, "line1\nrc=1\n", f"mm: machine x {GUEST_TRIPLE_FAULT}: vCPU 0: triple fault\n")
GOOD = (0, "line1\nrc=0\n", "")


def test_a_guest_fault_is_retried_once_with_a_warning(tmp_path):
    lab = FakeLab([FAULT, GOOD])
    with pytest.warns(UserWarning, match="triple-faulted"):
        r = GuestHost("lab", tmp_path, lab).run(["bash", "-c", "true"])
    assert (lab.calls, r.stdout) == (2, GOOD[1])


def test_a_second_fault_is_the_result(tmp_path):
    lab = FakeLab([FAULT, FAULT])
    with pytest.warns(UserWarning):
        r = GuestHost("lab", tmp_path, lab).run(["bash", "-c", "true"])
    assert lab.calls == 2 and GUEST_TRIPLE_FAULT in r.stderr


def test_other_failures_are_not_retried(tmp_path):
    lab = FakeLab([(1, "", "error: no such image\n")])
    r = GuestHost("lab", tmp_path, lab).run(["bash", "-c", "false"])
    assert (lab.calls, r.returncode) == (1, 1)
