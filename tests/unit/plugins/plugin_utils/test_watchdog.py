# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugin_utils.watchdog.judge_stop: what the lock step's release says of the watchdog's stop."""

from __future__ import annotations

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.watchdog import judge_stop


@pytest.mark.parametrize("word", ["stopped", "none"])
def test_a_watchdog_that_ended_or_none_says_nothing_more(word: str) -> None:
    assert judge_stop(word, "r1") == ("", "")


def test_a_killed_watchdog_is_an_action_line() -> None:
    line, problem = judge_stop("killed", "r1")
    assert line == "the watchdog of run r1 did not end within 5 s of SIGTERM: SIGKILL ended it" and problem == ""


@pytest.mark.parametrize(("word", "says"), [
    ("alive", "the lock is released, but the device-side watchdog of run r1 is still running after SIGTERM and SIGKILL"),
    ("lock-held", "the lock is released and the device-side watchdog of run r1 ended, but /var/lock/resinhup.lock is still held 10 s later"),
    ("gibberish", "printed 'gibberish', not one of stopped, killed, alive, lock-held, none"),
])
def test_a_watchdog_not_stopped_is_a_problem_naming_it(word: str, says: str) -> None:
    line, problem = judge_stop(word, "r1")
    assert line == "" and says in problem, problem
