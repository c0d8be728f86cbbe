# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Faults during osfleet.hup.update, one lab device per scenario, scenarios run in parallel.

The lab holds generic A/B devices (profile ab: the collection's export writer) and balenaOS
devices (profile balenaos: the device's own hostapp-update and hooks); a step whose code is the same
on both (lock, supervisor stopped) is tried on balenaOS devices only. A scenario on a balenaOS
device is named ``<kind>:<step>@balenaos``.

* ansible-playbook SIGKILLed (with its workers and ssh clients) when step S started → a second
  run completes on 2.113.0;
* the device's power cut when step S (before the switch) started → after power-on it boots its
  old OS and /mnt/data's user files are unchanged (some scenarios then resume the update); on a
  balenaOS device the hooks of hostapp-update arm the new OS already in rootfs, so a cut after it
  boots the new OS (its rollback-health watching it), the run says so, and a second run completes
  (the supervisor too: at the release's version, although the device already runs the target);
* release 2.115.0 (lab_fault health) → rolled back by health, the run fails with the reason;
* release 2.115.1 (lab_fault boot) → the bootloader falls back (altboot), the run fails with the reason;
* on a balenaOS device, the power cut in the rootfs step after hostapp-update's hooks armed the new
  OS, before the controller had the step's result, and the power back before the controller went
  on → the rescue reads the device, puts nothing back on it, and the run says (message and run log,
  outcome interrupted) that it runs 2.113.0 from resin-rootB; data intact; a second run completes;
* a step that fails before the switch on a reachable device (fetch: an image digest no registry
  has; bootfiles: the space check; supervisor updated, after the new boot files were copied: no
  such supervisor image) → the run fails naming the step, and the device is as before: old OS,
  the same boot files (put back by the rescue) and env, supervisor running, no lock.

All scenarios start at the first use of the ``outcomes`` fixture, at most WORKERS at a time; each
test waits for its scenario and checks what it observed.
"""

from __future__ import annotations

import json
import time
import typing as t
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from osfleet_harness import (STEP_TASKS, DeviceState, Lab, PlaybookRun, ansible_playbook, controller_stopped, kill_controller,
                             selected_scenarios, step_started)

SOURCE, TARGET = "2.88.4", "2.113.0"
HEALTH_FAULT, BOOT_FAULT = "2.115.0", "2.115.1"
SUPERVISOR_BEFORE, SUPERVISOR_AFTER = "14.0.8", "14.11.2"
WORKERS = 4

HOSTAPP = "@balenaos"  # the scenario runs on a balenaOS (hostapp) device
#: steps whose code does not depend on the device's writer: tried on balenaOS devices only
COMMON_STEPS = ("lock", "supervisor stopped")
KILL_STEPS = [s for s in STEP_TASKS if s not in COMMON_STEPS] + [s + HOSTAPP for s in STEP_TASKS]  # every step up to health
_BEFORE_SWITCH = ["lock", "supervisor stopped", "fetch", "rootfs", "bootfiles", "supervisor updated"]
# (a power cut in hostapp-update itself: test_hostapp_writer. After it, in bootfiles or supervisor
# updated, the device boots the new OS with the old supervisor, and the rerun, on a device that
# runs the target, must still bring the supervisor to the release's: issue 9)
POWERCUT_STEPS = [s for s in _BEFORE_SWITCH if s not in COMMON_STEPS] + [
    s + HOSTAPP for s in ("lock", "supervisor stopped", "fetch", "bootfiles", "supervisor updated")]
RESUME_AFTER_POWERCUT = {"rootfs", "bootfiles"}  # (every power cut on a balenaOS device is resumed)
#: how long after the step started the fault hits (long steps: in the middle of them)
FAULT_DELAY = {"fetch": 0.3, "rootfs": 0.8, "reboot": 0.5, "health": 0.5}
#: seconds to wait after a fault before reading the device (a reboot it was told to do happens within ~1 s)
SETTLE = 3.0

FAIL_STEPS = ["fetch", "bootfiles", "supervisor updated"]  # made to fail before the switch, the device staying reachable

SCENARIOS = (
    [f"kill:{s}" for s in KILL_STEPS]
    + [f"powercut:{s}" for s in POWERCUT_STEPS]
    + ["fault:health", "fault:boot"]
    + [f"fail:{s}" for s in FAIL_STEPS]
    + ["rearm:rootfs", "armcut:rootfs" + HOSTAPP]
)
LAB_PREFIX = "itfaults"
LAB_DEVICES = sum(1 for name in SCENARIOS if not name.endswith(HOSTAPP))  # ab devices; the balenaOS ones: `fleet`
LAB_HOSTAPP_DEVICES = len(SCENARIOS) - LAB_DEVICES

#: a user's data on /mnt/data that must survive anything (created before each power-cut scenario)
TEST_TREE_SCRIPT = r"""
set -e
d=/mnt/data/osfleet-test
mkdir -p "$d/app/db" "$d/media"
i=1
while [ $i -le 12 ]; do
  dd if=/dev/urandom of="$d/app/db/chunk-$i" bs=4096 count=$((i * 3)) 2>/dev/null
  i=$((i + 1))
done
dd if=/dev/urandom of="$d/media/video.bin" bs=65536 count=40 2>/dev/null
printf 'setting=%s\n' "$(date +%s)" > "$d/app/settings.conf"
sync
"""
#: what a run killed right after arming the switch leaves in the env
ARMED_ENV_SCRIPT = "printf 'resin_root_part=3\\nupgrade_available=1\\n' > /mnt/boot/resinOS_uEnv.txt && sync"
#: regenerated on the boot partition from the files present (hostos-update-facts §6.3)
FINGERPRINT = "balenaos.fingerprint"
#: /mnt/data paths an update legitimately writes: the heartbeat of the user application, the run
#: logs, the image cache of the fetch step and the supervisor the supervisor step installs
DATA_EXCLUDE = ("user-app/heartbeat.log", "balenahup", "osfleet", "balena-supervisor")
#: the rootfs step's hostapp-update job on a balenaOS device (scripts/hostapp_write.sh)
HOSTAPP_JOB = "/run/osfleet/hostapp-update"


@dataclass
class Outcome:
    host: str
    runs: list[PlaybookRun] = field(default_factory=list)
    hit_at: float = 0.0  # when the fault hit (time.time())
    states: dict[str, DeviceState] = field(default_factory=dict)  # label -> state
    data: dict[str, dict[str, str]] = field(default_factory=dict)  # label -> /mnt/data checksums
    boot: dict[str, dict[str, str]] = field(default_factory=dict)  # label -> /mnt/boot checksums
    armed: str = ""  # armcut: the env the hooks wrote, as the power was cut


class Scenarios:
    """Runs every scenario on its own device, WORKERS at a time, from the first request on."""

    def __init__(self, lab: Lab, workdir: Path, wanted: t.Collection[str]) -> None:
        self.lab = lab
        self.workdir = workdir
        by_profile = {p: iter([h for h in lab.hosts if lab.host_vars[h]["lab_profile"] == p]) for p in ("ab", "balenaos")}
        self.hosts = {name: next(by_profile["balenaos" if name.endswith(HOSTAPP) else "ab"]) for name in SCENARIOS}
        self._pool = ThreadPoolExecutor(max_workers=WORKERS)
        self._futures: dict[str, Future[Outcome]] = {name: self._pool.submit(self._run, name) for name in SCENARIOS if name in wanted}

    def result(self, name: str) -> Outcome:
        return self._futures[name].result(timeout=1500)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- helpers
    def _workdir(self, name: str) -> Path:
        return self.workdir / name.replace(":", "-").replace(" ", "-")

    def _playbook(self, name: str, version: str, extra_vars: dict[str, t.Any] | None = None, **kwargs: t.Any) -> PlaybookRun:
        return ansible_playbook(
            self.lab,
            workdir=self._workdir(name),
            # one run id per scenario: a run again after a fault resumes the interrupted run (another
            # run id would be another run, which must not take the lock the interrupted one holds)
            extra_vars={"hup_target_version": version, "hup_run_id": self._run_id(name), **(extra_vars or {})},
            limit=self.hosts[name],
            **kwargs,
        )

    @staticmethod
    def _run_id(name: str) -> str:
        return "fault-" + "".join(c if c.isalnum() else "-" for c in name)

    def _settled_state(self, host: str, timeout: float = 120) -> DeviceState:
        """The device's state once it answers again after a fault (a reboot may still be on its way)."""
        time.sleep(SETTLE)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.lab.state(host)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def _run(self, name: str) -> Outcome:
        runner: Callable[[str, Outcome], None] = getattr(self, f"_{name.partition(':')[0]}")
        outcome = Outcome(self.hosts[name])
        outcome.states["before"] = self.lab.state(outcome.host)
        runner(name, outcome)
        return outcome

    # -- the scenarios
    def _kill(self, name: str, out: Outcome) -> None:
        step = step_of(name)
        delay = FAULT_DELAY.get(step, 0.0)

        def kill_later(proc: t.Any) -> None:
            time.sleep(delay)
            out.hit_at = time.time()
            kill_controller(proc)

        out.runs.append(self._playbook(name, TARGET, trigger=step_started(out.host, step), on_trigger=kill_later))
        out.states["killed"] = self._settled_state(out.host)
        out.runs.append(self._playbook(name, TARGET))
        out.states["final"] = self.lab.state(out.host)

    def _powercut(self, name: str, out: Outcome) -> None:
        step = step_of(name)
        self.lab.sh(out.host, TEST_TREE_SCRIPT)
        out.data["before"] = self.lab.sha256_tree(out.host, "/mnt/data", DATA_EXCLUDE)
        delay = FAULT_DELAY.get(step, 0.0)

        def cut_later(proc: t.Any) -> None:
            time.sleep(delay)
            # the controller stopped while labctl cuts the power: the cut lands where the run was
            # (in the step, before its act when delay is 0), not seconds later on a loaded machine
            # (the supervisor step done, the reboot under way)
            with controller_stopped(proc):
                out.hit_at = time.time()
                self.lab.powercut(out.host)

        out.runs.append(self._playbook(name, TARGET, trigger=step_started(out.host, step), on_trigger=cut_later))
        self.lab.poweron(out.host)
        out.states["after_powercut"] = self.lab.state(out.host)
        out.data["after_powercut"] = self.lab.sha256_tree(out.host, "/mnt/data", DATA_EXCLUDE)
        if step in RESUME_AFTER_POWERCUT or name.endswith(HOSTAPP):
            out.runs.append(self._playbook(name, TARGET))
            out.states["final"] = self.lab.state(out.host)

    def _rearm(self, name: str, out: Outcome) -> None:
        """An env left armed for the inactive root (a run to another release killed after its
        switch), then a run to TARGET whose power is cut while it rewrites that root."""
        self.lab.sh(out.host, ARMED_ENV_SCRIPT)
        out.states["armed"] = self.lab.state(out.host)
        self._powercut(name, out)

    def _armcut(self, name: str, out: Outcome) -> None:
        """The power cut after hostapp-update's hooks armed the new OS, inside the rootfs step: the
        controller stopped once hostapp-update runs (it never gets the step's result), the job
        waited for until it ended (hooks done), then the power cut and back; then the controller
        goes on and its rescue finds the device on the new OS."""
        self.lab.sh(out.host, TEST_TREE_SCRIPT)
        out.data["before"] = self.lab.sha256_tree(out.host, "/mnt/data", DATA_EXCLUDE)

        def cut_after_the_hooks(proc: t.Any) -> None:
            wait_on_device(self.lab, out.host, '[ -f "$1/pid" ] || [ -f "$1/status" ]', HOSTAPP_JOB, what="hostapp-update to start")
            with controller_stopped(proc):
                wait_on_device(self.lab, out.host, '[ -f "$1/status" ] && grep -qx upgrade_available=1 /mnt/boot/resinOS_uEnv.txt',
                               HOSTAPP_JOB, what="hostapp-update's hooks to arm the new OS")
                out.hit_at = time.time()
                out.armed = self.lab.read(out.host, "/mnt/boot/resinOS_uEnv.txt")
                self.lab.powercut(out.host)
                self.lab.poweron(out.host)

        out.runs.append(self._playbook(name, TARGET, trigger=step_started(out.host, "rootfs"), on_trigger=cut_after_the_hooks))
        out.states["after_powercut"] = self.lab.state(out.host)
        out.data["after_powercut"] = self.lab.sha256_tree(out.host, "/mnt/data", DATA_EXCLUDE)
        out.runs.append(self._playbook(name, TARGET))
        out.states["final"] = self.lab.state(out.host)

    def _fault(self, name: str, out: Outcome) -> None:
        version = HEALTH_FAULT if name.endswith("health") else BOOT_FAULT
        out.runs.append(self._playbook(name, version))
        out.states["final"] = self._settled_state(out.host)

    def _fail(self, name: str, out: Outcome) -> None:
        step = step_of(name)
        catalog = self.lab.catalog()
        extra: dict[str, t.Any] = {}
        if step == "fetch":  # the target image (and its deltas) is in no registry
            for release in catalog["releases"]:
                if release["version"] == TARGET:
                    release["digest"] = "sha256:" + "0" * 64
                    for delta in release.get("deltas", []):
                        delta["digest"] = "sha256:" + "1" * 64
        elif step == "bootfiles":  # keep 1 TiB free on the boot partition: the space check fails
            extra["hup_reserve_kib"] = 1 << 30
        else:  # supervisor updated, after the boot files were copied: no such supervisor image
            catalog["supervisor_repository"] = "osfleet/no-such-supervisor"
        path = self._workdir(name) / "catalog.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(catalog))
        out.boot["before"] = self.lab.sha256_tree(out.host, "/mnt/boot")
        out.runs.append(self._playbook(name, TARGET, {"hup_catalog": str(path), **extra}))
        out.states["final"] = self.lab.state(out.host)
        out.boot["final"] = self.lab.sha256_tree(out.host, "/mnt/boot")


def wait_on_device(lab: Lab, host: str, condition: str, *args: str, what: str, tries: int = 600) -> None:
    """Until the shell ``condition`` holds on the device (polled every 0.1 s, at most ``tries`` times)."""
    for _attempt in range(tries):
        if lab.sh(host, f"if {condition}; then echo yes; else echo no; fi", *args).strip() == "yes":
            return
        time.sleep(0.1)
    raise AssertionError(f"{host}: waited in vain for {what}")


def step_of(name: str) -> str:
    """The step of a scenario (``kill:fetch@balenaos`` -> ``fetch``)."""
    return name.partition(":")[2].removesuffix(HOSTAPP)


#: the scenario each test checks ({step} is the test's parameter)
SCENARIO_OF_TEST = {
    "test_killed_run_completes_when_run_again": "kill:{step}",
    "test_power_cut_before_the_switch_keeps_the_old_os": "powercut:{step}",
    "test_health_fault_is_rolled_back_and_reported": "fault:health",
    "test_boot_fault_falls_back_and_is_reported": "fault:boot",
    "test_failure_before_the_switch_leaves_the_device_as_it_was": "fail:{step}",
    "test_switch_left_armed_is_disarmed_before_the_root_is_rewritten": "rearm:rootfs",
    "test_power_cut_after_the_hooks_armed_is_reported_as_the_new_os": "armcut:rootfs" + HOSTAPP,
}


@pytest.fixture(scope="module")
def fleet(lab: Lab) -> Lab:
    """The module's ab devices and, in the same lab (and inventory), LAB_HOSTAPP_DEVICES balenaOS devices."""
    lab.labctl("up", "--devices", str(LAB_HOSTAPP_DEVICES), "--profile", "balenaos", "--os", SOURCE, timeout=900)
    mixed = Lab.from_inventory(lab.prefix, lab.inventory)
    assert len(mixed.hosts) == len(SCENARIOS), mixed.hosts
    return mixed


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, fleet: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenarios]:
    scenarios = Scenarios(fleet, tmp_path_factory.mktemp("faults"), selected_scenarios(request.session, __name__, SCENARIO_OF_TEST))
    yield scenarios
    scenarios.close()


def assert_updated(state: DeviceState, host: str) -> None:
    assert state.version == TARGET, f"{host} runs {state.version}"
    assert state.active_root == "resin-rootB", f"{host} booted {state.active_root}"
    assert state.committed, f"{host}: not committed: env {state.env}, markers {state.markers}"
    assert state.lock == "", f"{host}: lock still held: {state.lock}"
    assert state.supervisor_active and state.supervisor_running == SUPERVISOR_AFTER, (state.supervisor_active, state.supervisor_running)


def assert_on_old_os(state: DeviceState, host: str) -> None:
    assert state.version == SOURCE, f"{host} runs {state.version}, not its old OS"
    assert state.active_root == "resin-rootA", f"{host} booted {state.active_root}"
    assert state.env.get("resin_root_part") == "2", state.env


def failure_message(run: PlaybookRun, host: str) -> str:
    fails = run.failures(host)
    assert fails, f"{host}: the run should have failed\n{run.summary()}"
    return str(fails[-1].result.get("msg", ""))


def hit_in(out: Outcome) -> str:
    """The task that was running when the fault hit (the last one started before it)."""
    starts = [e for e in out.runs[0].events if e["event"] == "start" and e["host"] == out.host and e["time"] <= out.hit_at]
    return str(starts[-1]["task"]).rpartition(" : ")[2] if starts else ""


def assert_hit_during(out: Outcome, step: str) -> None:
    """The fault hit in the step's task or, for a step that ended within FAULT_DELAY, in a later one."""
    order = list(STEP_TASKS.values())
    hit = hit_in(out)
    position = next((i for i, task in enumerate(order) if hit.startswith(task)), None)
    assert position is not None and position >= order.index(STEP_TASKS[step]), f"the fault hit in {hit!r}, not in {step} or after it"


@pytest.mark.parametrize("step", KILL_STEPS)
def test_killed_run_completes_when_run_again(outcomes: Scenarios, step: str) -> None:
    out = outcomes.result(f"kill:{step}")
    step = step.removesuffix(HOSTAPP)
    killed, again = out.runs
    assert killed.triggered_at is not None, f"step {step} never started\n{killed.summary()}"
    assert killed.rc == -9, f"ansible-playbook was not killed (rc {killed.rc})\n{killed.summary()}"
    print(f"{out.host}: killed in {hit_in(out)!r}; then {out.states['killed']}")
    assert_hit_during(out, step)
    assert not [r for r in killed.host_results(out.host) if "Release the update lock" in r.task], "the run ended before the kill"
    assert again.rc == 0, f"the second run after a kill at {step} failed\n{again.summary()}"
    assert_updated(out.states["final"], out.host)


@pytest.mark.parametrize("step", POWERCUT_STEPS)
def test_power_cut_before_the_switch_keeps_the_old_os(outcomes: Scenarios, step: str) -> None:
    out = outcomes.result(f"powercut:{step}")
    hostapp = step.endswith(HOSTAPP)
    step = step.removesuffix(HOSTAPP)
    cut = out.runs[0]
    assert cut.triggered_at is not None, f"step {step} never started\n{cut.summary()}"
    assert cut.rc != 0, cut.summary()
    msg = failure_message(cut, out.host)
    print(f"{out.host}: power cut in {hit_in(out)!r}: {msg}")
    assert_hit_during(out, step)
    assert out.host in msg and "failed at step" in msg, msg
    after = out.states["after_powercut"]
    written = [r for r in cut.host_results(out.host) if r.action == "osfleet.hup.rootfs" and r.event == "ok"]
    # the rootfs step lost the device after it had started hostapp-update (a cut in fetch can land there)
    acted = [r for r in cut.host_results(out.host) if r.action == "osfleet.hup.rootfs" and r.event == "failed" and r.result.get("acted")]
    if hostapp and written:  # hostapp-update's hooks armed the new OS: it boots, its rollback-health watching it
        assert written[0].result.get("writer") == "hostapp", written[0].result
        assert "the bootloader is armed for the new OS" in msg and "nothing switched" not in msg, msg
        assert (after.version, after.active_root) == (TARGET, "resin-rootB"), after
        # (the cut lands before the supervisor step's act: the controller is stopped meanwhile)
        assert after.supervisor_running == SUPERVISOR_BEFORE, f"{out.host} booted the new OS with supervisor {after.supervisor_running}"
    elif hostapp and acted:
        # the controller cannot know whether the hooks armed before the cut, nor read the device (still
        # off): the run says it boots either, and it boots one of them
        assert f"hostapp-update's hooks may have armed {TARGET}" in msg and "nothing switched" not in msg, msg
        assert (after.version, after.active_root) in ((SOURCE, "resin-rootA"), (TARGET, "resin-rootB")), after
    else:
        assert "nothing switched" in msg, msg
        assert_on_old_os(after, out.host)
    assert after.boot_id != out.states["before"].boot_id, "the device did not lose power"
    assert out.data["after_powercut"] == out.data["before"], "user data on /mnt/data changed"
    assert any(n.startswith("osfleet-test/") for n in out.data["before"]), "the test tree is missing"
    if step in RESUME_AFTER_POWERCUT or hostapp:
        again = out.runs[1]
        assert again.rc == 0, again.summary()
        if hostapp and written:
            # the rerun finds the target booted (rollback-health may have committed it meanwhile)
            # and brings the old OS's supervisor to the release's version after health (issue 9)
            phase = again.step(out.host, "osfleet.hup.preflight").result.get("phase")
            print(f"{out.host}: the rerun found phase {phase}")
            assert phase in ("pending_commit", "supervisor_behind"), phase
            assert again.step(out.host, "osfleet.hup.supervisor", -2).changed, "the rerun did not update the supervisor"
        assert_updated(out.states["final"], out.host)


def test_health_fault_is_rolled_back_and_reported(outcomes: Scenarios) -> None:
    out = outcomes.result("fault:health")
    run = out.runs[0]
    assert run.rc != 0, run.summary()
    health = run.step(out.host, "osfleet.hup.health").result
    assert health.get("rolled_back") is True, health
    assert health.get("rollback_reason") in ("health", "checks"), health
    msg = failure_message(run, out.host)
    print(msg)
    assert "rolled back" in msg and HEALTH_FAULT in msg, msg
    final = out.states["final"]
    assert_on_old_os(final, out.host)
    assert final.committed and final.lock == "" and final.supervisor_active, final


def test_boot_fault_falls_back_and_is_reported(outcomes: Scenarios) -> None:
    out = outcomes.result("fault:boot")
    run = out.runs[0]
    assert run.rc != 0, run.summary()
    health = run.step(out.host, "osfleet.hup.health").result
    assert health.get("rolled_back") is True and health.get("rollback_reason") == "altboot", health
    msg = failure_message(run, out.host)
    print(msg)
    assert "rolled back" in msg and "altboot" in msg, msg
    final = out.states["final"]
    assert_on_old_os(final, out.host)
    assert final.committed and final.lock == "" and final.supervisor_active, final


@pytest.mark.parametrize("step", FAIL_STEPS)
def test_failure_before_the_switch_leaves_the_device_as_it_was(outcomes: Scenarios, step: str) -> None:
    out = outcomes.result(f"fail:{step}")
    run = out.runs[0]
    assert run.rc != 0, run.summary()
    msg = failure_message(run, out.host)
    print(msg)
    assert f"failed at step {step}:" in msg and msg.endswith(f"-- nothing switched, the device stays on {SOURCE}"), msg
    before, final = out.states["before"], out.states["final"]
    assert_on_old_os(final, out.host)
    assert final.env == before.env and final.markers == before.markers, (before.env, final.env, final.markers)
    changed = sorted(n for n, digest in out.boot["before"].items() if n != FINGERPRINT and out.boot["final"].get(n) != digest)
    assert not changed, f"boot files not restored: {changed}"
    assert final.supervisor_active and final.supervisor_running == before.supervisor_running, "the supervisor was not started again"
    assert final.lock == "", f"the lock is still held: {final.lock}"
    assert run.step(out.host, "osfleet.hup.supervisor", 0).changed, "the supervisor was stopped first (else the restart proves nothing)"
    if step == "supervisor updated":
        assert run.step(out.host, "osfleet.hup.bootfiles").changed, "new boot files were copied (else restoring them proves nothing)"
        assert run.step(out.host, "osfleet.hup.bootenv").changed, "the rescue put the old boot files back"
    added = sorted(set(out.boot["final"]) - set(out.boot["before"]))
    assert not added, f"files the new OS added are still on the boot partition: {added}"
    # the run log on the device has the failed step, with the reason (not the device's name), then the rescue's steps (its
    # read of the device first)
    run_log = next(r.result["ansible_facts"]["hup_run_log"] for r in run.host_results(out.host) if "hup_run_log" in r.result.get("ansible_facts", {}))
    entries = outcomes.lab.run_logs(out.host)[run_log.rsplit("/", 1)[-1]]
    failed = [e for e in entries if e["failed"] and e["step"] != "outcome"]
    assert [e["step"] for e in failed] == [step.split()[0]], entries
    assert failed[0]["msg"] and f"failed at step {step}: {failed[0]['msg']} -- " in msg, (failed[0], msg)
    assert [e["step"] for e in entries[entries.index(failed[0]) + 1:]] == ["device_info", "bootenv", "supervisor", "lock", "outcome"], entries
    # the last line: how the run ended, with the message the operator saw
    assert (entries[-1]["outcome"], entries[-1]["failed_step"], entries[-1]["msg"]) == ("failed", step, msg), entries[-1]
    # the same files with the same bytes; the fingerprint is derived and regenerated
    assert {n: d for n, d in out.boot["final"].items() if n != FINGERPRINT} == {n: d for n, d in out.boot["before"].items() if n != FINGERPRINT}


def test_switch_left_armed_is_disarmed_before_the_root_is_rewritten(outcomes: Scenarios) -> None:
    out = outcomes.result("rearm:rootfs")
    armed = out.states["armed"]
    assert armed.env == {"resin_root_part": "3", "upgrade_available": "1"}, armed.env
    cut = out.runs[0]
    assert cut.triggered_at is not None, cut.summary()
    assert_hit_during(out, "rootfs")
    after = out.states["after_powercut"]
    # the first boot after the cut already runs the old OS: no half-written root, no boot counting
    assert_on_old_os(after, out.host)
    assert after.env.get("upgrade_available") == "0", after.env
    assert cut.step(out.host, "osfleet.hup.bootenv", 0).changed, "the armed env was not disarmed first"
    assert out.data["after_powercut"] == out.data["before"], "user data on /mnt/data changed"
    assert out.runs[1].rc == 0, out.runs[1].summary()
    assert_updated(out.states["final"], out.host)


def test_power_cut_after_the_hooks_armed_is_reported_as_the_new_os(outcomes: Scenarios) -> None:
    """The rescue of a rootfs step whose device lost power after hostapp-update's hooks armed the
    new OS, and came back on it before the rescue: it put nothing back on the new OS, and the
    message and the run log say what runs (before: 'nothing switched, the device stays on 2.88.4')."""
    out = outcomes.result("armcut:rootfs" + HOSTAPP)
    cut, again = out.runs
    assert cut.triggered_at is not None and cut.rc != 0, cut.summary()
    assert "resin_root_part=3" in out.armed and "upgrade_available=1" in out.armed, out.armed
    assert_hit_during(out, "rootfs")
    msg = failure_message(cut, out.host)
    print(f"{out.host}: {msg}")
    assert not [r for r in cut.host_results(out.host) if r.action == "osfleet.hup.rootfs" and r.event == "ok"], "the rootfs step got its result"
    assert "failed at step rootfs: " in msg and "nothing switched" not in msg, msg
    assert f"-- the device rebooted during the run and runs {TARGET} from resin-rootB (it ran {SOURCE} from resin-rootA)" in msg, msg
    assert "; could not " not in msg, msg  # every cleanup of the rescue reached the device
    after = out.states["after_powercut"]
    assert (after.version, after.active_root) == (TARGET, "resin-rootB"), after
    assert after.boot_id != out.states["before"].boot_id, "the device did not lose power"
    assert after.lock == "", f"the rescue did not release the lock: {after.lock}"
    # nothing put back on the new OS: the rescue's bootenv rolled_back did not run
    assert not [r for r in cut.host_results(out.host) if r.action == "osfleet.hup.bootenv" and r.event != "skipped"], "the rescue ran bootenv"
    assert out.data["after_powercut"] == out.data["before"], "user data on /mnt/data changed"
    # the run log on the device (the second run, with the same run id, appends to it): the failed
    # step, the rescue's read, and how the run ended, in the operator's words
    run_log = next(r.result["ansible_facts"]["hup_run_log"] for r in cut.host_results(out.host) if "hup_run_log" in r.result.get("ansible_facts", {}))
    entries = outcomes.lab.run_logs(out.host)[run_log.rsplit("/", 1)[-1]]
    ended = next(e for e in entries if e["step"] == "outcome")
    assert (ended["outcome"], ended.get("failed_step"), ended["msg"]) == ("interrupted", "rootfs", msg), ended
    assert [e["step"] for e in entries[:entries.index(ended)] if e["failed"]] == ["rootfs"], entries
    assert "device_info" in [e["step"] for e in entries[:entries.index(ended)]], entries
    assert again.rc == 0, again.summary()
    assert again.step(out.host, "osfleet.hup.preflight").result.get("phase") in ("pending_commit", "supervisor_behind")
    assert_updated(out.states["final"], out.host)
