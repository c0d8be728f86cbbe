# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The switch steps' action plugins (probe → decide → act → verify) against a simulated device.

``Device`` answers the scripts the steps run (by name, with their parameters) the way a device
would: the probe from the model's files, the apply script by applying the operations, the reboot by
booting the root the env names, user commands from a table. The model is tests/unit/plugins/plugin_utils/switch_model.py.
"""

from __future__ import annotations

import hashlib
import json
import sys
import typing as t
from pathlib import Path
from types import SimpleNamespace

import pytest

from ansible_collections.osfleet.hup.plugins.action.bootenv import ActionModule as BootenvAction
from ansible_collections.osfleet.hup.plugins.action.bootfiles import ActionModule as BootfilesAction
from ansible_collections.osfleet.hup.plugins.action.health import ActionModule as HealthAction
from ansible_collections.osfleet.hup.plugins.action.reboot import ActionModule as RebootAction
from ansible_collections.osfleet.hup.plugins.action.run_log import ActionModule as RunLogAction
from ansible_collections.osfleet.hup.plugins.action.supervisor import ActionModule as SupervisorAction
from ansible_collections.osfleet.hup.plugins.plugin_utils import shell
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import CommandResult, argspec_from_doc
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, PlanError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin_utils"))
from switch_model import DIGEST_NEW, Model  # noqa: E402  pylint: disable=wrong-import-position


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Device:
    """A DeviceSession stand-in backed by a Model."""

    def __init__(self, model: Model, clock: Clock, commands: dict[str, int] | None = None,
                 on_probe: t.Callable[[Model, int], None] | None = None) -> None:
        self.model = model
        self.clock = clock
        self.commands = commands or {}
        self.on_probe = on_probe
        self.probes = 0
        self.applied: list[list[tuple[str, str, str]]] = []
        self.command_runs: list[str] = []
        self.host = "dev1"
        self.run_id: str | None = None
        self.exec_timeout: int | None = None
        #: the commands the device ran (an act and its probe in one round trip count once)
        self.round_trips = 0
        #: systemctl says it started or stopped the supervisor, which stays as it was
        self.supervisor_sticks = False
        #: the seconds each health_wait call waited on the device
        self.waits: list[float] = []
        #: the device moves while health_wait waits: how long it waited until then (at most the seconds given)
        self.on_wait: t.Callable[[Model, float], float] | None = None
        #: the file operations handed to the run's watchdog (watchdog_ctl op=disarm)
        self.disarm: list[tuple[str, str, str]] | None = None

    def run(self, script: str | shell.Script, *, check: bool = True, what: str | None = None, **params: object) -> CommandResult:
        loaded = shell.load(script) if isinstance(script, str) else script
        loaded.command(**params)  # a missing or an unknown parameter fails as on a real session
        if loaded.parts:
            # an act and then the probe in one round trip (shell.then_probe): the probe reads the model after the act
            self.round_trips += 1
            act, then = loaded.parts
            done = self.run(act, check=check, what=what, **{k: params[k] for k in act.names})
            if done.rc:
                return done
            probed = self.run(then, check=check, what=what, **{k: params[k] for k in then.names})
            self.round_trips -= 2
            return CommandResult(0, shell.join_then_probe(done.stdout, probed.stdout), done.stderr + probed.stderr)
        self.clock.now += 0.05
        self.round_trips += 1
        if loaded.name.startswith("probe"):
            self.probes += 1
            if self.on_probe:
                self.on_probe(self.model, self.probes)
            raw = self.model.raw()
            raw["extra"] = json.dumps(self.model.switch_raw(listed=params["want"] == "files")) if loaded.name == "probe+probe_switch" else ""
            return CommandResult(0, json.dumps(raw), "")
        if loaded.name == "apply":
            ops = [tuple(op) for op in t.cast(list[list[str]], params["ops"])]
            self.applied.append(ops)  # type: ignore[arg-type]
            self.model.apply(ops)  # type: ignore[arg-type]
            return CommandResult(0, "", "")
        if loaded.name == "reboot":
            self.model.reboot()
            return CommandResult(0, "", "")
        if loaded.name == "boot_id":
            return CommandResult(0, self.model.boot_id + "\n", "")
        if loaded.name == "health_wait":
            # scripts/health_wait.sh: waits (the whole time: the model moves only at a probe) while
            # the model is as the last call left it
            if params["since"] == self.fingerprint() and params["boot"] == self.model.boot_id:
                seconds = float(t.cast(int, params["seconds"]))
                waited = self.on_wait(self.model, seconds) if self.on_wait else seconds
                self.clock.now += waited
                self.waits.append(waited)
            return CommandResult(0, self.fingerprint() + "\n", "")
        if loaded.name == "supervisor" and params["op"] in ("stop", "start"):
            if self.supervisor_sticks:
                return CommandResult(0, "", "")
            self.model.services["balena-supervisor"] = "active" if params["op"] == "start" else "inactive"
            return CommandResult(0, "", "")
        if loaded.name == "watchdog_ctl" and params["op"] == "disarm":
            self.disarm = [tuple(op) for op in t.cast(list[list[str]], params["ops"])]  # type: ignore[misc]
            return CommandResult(0, "stored\n", "")
        raise AssertionError(f"the device does not know the script {loaded.name}")

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.model.raw(), sort_keys=True).encode()).hexdigest()[:16]

    def run_json(self, script: str | shell.Script, *, what: str | None = None, **params: object) -> dict[str, t.Any]:
        return self.run(script, what=what, **params).json()

    def run_command(self, command: str, *, check: bool = True, what: str = "") -> CommandResult:
        self.clock.now += 0.05
        self.round_trips += 1
        self.command_runs.append(command)
        rc = self.commands.get(command, 0)
        result = CommandResult(rc, f"ran {command}\n", "" if rc == 0 else "failed\n")
        if check and rc:
            raise DeviceError(f"{what} failed")
        return result

    def reset_connection(self) -> None:
        pass

    def set_connect_timeout(self, seconds: int) -> None:
        pass


def action(cls: type, clock: Clock, check_mode: bool = False) -> t.Any:
    plugin = cls.__new__(cls)
    plugin._task = SimpleNamespace(check_mode=check_mode, diff=True)  # pylint: disable=protected-access
    plugin.clock = clock
    return plugin


def args_for(cls: type, **given: t.Any) -> dict[str, t.Any]:
    """The module's arguments with their documented defaults (what validate_argument_spec gives)."""
    spec = argspec_from_doc(cls.DOCUMENTATION)
    args = {name: opt.get("default") for name, opt in spec.items()}
    args.update(given)
    return args


def step(cls: type, device: Device, check_mode: bool = False, **given: t.Any) -> t.Any:
    return action(cls, device.clock, check_mode).step(args_for(cls, **given), device)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def staged(clock: Clock, **kw: t.Any) -> Device:
    return Device(Model.fresh(), clock, **kw)


# --- bootfiles / bootenv ---------------------------------------------------------------------------

def test_bootfiles_acts_once_and_verifies(clock):
    device = staged(clock)
    result = step(BootfilesAction, device)
    assert result.changed and "bzImage" in result.data["copied"] and len(device.applied) == 1
    assert device.round_trips == 2, "the probe, then the copy and its verifying probe in one round trip"
    again = step(BootfilesAction, device)
    assert not again.changed and len(device.applied) == 1 and again.actions == []


def test_bootfiles_check_mode_writes_nothing(clock):
    device = staged(clock)
    result = step(BootfilesAction, device, check_mode=True)
    assert result.changed and result.diff and device.applied == []


def test_bootfiles_fails_when_the_device_does_not_converge(clock):
    device = staged(clock)
    device.model.apply = lambda ops: None  # the writes are lost
    with pytest.raises(DeviceError, match="did not converge; still to do: replaced /mnt/boot/EFI/BOOT/bootx64.efi"):
        step(BootfilesAction, device)


def test_bootenv_arm_commit_cycle(clock):
    device = staged(clock)
    step(BootfilesAction, device)
    armed = step(BootenvAction, device, state="armed", expected_digest=DIGEST_NEW)
    assert armed.changed and armed.data["boot_env"]["root"] == "resin-rootB"
    assert not step(BootenvAction, device, state="armed", expected_digest=DIGEST_NEW).changed
    with pytest.raises(PlanError, match="has not booted yet"):
        step(BootenvAction, device, state="committed")
    device.model.reboot()
    trips = device.round_trips
    assert step(BootenvAction, device, state="committed").changed
    assert device.model.env() == {"resin_root_part": "3", "upgrade_available": "0"}
    assert device.round_trips - trips == 2, "the probe, then the write and its verifying probe in one round trip"


def test_bootenv_fails_when_the_write_is_lost(clock):
    """The verify is the probe's reading of the device after the write, not the write's word."""
    device = staged(clock)
    step(BootfilesAction, device)
    device.model.apply = lambda ops: None  # the writes are lost
    with pytest.raises(DeviceError, match="the bootloader env did not converge to armed"):
        step(BootenvAction, device, state="armed", expected_digest=DIGEST_NEW)


def test_arming_hands_the_watchdog_the_disarm(clock):
    """A run's arm gives its watchdog the operations of rolled_back: applied (as the watchdog does when
    the controller went away before the reboot), the env names the running root again, unarmed."""
    device = staged(clock)
    before = device.model.env()
    step(BootfilesAction, device)
    armed = step(BootenvAction, device, state="armed", expected_digest=DIGEST_NEW)
    assert device.disarm is None, "no run id: no watchdog to tell"
    device.run_id = "r1"
    again = step(BootenvAction, device, state="armed", expected_digest=DIGEST_NEW)
    assert armed.changed and not again.changed and device.disarm
    assert "told the device-side watchdog how to disarm the switch" in again.actions[-1]
    assert device.model.env()["upgrade_available"] == "1"
    device.model.apply(device.disarm)
    assert device.model.env() == {**before, "upgrade_available": "0"}


# --- reboot ----------------------------------------------------------------------------------------

def test_reboot_only_when_pending(clock):
    device = staged(clock)
    result = step(RebootAction, device)
    assert not result.changed and not result.data["rebooted"] and "nothing pending" in result.msg
    step(BootfilesAction, device)
    step(BootenvAction, device, state="armed")
    assert step(RebootAction, device, check_mode=True).changed and device.model.active == "resin-rootA"
    result = step(RebootAction, device)
    assert result.changed and result.data["device"]["active_root"] == "resin-rootB" and result.data["device"]["version"] == "2.113.0"
    assert result.data["boot_id"] != result.data["boot_id_before"]
    assert result.actions[-1].startswith("booted 2.113.0 from resin-rootB in ")
    assert result.diff["after"].endswith("2.113.0 from resin-rootB\n")


def test_reboot_check_mode_plans_the_reboot_the_arm_would_bring(clock):
    """Issue 8: a dry run of the whole update armed nothing; assume_pending (set by the role from the arm
    step) predicts the reboot the real run does, and only in check mode."""
    device = staged(clock)
    preview = step(RebootAction, device, check_mode=True, assume_pending=True)
    assert preview.changed and preview.data["rebooted"] and preview.data["expected_root"] == "resin-rootB"
    assert preview.diff == {"before": f"boot {device.model.dev().boot_id}: 2.88.4 from resin-rootA\n", "after": "a new boot from resin-rootB\n"}
    assert device.model.active == "resin-rootA"
    real = step(RebootAction, device, assume_pending=True)
    assert not real.changed and not real.data["rebooted"], "outside check mode the device's env decides"


def test_run_log_check_mode_reports_the_append_of_the_real_run(clock):
    """The real run's steps have written the log when it ends, so it appends: check mode says so (changed, a diff)."""
    device = staged(clock)
    log = "/mnt/data/balenahup/osfleet-hup.r1.log"
    result = step(RunLogAction, device, check_mode=True, run_log=log, outcome="committed", msg="2.88.4 -> 2.113.0 committed")
    assert result.changed and result.data["entry"]["outcome"] == "committed"
    assert '"outcome": "committed"' in result.diff["after"] and log in result.diff["before"]


# --- health ----------------------------------------------------------------------------------------

# --- supervisor ------------------------------------------------------------------------------------

def test_supervisor_stop_and_start_verify_on_the_probe_after_the_act(clock):
    """The act and the probe that verifies it run in one round trip; the verify reads the device."""
    device = staged(clock)
    device.model.services["balena-supervisor"] = "active"
    stopped = step(SupervisorAction, device, state="stopped")
    assert stopped.changed and device.model.services["balena-supervisor"] == "inactive" and device.round_trips == 2
    assert not step(SupervisorAction, device, state="stopped").changed and device.round_trips == 3
    assert step(SupervisorAction, device, state="started").data["supervisor"]["active"]
    device.supervisor_sticks = True
    with pytest.raises(DeviceError, match="balena-supervisor is still active after stopping it"):
        step(SupervisorAction, device, state="stopped")


def booted(clock: Clock, **kw: t.Any) -> Device:
    device = staged(clock, **kw)
    step(BootfilesAction, device)
    step(BootenvAction, device, state="armed")
    step(RebootAction, device)
    return device


def test_health_commits_after_the_checks(clock):
    device = booted(clock, commands={"check-a": 0})
    trips = device.round_trips
    result = step(HealthAction, device, expected_version="2.113.0", commands=["check-a"])
    assert result.changed and result.data["committed"] and not result.data["rolled_back"]
    assert device.round_trips - trips == 4, "the first look, the check, the probe, then the commit and its verifying probe in one round trip"
    assert result.data["checks"][0]["ok"] and device.command_runs == ["check-a"]
    assert device.model.env()["upgrade_available"] == "0" and not device.model.state
    assert result.data["committed_by"] == "step"
    again = step(HealthAction, device, expected_version="2.113.0", commands=["check-a"])
    assert not again.changed and again.data["committed"]
    assert again.data["committed_by"] == "earlier" and again.msg == "already committed when the step looked (nothing to do)"


def test_health_waits_for_rollback_health_then_proceeds(clock):
    def testing(model: Model, probes: int) -> None:
        model.rollback_health_state = "testing"
        model.services["rollback-health"] = "active"

    device = booted(clock, on_probe=testing)
    start = clock.now
    result = step(HealthAction, device, expected_version="2.113.0", device_timeout=10)
    assert result.changed and result.data["committed"] and result.data["committed_by"] == "step", "rollback-health never committed"
    assert 10 <= clock.now - start < 14 and result.data["waited"] >= 10


def test_health_waits_until_the_device_commits_by_itself(clock):
    def commits_on_third_probe(model: Model, probes: int) -> None:
        if probes == 3:
            model.boot["resinOS_uEnv.txt"] = "resin_root_part=3\nupgrade_available=0\n"
            model.boot.pop("bootcount.env", None)
            model.state.clear()
            model.rollback_health_state = "committed"
            model.services["rollback-health"] = "inactive"
        elif probes < 3:
            model.rollback_health_state = "waiting"
            model.services["rollback-health"] = "active"

    device = booted(clock)
    device.probes = 0
    device.on_probe = commits_on_third_probe
    result = step(HealthAction, device, expected_version="2.113.0", commands=["check-a"])
    assert not result.changed and result.data["committed"] and device.probes == 3
    assert result.data["committed_by"] == "rollback-health" and result.msg == "committed by the device's rollback-health"


def test_health_sees_the_devices_commit_as_it_happens(clock):
    """The wait is on the device: it ends when the device moves (here rollback-health commits 1.5 s
    into it), and the probe of the same round trip reads the commit."""
    def testing(model: Model, probes: int) -> None:
        if probes == 1:
            model.rollback_health_state = "testing"
            model.services["rollback-health"] = "active"

    def commits(model: Model, seconds: float) -> float:
        model.boot["resinOS_uEnv.txt"] = "resin_root_part=3\nupgrade_available=0\n"
        model.boot.pop("bootcount.env", None)
        model.state.clear()
        model.rollback_health_state = "committed"
        model.services["rollback-health"] = "inactive"
        return 1.5

    device = booted(clock)
    device.probes, device.round_trips, device.on_probe, device.on_wait = 0, 0, testing, commits
    start = clock.now
    result = step(HealthAction, device, expected_version="2.113.0")
    assert not result.changed and result.data["committed_by"] == "rollback-health"
    assert device.waits == [1.5] and device.round_trips == 3 and clock.now - start < 2
    assert device.probes == 3, "the first look, then one look without waiting (the first probe moved the model), then the wait's"


def test_health_rolls_back_when_a_check_fails(clock):
    device = booted(clock, commands={"check-a": 0, "check-b": 2})
    result = step(HealthAction, device, expected_version="2.113.0", commands=["check-a", "check-b"], retries=2, delay=3)
    assert result.failed and result.changed and result.data["rolled_back"] and result.data["rollback_reason"] == "checks"
    assert [c["attempts"] for c in result.data["checks"]] == [1, 3]
    assert "'check-b' exited 2: failed" in result.msg and "rolled back to 2.88.4 on resin-rootA" in result.msg
    assert device.model.active == "resin-rootA" and device.model.version == "2.88.4"
    assert device.model.boot["bzImage"] == "kernel 2.88.4"
    assert json.loads(device.model.state["osfleet-rollback"])["reason"] == "checks"
    again = step(HealthAction, device, expected_version="2.113.0", commands=["check-a"])
    assert again.failed and not again.changed and again.data["rollback_reason"] == "checks"


def test_health_check_failure_without_rollback(clock):
    device = booted(clock, commands={"check-b": 1})
    result = step(HealthAction, device, expected_version="2.113.0", commands=["check-b"], retries=0, rollback=False)
    assert result.failed and not result.changed and not result.data["rolled_back"]
    assert device.model.active == "resin-rootB" and device.model.env()["upgrade_available"] == "1"


def test_health_before_the_reboot_fails_but_check_mode_previews(clock):
    device = staged(clock)
    step(BootfilesAction, device)
    step(BootenvAction, device, state="armed")
    result = step(HealthAction, device, expected_version="2.113.0")
    assert result.failed and "reboot it first" in result.msg and not result.data["rolled_back"]
    preview = step(HealthAction, device, check_mode=True, expected_version="2.113.0", commands=["x"])
    # the real run waits after the reboot for the device's rollback-health to commit: no change of its own
    assert not preview.changed and not preview.failed and device.command_runs == []
    assert "after the update's reboot" in preview.actions[0] and "rollback-health" in preview.actions[1]


def test_health_reads_the_release_from_its_first_look_at_the_device(clock, monkeypatch):
    """With a catalog, the target's version as the catalog spells it comes from the device type of
    the step's first look at the device (no probe of its own): a committed device takes one round trip."""
    from ansible_collections.osfleet.hup.plugins.action import health as health_action  # pylint: disable=import-outside-toplevel
    seen = []

    def release(args, dev):
        seen.append(dev.device_type)
        return SimpleNamespace(version="2.113.0")

    monkeypatch.setattr(health_action, "optional_release", release)
    device = booted(clock, commands={})
    assert step(HealthAction, device, target_version="2.113.0").changed
    trips = device.round_trips
    again = step(HealthAction, device, target_version="2.113.0", catalog="catalog.json")
    assert not again.changed and again.data["committed_by"] == "earlier" and len(seen) == 1
    assert device.round_trips - trips == 1, "the first look (health_wait and the probe in one round trip), nothing else"


def test_health_expected_version_from_target_version(clock):
    device = booted(clock)
    result = step(HealthAction, device, target_version="2.200.0")
    assert result.failed and "not 2.200.0" in result.msg
