# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The action base (plugin_utils.action.OsfleetAction.run): one failure convention, the ``reason``
key, and the run log on the device on every path, failures included."""

from __future__ import annotations

import json
import shlex
import subprocess
import typing as t
from types import SimpleNamespace

import pytest
from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure

from ansible_collections.osfleet.hup.plugins.plugin_utils import shell
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import (
    RUN_LOG_CARRY_LIMIT, RUN_LOG_DEFERRED_FACT, Carried, DeviceSession, OsfleetAction, StepResult, deferred_lines,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, PlanError, error_text

DOC = """
module: fake
options:
  size:
    type: int
    default: 3
extends_documentation_fragment:
  - osfleet.hup.common
"""

LOG = "/mnt/data/balenahup/osfleet-hup.r1.log"


class Fake(OsfleetAction):
    """A step whose outcome a test sets; the device answers every script with exit 0."""

    DOCUMENTATION = DOC

    def __init__(self, outcome: t.Any, args: dict[str, t.Any], check_mode: bool = False, log_fails: bool = False) -> None:
        # pylint: disable-next=super-init-not-called
        self._task = SimpleNamespace(args=args, action="osfleet.hup.fake", check_mode=check_mode, diff=True, async_val=0)
        self._connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/tmp/x"))
        self._load_name = "osfleet.hup.fake"
        self._VALID_ARGS = frozenset()
        self.outcome = outcome
        self.log_fails = log_fails
        self.commands: list[list[str]] = []
        self.stdins: list[str | None] = []
        self.seen_args: dict[str, t.Any] = {}

    def _low_level_execute_command(self, cmd: str, sudoable: bool = True, in_data: str | None = None) -> dict[str, t.Any]:
        argv = shlex.split(cmd)
        self.commands.append(argv)
        self.stdins.append(in_data)
        if self.log_fails:
            raise AnsibleConnectionFailure("the device is gone")
        return {"rc": 0, "stdout": "", "stderr": ""}

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        self.seen_args = args
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def log_entries(self) -> list[dict[str, t.Any]]:
        """What the run_log script was asked to append (path, no lines carried, the entry on its stdin)."""
        entries = []
        for argv, stdin in zip(self.commands, self.stdins):
            argv = argv[argv.index("sh"):]  # after the run id and the timeout (DeviceSession.device_command)
            assert argv[:2] == ["sh", "-c"] and argv[3:4] == ["osfleet"]
            assert argv[4:] == [LOG, ""]
            entries.append(json.loads(t.cast(str, stdin)))
        return entries


def run(plugin: Fake) -> dict[str, t.Any]:
    return plugin.run(task_vars={"inventory_hostname": "dev1"})


def test_success_keeps_msg_and_logs_the_step():
    plugin = Fake(StepResult(changed=True, actions=["took the lock"], msg="note", data={"lock": {"owner": "me"}}), {"run_log": LOG})
    result = run(plugin)
    assert result == {"changed": True, "actions": ["took the lock"], "msg": "note", "lock": {"owner": "me"}}
    assert plugin.seen_args["size"] == 3, "arguments are validated against DOCUMENTATION, defaults included"
    (entry,) = plugin.log_entries()
    assert entry["step"] == "fake" and entry["changed"] is True and entry["failed"] is False
    assert entry["actions"] == ["took the lock"] and entry["msg"] == "note" and entry["time"].endswith("Z")


def test_a_raised_error_is_a_failed_result_with_its_data_and_is_logged():
    plugin = Fake(PlanError("update already in progress: lock held by bob", lock={"owner": "bob"}, previous=None), {"run_log": LOG})
    result = run(plugin)
    assert result["failed"] is True and result["changed"] is False
    assert result["msg"] == "dev1: update already in progress: lock held by bob"
    assert result["reason"] == "update already in progress: lock held by bob"
    assert result["lock"] == {"owner": "bob"} and result["previous"] is None and result["actions"] == []
    (entry,) = plugin.log_entries()
    assert entry["failed"] is True and entry["changed"] is False and entry["msg"] == "update already in progress: lock held by bob"


def test_a_failed_step_result_gets_the_reason_key():
    plugin = Fake(StepResult(changed=True, failed=True, actions=["rolled back"], msg="health checks failed"), {"run_log": LOG})
    result = run(plugin)
    assert (result["failed"], result["changed"], result["msg"], result["reason"]) == (True, True, "dev1: health checks failed", "health checks failed")
    (entry,) = plugin.log_entries()
    assert entry["failed"] is True and entry["changed"] is True and entry["actions"] == ["rolled back"]


def test_a_connection_failure_is_a_failed_result_and_a_lost_log_line_does_not_matter():
    plugin = Fake(AnsibleConnectionFailure("ssh: connect to host 127.0.0.1 port 22301: Connection refused"), {"run_log": LOG}, log_fails=True)
    result = run(plugin)
    assert result["failed"] is True and result["unreachable"] is False
    assert result["reason"] == "the device was unreachable: ssh: connect to host 127.0.0.1 port 22301: Connection refused"
    assert result["msg"] == "dev1: " + result["reason"]
    assert len(plugin.commands) == 1, "the run log was tried"


class ActedThenLost(Fake):
    """A step that sent its act, then lost the device."""

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        self.note_failure(acted=True)
        raise self.outcome


def test_a_failed_result_says_how_far_the_step_got():
    """The role's rescue reads ``acted`` (plugin_utils/rescue.py): a lost device after the act may have switched."""
    lost = run(ActedThenLost(AnsibleConnectionFailure("Data could not be sent to remote host"), {}))
    assert lost["failed"] is True and lost["acted"] is True, lost
    refused = run(ActedThenLost(DeviceError("hostapp-update failed"), {}))
    assert refused["failed"] is True and refused["acted"] is True, refused
    assert "acted" not in run(Fake(AnsibleConnectionFailure("Connection refused"), {})), "a step that did not act says nothing"


def test_a_connection_failure_at_first_contact_is_unreachable_not_failed():
    plugin = Fake(AnsibleConnectionFailure("Failed to connect to the host via ssh: ssh: connect to host 127.0.0.9 port 22: Connection refused"),
                  {"run_log": LOG})
    plugin.FIRST_CONTACT = True
    result = run(plugin)
    assert result["unreachable"] is True and "failed" not in result and result["changed"] is False
    assert result["msg"] == ("dev1: the device was unreachable: Failed to connect to the host via ssh: ssh: connect to host 127.0.0.9 port 22: "
                             "Connection refused")
    assert plugin.commands == [], "no run log for a device that cannot be reached"


def test_a_connection_error_never_ends_in_an_empty_string_after_a_colon():
    result = run(Fake(AnsibleConnectionFailure("Failed to connect to the host via ssh: "), {}))
    reason = "the device was unreachable: Failed to connect to the host via ssh (no detail given)"
    assert result["reason"] == reason and result["msg"] == "dev1: " + reason
    assert error_text(TimeoutError()) == "TimeoutError (no detail given)"
    assert error_text(OSError("reset by peer:\n")) == "reset by peer (no detail given)"


def test_a_script_that_failed_without_output_says_so():
    class Silent(Fake):
        def _low_level_execute_command(self, cmd: str, sudoable: bool = True, in_data: str | None = None) -> dict[str, t.Any]:
            return {"rc": 3, "stdout": "", "stderr": " "}

    class Step(Silent):
        def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
            session.run("run_log", path="/x", lines="", entry="{}")
            return StepResult()

    result = run(Step(None, {}))
    assert result["reason"] == "run_log failed on the device (exit 3), no output", result


def test_a_long_failure_keeps_its_beginning_and_its_end():
    """The device's message is cut to a bounded length around the middle, never at its start: the
    reason comes first in a script's message (CI lost "another fetch" off the front of one)."""
    message = "another fetch or root write is still running on the device: held by " + "x" * 2000 + " run again"

    class Loud(Fake):
        def _low_level_execute_command(self, cmd: str, sudoable: bool = True, in_data: str | None = None) -> dict[str, t.Any]:
            return {"rc": 1, "stdout": "", "stderr": message + "\n"}

    class Step(Loud):
        def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
            session.run("run_log", path="/x", lines="", entry="{}", what="writing resin-rootB")
            return StepResult()

    reason = run(Step(None, {}))["reason"]
    assert reason.startswith("writing resin-rootB failed on the device (exit 1): another fetch or root write is still running"), reason
    assert reason.endswith("x run again") and " ... " in reason and len(reason) < 900, reason


FULL_DEVICE = {
    "version": "2.113.0", "device_type": "genericx86-64-ext", "active_root": "resin-rootB", "inactive_root": "resin-rootA",
    "inactive_version": "2.88.4", "boot_id": "b1", "uuid": "c83e", "arch": "amd64", "lock": None, "rolled_back": [],
    "free_kib": {"boot": 28885, "data": 218204}, "services": {"balena": "active"}, "active_stamp": {"digest": "sha256:" + "c" * 64},
}


def test_a_failed_result_carries_a_device_summary_not_the_whole_state():
    data = {"device": FULL_DEVICE, "release": {"version": "2.88.4", "device_type": "genericx86-64-ext", "digest": "sha256:" + "a" * 64},
            "registries": [{"name": "primary", "ok": True, "error": ""}, {"name": "fallback", "ok": False, "error": "timeout"}],
            "phase": "needed", "problems": ["downgrade"]}
    result = run(Fake(StepResult(failed=True, msg="preflight failed: downgrade", data=data), {}))
    assert result["device"] == {"version": "2.113.0", "device_type": "genericx86-64-ext", "active_root": "resin-rootB",
                                "inactive_root": "resin-rootA", "inactive_version": "2.88.4", "boot_id": "b1"}
    assert result["release"] == {"version": "2.88.4", "device_type": "genericx86-64-ext"}
    assert result["registries"] == [{"name": "fallback", "ok": False, "error": "timeout"}]
    assert (result["phase"], result["problems"], result["reason"]) == ("needed", ["downgrade"], "preflight failed: downgrade")
    # what a refusal is about stays: the lock's holder, the releases rolled back on the device
    held = {**FULL_DEVICE, "lock": {"owner": "bob"}, "rolled_back": [{"version": "2.114.1", "reason": "health"}]}
    result = run(Fake(PlanError("lock held by bob", device=held, rolled_back=True, rollback_reason="health", watchdog_fired="x"), {}))
    assert result["device"]["lock"] == {"owner": "bob"} and result["device"]["rolled_back"] == [{"version": "2.114.1", "reason": "health"}]
    assert (result["rolled_back"], result["rollback_reason"], result["watchdog_fired"]) == (True, "health", "x")
    # a successful result keeps the whole state
    assert run(Fake(StepResult(data={"device": FULL_DEVICE}), {}))["device"] == FULL_DEVICE


def test_no_run_log_without_the_option_or_in_check_mode():
    for plugin in (Fake(DeviceError("x"), {}), Fake(StepResult(changed=True), {"run_log": LOG}, check_mode=True)):
        run(plugin)
        assert plugin.commands == []


def test_invalid_arguments_fail_as_ansible_does_and_are_logged():
    plugin = Fake(StepResult(), {"run_log": LOG, "size": "many"})
    with pytest.raises(AnsibleActionFail, match="size"):
        run(plugin)
    (entry,) = plugin.log_entries()
    assert entry["failed"] is True and "size" in entry["msg"]


def test_read_only_steps_never_report_a_change():
    plugin = Fake(StepResult(changed=True), {})
    plugin.READ_ONLY = True
    assert run(plugin)["changed"] is False


def test_every_script_is_bounded_on_the_device_and_carries_the_run_id():
    plugin = Fake(StepResult(), {"run_log": LOG, "run_id": "r-1", "exec_timeout": 5})
    run(plugin)
    (argv,) = plugin.commands
    assert argv[:7] == ["OSFLEET_RUN_ID=r-1", "OSFLEET_EXEC_TIMEOUT=5", "timeout", "-k", "10", "5", "sh"]
    plugin = Fake(StepResult(), {"run_log": LOG, "exec_timeout": 0})
    run(plugin)
    assert plugin.commands[0][:2] == ["sh", "-c"], "exec_timeout 0: no bound, and no run id without the option"


def test_a_script_that_timeout_ended_says_so():
    class Slow(Fake):
        def _low_level_execute_command(self, cmd: str, sudoable: bool = True, in_data: str | None = None) -> dict[str, t.Any]:
            return {"rc": 124, "stdout": "", "stderr": ""}

        def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
            session.run("boot_id", what="reading the boot id")
            return StepResult()

    result = run(Slow(StepResult(), {"exec_timeout": 7}))
    assert result["reason"] == "reading the boot id did not finish within 7 s on the device (exec_timeout; exit 124), no output"


def test_a_script_refused_because_the_watchdog_gave_the_run_up_says_what_the_watchdog_did():
    fired = "no word from the controller for 21 s (watchdog bound 20 s): put the env and boot files back for the running OS"
    stderr = f"the device's watchdog gave this run up ({fired}); run again with the same run id (hup_run_id=r-1) to resume\n"

    class GaveUp(Fake):
        def _low_level_execute_command(self, cmd: str, sudoable: bool = True, in_data: str | None = None) -> dict[str, t.Any]:
            return {"rc": 75, "stdout": "", "stderr": stderr}

        def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
            session.run("boot_id", what="reading the boot id", check=False)  # also where the caller reads rc itself
            return StepResult()

    result = run(GaveUp(StepResult(), {"run_id": "r-1"}))
    assert result["failed"] and result["watchdog_fired"] == fired, result
    assert result["reason"].startswith("reading the boot id refused to run: the device's watchdog gave this run up (no word"), result
    # without the run id (a step outside a run), exit 75 is an ordinary exit code
    result = run(GaveUp(StepResult(), {}))
    assert not result.get("failed") and "watchdog_fired" not in result, result


# --- run_log_defer: a step's line rides on the next step's first command ---------------------------


class Local(Fake):
    """A step whose commands run in a local shell (the device's scripts are POSIX sh), its run log
    under a temporary directory; ``script`` is what the step runs on the device (with stdin)."""

    def __init__(self, outcome: t.Any, args: dict[str, t.Any], facts: list[dict[str, str]] | None = None, script: bool = True,
                 check_mode: bool = False, gone: bool = False) -> None:
        super().__init__(outcome, args, check_mode=check_mode)
        self.facts = facts
        self.script = script
        self.gone = gone
        self.stdout: list[str] = []

    def _low_level_execute_command(self, cmd: str, sudoable: bool = True, in_data: str | None = None) -> dict[str, t.Any]:
        self.commands.append(shlex.split(cmd))
        self.stdins.append(in_data)
        if self.gone:
            raise AnsibleConnectionFailure("the device is gone")
        done = subprocess.run(["sh", "-c", cmd], input=in_data, capture_output=True, text=True, check=False, timeout=30)
        self.stdout.append(done.stdout)
        return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        if self.script:
            # a script of the step that reads its standard input: the carried lines leave it alone
            session.run(shell.Script("echo", "", (), None, "cat; echo ran"), what="the step's script")
        return super().step(args, session)

    def run_local(self) -> dict[str, t.Any]:
        task_vars: dict[str, t.Any] = {"inventory_hostname": "dev1"}
        if self.facts is not None:
            task_vars["ansible_facts"] = {RUN_LOG_DEFERRED_FACT: self.facts}
        return self.run(task_vars=task_vars)


def read_log(path: str) -> list[dict[str, t.Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def handed_on(result: dict[str, t.Any]) -> list[dict[str, str]] | None:
    return result.get("ansible_facts", {}).get(RUN_LOG_DEFERRED_FACT)


def test_a_deferred_line_rides_on_the_next_steps_first_command(tmp_path):
    log = str(tmp_path / "logs" / "osfleet-hup.r1.log")
    first = Local(StepResult(changed=True, actions=["stopped the supervisor"]), {"run_log": log, "run_log_defer": True}, script=False)
    result = first.run_local()
    assert first.commands == [] and not (tmp_path / "logs").exists(), "no command of its own for the line"
    (left,) = handed_on(result)
    assert left["path"] == log and json.loads(left["line"])["actions"] == ["stopped the supervisor"]
    # the next step: its first command appends the line first, then runs the step's script with its stdin
    second = Local(StepResult(changed=True, actions=["fetched"]), {"run_log": log, "run_log_defer": True}, facts=handed_on(result))
    second.stdins_for_script = None
    result = second.run_local()
    assert len(second.commands) == 1, "one command: the line carried, then the step's script"
    assert second.stdout == ["ran\n"], "the script's standard input is its own, its output alone"
    assert [e["actions"] for e in read_log(log)] == [["stopped the supervisor"]]
    (left,) = handed_on(result)
    assert json.loads(left["line"])["actions"] == ["fetched"]
    # a step that does not defer (the run log's end) appends what it was handed, then its own line
    last = Local(StepResult(changed=True, actions=["started the supervisor"]), {"run_log": log}, facts=handed_on(result), script=False)
    result = last.run_local()
    assert [e["actions"] for e in read_log(log)] == [["stopped the supervisor"], ["fetched"], ["started the supervisor"]]
    assert handed_on(result) == [], "the fact is emptied once the lines were written"
    assert len(last.commands) == 1


def test_a_failure_is_written_at_once_after_the_lines_handed_to_it(tmp_path):
    log = str(tmp_path / "osfleet-hup.r1.log")
    ok = Local(StepResult(changed=True, actions=["took the lock"]), {"run_log": log, "run_log_defer": True}, script=False).run_local()
    failed = Local(DeviceError("the fetch failed"), {"run_log": log, "run_log_defer": True}, facts=handed_on(ok), script=False)
    result = failed.run_local()
    assert [(e["failed"], e["msg"] or e["actions"]) for e in read_log(log)] == [(False, ["took the lock"]), (True, "the fetch failed")]
    assert handed_on(result) == [] and len(failed.commands) == 1, "the lines handed on and the failure in one command"


def test_lines_that_did_not_reach_the_device_are_handed_on_again(tmp_path):
    log = str(tmp_path / "osfleet-hup.r1.log")
    ok = Local(StepResult(changed=True, actions=["armed"]), {"run_log": log, "run_log_defer": True}, script=False).run_local()
    lost = Local(AnsibleConnectionFailure("ssh: Connection refused"), {"run_log": log, "run_log_defer": True}, facts=handed_on(ok), gone=True)
    result = lost.run_local()
    assert result["failed"] and [json.loads(e["line"])["failed"] for e in handed_on(result)] == [False, True], \
        "the armed line and the failure wait for the next step (the rescue)"
    rescue = Local(StepResult(changed=True, actions=["disarmed"]), {"run_log": log, "run_log_defer": True}, facts=handed_on(result))
    rescue.run_local()
    assert [e["failed"] for e in read_log(log)] == [False, True]


def test_check_mode_writes_the_lines_it_was_handed_and_defers_nothing(tmp_path):
    log = str(tmp_path / "osfleet-hup.r1.log")
    ok = Local(StepResult(changed=True, actions=["armed"]), {"run_log": log, "run_log_defer": True}, script=False).run_local()
    dry = Local(StepResult(changed=True), {"run_log": log, "run_log_defer": True}, facts=handed_on(ok), script=False, check_mode=True)
    assert handed_on(dry.run_local()) == [] and [e["actions"] for e in read_log(log)] == [["armed"]]


def test_a_long_line_is_written_at_once(tmp_path):
    log = str(tmp_path / "osfleet-hup.r1.log")
    actions = [f"copied /mnt/boot/overlays/file-{i}.dtbo" for i in range(1000)]
    step = Local(StepResult(changed=True, actions=actions), {"run_log": log, "run_log_defer": True}, script=False)
    result = step.run_local()
    assert "ansible_facts" not in result and read_log(log)[0]["actions"] == actions
    assert RUN_LOG_CARRY_LIMIT < 128 * 1024 - 40 * 1024, "room on the command line for the longest script"


def test_a_failed_steps_facts_are_not_kept_so_the_next_step_is_handed_the_lines_again(tmp_path):
    """Ansible keeps no fact of a failed result: the rescue's first step is handed the lines the failed
    step already wrote (its first command carried them); the device appends each once, by its id."""
    log = str(tmp_path / "osfleet-hup.r1.log")
    ok = Local(StepResult(changed=True, actions=["stopped the supervisor"]), {"run_log": log, "run_log_defer": True}, script=False).run_local()
    failed = Local(DeviceError("the fetch failed"), {"run_log": log, "run_log_defer": True}, facts=handed_on(ok))
    failed.run_local()  # its script carried the line, then it failed: its result's fact is dropped
    rescue = Local(StepResult(changed=True, actions=["disarmed"]), {"run_log": log}, facts=handed_on(ok))
    rescue.run_local()
    assert [e["actions"] or e["msg"] for e in read_log(log)] == [["stopped the supervisor"], "the fetch failed", ["disarmed"]]
    assert (tmp_path / "osfleet-hup.r1.log.carried").read_text() == handed_on(ok)[0]["id"] + "\n"


def test_the_lines_handed_on_must_be_one_line_each_with_a_path_and_an_id():
    good = {"path": LOG, "line": "{}", "id": "0123456789abcdef"}
    facts = [good, {**good, "path": ""}, {**good, "line": "a\nb"}, {**good, "line": "a\tb"}, {**good, "id": "x; reboot"}, "x", {"path": LOG}]
    assert deferred_lines({"ansible_facts": {RUN_LOG_DEFERRED_FACT: facts}}) == [Carried(LOG, "{}", "0123456789abcdef")]
    assert deferred_lines({}) == [] and deferred_lines({"ansible_facts": {RUN_LOG_DEFERRED_FACT: "x"}}) == []


def test_the_carried_lines_are_bounded_and_quoted(tmp_path):
    session = DeviceSession(SimpleNamespace(), "dev1")
    session.exec_timeout = 9
    marker = tmp_path / "ran"
    tricky = json.dumps({"msg": f"$(touch {marker}); `touch {marker}` '\\\"; touch {marker}"})
    log, other = str(tmp_path / "a.log"), str(tmp_path / "b" / "b.log")
    lines = [Carried.new(log, tricky), Carried.new(log, "{}"), Carried.new(other, "{}")]
    line = session.carry_command(lines)
    assert line.startswith("timeout -k 10 9 sh -c ") and line.count("timeout -k 10 9 sh -c ") == 2, "one bounded append a run log"
    subprocess.run(["sh", "-c", line], check=True, timeout=30)
    assert not marker.exists(), "a line is a value, never code"
    assert read_log(log) == [json.loads(tricky), {}] and read_log(other) == [{}]
    subprocess.run(["sh", "-c", session.carry_command(lines[1:])], check=True, timeout=30)
    assert read_log(log) == [json.loads(tricky), {}] and read_log(other) == [{}], "each line once"
