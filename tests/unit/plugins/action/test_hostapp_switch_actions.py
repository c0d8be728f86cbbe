# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The switch steps' action plugins on a simulated balenaOS (hostapp) device: the new OS's hooks did
the switch (bootfiles and bootenv armed never apply anything), rolled_back runs the running OS's
hooks, health never commits while the device's rollback-health is armed and rolls back with the
previous OS's hooks. The device is test_switch_actions.Device with the hooks scripts answered from
the model (switch_model.Model.run_hooks)."""

from __future__ import annotations

import json
import typing as t

import pytest
from test_switch_actions import Clock, Device, step

from ansible_collections.osfleet.hup.plugins.action.bootenv import ActionModule as BootenvAction
from ansible_collections.osfleet.hup.plugins.action.bootfiles import ActionModule as BootfilesAction
from ansible_collections.osfleet.hup.plugins.action.health import ActionModule as HealthAction
from ansible_collections.osfleet.hup.plugins.action.lock import ActionModule as LockAction
from ansible_collections.osfleet.hup.plugins.action.reboot import ActionModule as RebootAction
from ansible_collections.osfleet.hup.plugins.plugin_utils import shell
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import CommandResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, PlanError
from switch_model import Model  # pylint: disable=wrong-import-order


class HostappDevice(Device):
    """A balenaOS device: the hooks scripts run the model's hooks; ``hooks_rc`` makes them fail."""

    def __init__(self, model: Model, clock: Clock, hooks_rc: int = 0, **kw: t.Any) -> None:
        super().__init__(model, clock, **kw)
        self.hooks_rc = hooks_rc
        self.hooks_runs: list[str] = []
        self.disarm_hooks = False

    def run(self, script: str | shell.Script, *, check: bool = True, what: str | None = None, **params: object) -> CommandResult:
        loaded = shell.load(script) if isinstance(script, str) else script
        if loaded.name in ("current_hooks", "previous_hooks"):
            loaded.command(**params)
            self.hooks_runs.append(loaded.name)
            if self.hooks_rc:
                return CommandResult(self.hooks_rc, "", "1-bootfiles: Boot files copy operations will fail with out of space error.\n")
            self.model.run_hooks(0 if loaded.name == "current_hooks" else 1)
            return CommandResult(0, "", "")
        if loaded.name == "lock_step":  # scripts/lock_step.sh: the lock written as given, the keep-back record of the patterns
            loaded.command(**params)
            patterns = t.cast(dict[str, list[str]], params["input"])["patterns"]
            if params["record"]:
                self.model.record_keepback(patterns)
            lock = "" if params["op"] == "remove" else json.dumps({**json.loads(str(params["doc"])), "since": 1})
            kept = str(len(self.model.keepback_record or {})) if params["record"] else ""
            return CommandResult(0, json.dumps({"lock": lock, "watchdog": "none", "keepback": kept}), "")
        if loaded.name == "watchdog_ctl" and params.get("op") == "disarm_hooks":
            self.disarm_hooks = True
            return CommandResult(0, "stored\n", "")
        return super().run(script, check=check, what=what, **params)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def switched(clock: Clock, **kw: t.Any) -> HostappDevice:
    """After the rootfs step's hostapp-update: the new OS's hooks ran (the keep-back record before)."""
    model = Model.fresh(hostapp=True)
    model.record_keepback()
    model.run_hooks(1)
    return HostappDevice(model, clock, **kw)


def test_bootfiles_and_armed_apply_nothing_and_tell_the_watchdog(clock):
    device = switched(clock)
    device.run_id = "r1"
    files = step(BootfilesAction, device)
    armed = step(BootenvAction, device, state="armed")
    assert not files.changed and not armed.changed and device.applied == [] and device.hooks_runs == []
    assert "the new OS's hostapp-update hooks copied them" in files.msg
    assert armed.msg.startswith("verified the switch to resin-rootB")
    assert device.disarm_hooks and device.disarm is None, "the watchdog runs the hooks, not file operations"
    assert any("told the device-side watchdog to put the env back with the running OS's hooks" in a for a in armed.actions)


def test_rolled_back_runs_the_running_os_hooks_once(clock):
    device = switched(clock)
    result = step(BootenvAction, device, state="rolled_back")
    assert result.changed and device.hooks_runs == ["current_hooks"]
    assert [op[1] for ops in device.applied for op in ops] == ["/mnt/state/osfleet-rollback"]
    assert device.model.env() == {"resin_root_part": "2", "upgrade_available": "0"}
    again = step(BootenvAction, device, state="rolled_back")
    assert not again.changed and device.hooks_runs == ["current_hooks"]


def test_rolled_back_fails_with_the_hooks_output_and_records_nothing(clock):
    device = switched(clock, hooks_rc=1)
    with pytest.raises(DeviceError, match=r"the running OS's hooks \(DURING_UPDATE=0 hostapp-update-hooks\) failed \(exit 1\): 1-bootfiles"):
        step(BootenvAction, device, state="rolled_back")
    assert device.applied == []


def booted(clock: Clock, on_probe: t.Callable[[Model, int], None] | None = None) -> HostappDevice:
    device = switched(clock, on_probe=on_probe)
    step(RebootAction, device)
    assert device.model.active == "resin-rootB"
    return device


def test_health_never_commits_while_the_devices_rollback_health_is_armed(clock):
    def testing(model: Model, probes: int) -> None:
        model.rollback_health_state = "testing"
        model.services["rollback-health"] = "active"

    device = booted(clock, on_probe=testing)
    applied = len(device.applied)
    with pytest.raises(DeviceError, match=r"did not settle within the device_timeout: the device's rollback-health has not committed"):
        step(HealthAction, device, expected_version="2.113.0", device_timeout=10)
    assert len(device.applied) == applied and device.model.env()["upgrade_available"] == "1", "the step committed"


def test_health_reports_the_devices_commit(clock):
    def commits_on_third_probe(model: Model, probes: int) -> None:
        if probes == 3:
            model.run_hooks(0)  # rollback-stop and the commit hooks
            model.rollback_health_state = ""  # its state file already gone: the wait says who committed
            model.services["rollback-health"] = "inactive"

    device = booted(clock)
    device.probes = 0
    device.on_probe = commits_on_third_probe
    result = step(HealthAction, device, expected_version="2.113.0")
    assert not result.changed and result.data["committed"] and device.probes == 3
    assert result.data["committed_by"] == "rollback-health" and result.msg == "committed by the device's rollback-health"


def test_health_rolls_back_with_the_previous_os_hooks(clock):
    device = booted(clock)
    device.model.run_hooks(0)  # committed by the device
    device.commands = {"check": 3}
    result = step(HealthAction, device, expected_version="2.113.0", commands=["check"], retries=0)
    assert result.failed and result.changed and result.data["rolled_back"] and result.data["rollback_reason"] == "checks"
    assert device.hooks_runs == ["previous_hooks"] and result.actions[0].startswith("ran the previous OS's hooks")
    assert (device.model.active, device.model.version) == ("resin-rootA", "2.88.4")
    assert device.model.env() == {"resin_root_part": "2", "upgrade_available": "0"}
    assert json.loads(device.model.state["osfleet-rollback"])["reason"] == "checks"
    assert "rolled back to 2.88.4 on resin-rootA" in result.msg


def test_health_rollback_stops_when_the_previous_os_hooks_fail(clock):
    device = booted(clock)
    device.model.run_hooks(0)
    device.commands = {"check": 3}
    device.hooks_rc = 1
    result = step(HealthAction, device, expected_version="2.113.0", commands=["check"], retries=0)
    assert result.failed and not result.data["rolled_back"] and device.model.active == "resin-rootB"
    assert "the previous OS's hooks (DURING_UPDATE=1 hostapp-update-hooks chrooted in the inactive hostapp) failed (exit 1)" in result.msg


def test_the_keep_back_record_holds_the_user_s_extra_keep_files(clock):
    """hup_extra_keep on a balenaOS device: the lock step records those files too, so that the
    boot files' verification sees the new OS's hooks (which know nothing of hup_extra_keep) change one."""
    model = Model.fresh(hostapp=True)
    model.boot["overlays/a.dtbo"] = "the user's own overlay"  # the new OS ships its overlays/a.dtbo
    device = HostappDevice(model, clock)
    taken = step(LockAction, device, state="present", run_id="r1", target_version="2.113.0", watchdog_timeout=0,
                 extra_keep=["overlays/a.dtbo"])
    assert taken.changed and "overlays/a.dtbo" in (model.keepback_record or {}), model.keepback_record
    assert "config.json" in (model.keepback_record or {}), "the built-in keep-back files are recorded as before"
    model.run_hooks(1)
    assert model.boot["overlays/a.dtbo"] == "overlay a"
    with pytest.raises(PlanError, match=r"but on /mnt/boot the keep-back file overlays/a\.dtbo has other contents than before the update"):
        step(BootfilesAction, device, extra_keep=["overlays/a.dtbo"])
