# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reboot and reconnect (plugin_utils.reconnect) with a scripted session and a fake clock."""

from __future__ import annotations

import typing as t

import pytest
from ansible.errors import AnsibleConnectionFailure

from ansible_collections.osfleet.hup.plugins.plugin_utils import reconnect
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import CommandResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, PlanError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Session:
    """Answers the boot id script from a list of outcomes (str = boot id, Exception = raised)."""

    def __init__(self, clock: Clock, answers: list[t.Any], reboot_error: Exception | None = None) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.reboot_error = reboot_error
        self.calls: list[str] = []
        self.resets = 0
        self.connect_timeout: int | None = None

    def run(self, script: str, *, check: bool = True, what: str | None = None, **params: object) -> CommandResult:
        self.clock.now += 0.1
        assert not params
        if script == "reboot":
            self.calls.append("reboot")
            if self.reboot_error:
                raise self.reboot_error
            return CommandResult(0, "", "")
        assert script == "boot_id"
        self.calls.append("boot_id")
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, CommandResult):
            return answer
        return CommandResult(0, answer + "\n", "")

    def reset_connection(self) -> None:
        self.resets += 1

    def set_connect_timeout(self, seconds: int) -> None:
        self.connect_timeout = seconds


DOWN = AnsibleConnectionFailure("Failed to connect to the host via ssh: Connection refused")


def test_reboot_waits_through_connection_errors_for_a_new_boot_id():
    clock = Clock()
    session = Session(clock, ["old", DOWN, DOWN, CommandResult(1, "", "cat: no such file"), "new"])
    outcome = reconnect.reboot_and_wait(session, "old", timeout=60, connect_timeout=7, clock=clock)
    assert outcome.boot_id == "new" and outcome.boot_id_before == "old"
    assert 1.5 < outcome.elapsed < 3  # five asks, a quarter of a second apart after the first
    assert session.calls[0] == "reboot" and session.connect_timeout == 7
    assert session.resets >= 3  # once after the reboot command, once per connection error


def test_the_new_boot_is_seen_within_a_quarter_of_a_second():
    """The first ask half a second after the reboot command (which returns 0.3 s before the reboot
    starts), then every quarter of a second: here the device answers with its new boot id at the third ask."""
    clock = Clock()
    session = Session(clock, [DOWN, DOWN, "new"])
    outcome = reconnect.reboot_and_wait(session, "old", timeout=60, connect_timeout=7, clock=clock)
    assert outcome.boot_id == "new" and session.calls == ["reboot", "boot_id", "boot_id", "boot_id"]
    assert outcome.elapsed == pytest.approx(0.1 + 0.5 + 3 * 0.1 + 2 * 0.25)


def test_reboot_times_out_with_the_last_error():
    clock = Clock()
    session = Session(clock, [DOWN])
    with pytest.raises(DeviceError, match=r"did not come back with a new boot id within 30 s \(Failed to connect"):
        reconnect.reboot_and_wait(session, "old", timeout=30, connect_timeout=5, clock=clock)
    assert 30 <= clock.now - 100 < 33


def test_reboot_times_out_when_the_boot_id_never_changes():
    clock = Clock()
    session = Session(clock, ["old"])
    with pytest.raises(DeviceError, match="the boot id did not change"):
        reconnect.reboot_and_wait(session, "old", timeout=10, connect_timeout=5, clock=clock)


def test_a_dropped_connection_during_the_reboot_command_is_expected():
    clock = Clock()
    session = Session(clock, ["new"], reboot_error=AnsibleConnectionFailure("Shared connection closed"))
    assert reconnect.reboot_and_wait(session, "old", timeout=10, connect_timeout=5, clock=clock).boot_id == "new"


def test_a_failing_reboot_command_is_an_error():
    clock = Clock()
    session = Session(clock, ["new"], reboot_error=DeviceError("starting the reboot failed on the device (exit 127): setsid: not found"))
    with pytest.raises(DeviceError, match="setsid: not found"):
        reconnect.reboot_and_wait(session, "old", timeout=10, connect_timeout=5, clock=clock)


def test_no_boot_id_no_reboot():
    with pytest.raises(DeviceError, match="reports no boot id"):
        reconnect.reboot_and_wait(Session(Clock(), ["x"]), "", timeout=10, connect_timeout=5, clock=Clock())


def test_retry_until_retries_transient_errors_only():
    clock = Clock()
    session = Session(clock, ["x"])
    outcomes: list[t.Any] = [DOWN, DeviceError("probe failed"), "done"]

    def flaky() -> str:
        value = outcomes.pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    assert reconnect.retry_until(flaky, session, deadline=clock.now + 60, what="probing", clock=clock) == "done"
    assert session.resets == 2

    def plan_error() -> str:
        raise PlanError("a decision, not a connection problem")

    with pytest.raises(PlanError):
        reconnect.retry_until(plan_error, session, deadline=clock.now + 60, what="probing", clock=clock)

    def down() -> str:
        raise DOWN

    with pytest.raises(DeviceError, match="probing: Failed to connect"):
        reconnect.retry_until(down, session, deadline=clock.now + 5, what="probing", clock=clock)


@pytest.mark.parametrize(
    "exc, transient",
    [(DOWN, True), (DeviceError("x"), True), (OSError("x"), True), (PlanError("x"), False), (ValueError("x"), False)],
)
def test_transient(exc, transient):
    assert reconnect.transient(exc) is transient
