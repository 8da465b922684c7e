"""tests/e2e/conftest.py's HangWatch: a lab whose agent answers no ping for long enough is
stopped (so the command in flight fails at once and is retried on a fresh lab); one that
answers, even slowly now and then, is left alone."""
from __future__ import annotations

import time

from tests.e2e.conftest import HangWatch


class FakeLab:
    def __init__(self) -> None:
        self.downs = 0

    def down(self) -> bool:
        self.downs += 1
        return True


class FakeHost:
    def __init__(self, answers) -> None:
        self._lab = FakeLab()
        self.answers = answers

    def _answers(self, timeout: float) -> bool:
        return self.answers()


def quick(watch: HangWatch) -> HangWatch:
    watch.HUNG_AFTER_S, watch.PING_EVERY_S, watch.PING_TIMEOUT_S = 0.2, 0.02, 0.01
    return watch


def test_a_silent_lab_is_stopped_as_hung():
    host = FakeHost(lambda: False)
    with quick(HangWatch(host)) as watch:
        time.sleep(0.6)
    assert host._lab.downs == 1 and "hung" in watch.stopped


def test_a_lab_that_answers_now_and_then_is_left_running():
    beats = iter(range(10**6))
    host = FakeHost(lambda: next(beats) % 3 == 0)  # two missed pings in three: slow, not hung
    with quick(HangWatch(host)) as watch:
        time.sleep(0.6)
    assert host._lab.downs == 0 and watch.stopped == ""


def test_a_command_that_ends_stops_the_watch_at_once():
    host = FakeHost(lambda: False)
    t0 = time.monotonic()
    with HangWatch(host):
        pass
    assert time.monotonic() - t0 < 1 and host._lab.downs == 0
