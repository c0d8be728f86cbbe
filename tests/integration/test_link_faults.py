# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The failure paths of osfleet.hup.update with the device's link to the controller cut
(``labctl link NAME down``: the device runs on), one lab device per scenario, run in parallel:

* ``cut+kill:S``: when step S started, the link is cut and the controller (ansible-playbook, by the
  PID this test started) killed;
* ``cut:S``: the link is cut and the controller left alone (its ssh gives up after a keepalive, the
  rescue cannot reach the device either);
* ``back:rootfs``: the link is cut while rootfs runs and restored after the watchdog gave the run up:
  the run fails at its next step, and its rescue cleans up;
* ``sigint:fetch``: Ctrl-C (SIGINT to ansible-playbook's process group) during the fetch;
* ``fail:switched``: armed, the link lost for a moment: the reboot step fails, the link comes back,
  and the rescue disarms (the watchdog's bound is long here, so the rescue is what disarms);
* ``stop:switched``: armed, the controller stopped (SIGSTOP) and its link cut until the watchdog gave
  the run up and disarmed; then both come back: the reboot step is refused, and the rescue's message
  says what the watchdog did instead of "armed for the new OS".

In each, the run's device-side watchdog (``hup_watchdog_timeout`` short here) must take over: the
supervisor runs again, the lock records the run as interrupted, a switch that did not boot is
disarmed, the device boots its old OS on resin-rootA after a reboot, and running again (with a new
run id: it takes the interrupted lock over; with the same one: it resumes) completes the update.
Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import time
import typing as t
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from osfleet_harness import STEP_TASKS, DeviceState, Lab, PlaybookRun, ansible_playbook, kill_controller, selected_scenarios

SOURCE, TARGET = "2.88.4", "2.113.0"
#: the watchdog's bound: short for the test, long enough for a loaded machine between two steps
BOUND, INTERVAL = 20, 1
WORKERS = 3
#: "switched": armed, right before the reboot step: the arm's result (the controller stops itself,
#: SIGSTOP, as that result comes in, before the reboot task is sent, so the fault surely hits before
#: the reboot)
TASKS = {**STEP_TASKS, "switched": STEP_TASKS["bootenv armed"]}
#: the event of TASKS[step] that the fault follows: its start, or (switched) its ok result
TASK_EVENT = {"switched": "ok"}
#: how long after the step started the fault hits (long steps: in the middle of them)
FAULT_DELAY = {"fetch": 0.3, "rootfs": 0.8}
#: the steps where a cut link plus a killed controller differ for the watchdog: a long device
#: operation (fetch, rootfs) and an armed switch; a killed controller at every step is test_faults'
#: kill:S (the watchdog does the same there, the link only makes the controller's side fail)
CUT_KILL_STEPS = ["fetch", "rootfs", "switched"]
CUT_STEPS = ["rootfs", "switched"]
#: scenarios that then run again with a new run id (the rest: with the same one, resuming)
RUN_AGAIN_NEW_ID = {"cut+kill:rootfs", "cut+kill:switched", "cut:switched"}
SCENARIOS = ([f"cut+kill:{s}" for s in CUT_KILL_STEPS] + [f"cut:{s}" for s in CUT_STEPS]
             + ["back:rootfs", "sigint:fetch", "fail:switched", "stop:switched"])
#: fail:switched: the watchdog must not fire before the rescue runs (its bound outlasts the reboot step's failure)
LONG_BOUND = 240
LAB_PREFIX = "itlink"
LAB_DEVICES = len(SCENARIOS)
#: the controller's ssh gives up on a dead link after ~6 s (else it waits for the link for ever)
KEEPALIVE_SSH_ARGS = "-C -o ControlMaster=auto -o ControlPersist=60s -o ServerAliveInterval=2 -o ServerAliveCountMax=3"
FINGERPRINT = "balenaos.fingerprint"
FREE_LOCKS = ("( flock -n 9 ) 9>>/var/lock/resinhup.lock && echo resinhup-free;"
              " [ ! -e /run/osfleet/writer.lock ] || ( flock -n 9 ) 9>>/run/osfleet/writer.lock && echo writer-free")


@dataclass
class Outcome:
    host: str
    run_id: str
    runs: list[PlaybookRun] = field(default_factory=list)
    states: dict[str, DeviceState] = field(default_factory=dict)
    boot: dict[str, dict[str, str]] = field(default_factory=dict)
    fired: str = ""
    locks: str = ""


def watchdog_pids(run_id: str) -> list[int]:
    """Host PIDs of the watchdog of ``run_id`` (a device's processes are visible from the host)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[1:3] == [b"/run/osfleet/watchdog/watchdog.sh", run_id.encode()]:
                found.append(int(entry.name))
    return found


def wait_stopped(pid: int, timeout: float = 60) -> None:
    """Until the process ``pid`` (ansible-playbook, started by the test) is stopped (state T), bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return  # it ended
        if stat.rpartition(")")[2].split()[0] in ("T", "t"):
            return
        time.sleep(0.02)
    raise AssertionError(f"ansible-playbook (pid {pid}) did not stop itself within {timeout} s")


def task_started(host: str, step: str) -> Callable[[list[dict[str, t.Any]]], bool]:
    """Trigger: the task of ``step`` started on ``host`` (switched: the arm's ok result came in)."""
    name, event = TASKS[step], TASK_EVENT.get(step, "start")
    return lambda events: any(e["event"] == event and e["host"] == host and name in e["task"] for e in events)


class Scenarios:
    def __init__(self, lab: Lab, workdir: Path, wanted: t.Collection[str]) -> None:
        self.lab = lab
        self.workdir = workdir
        self.hosts = dict(zip(SCENARIOS, lab.hosts, strict=True))
        self._pool = ThreadPoolExecutor(max_workers=WORKERS)
        self._futures: dict[str, Future[Outcome]] = {n: self._pool.submit(self._run, n) for n in SCENARIOS if n in wanted}

    def result(self, name: str) -> Outcome:
        return self._futures[name].result(timeout=1800)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _playbook(self, name: str, run_id: str, extra_vars: dict[str, t.Any] | None = None, **kwargs: t.Any) -> PlaybookRun:
        return ansible_playbook(
            self.lab,
            workdir=self.workdir / "".join(c if c.isalnum() else "-" for c in name),
            extra_vars={"hup_target_version": TARGET, "hup_run_id": run_id,
                        "hup_watchdog_timeout": BOUND, "hup_watchdog_interval": INTERVAL, **(extra_vars or {})},
            limit=self.hosts[name],
            **kwargs,
        )

    def _wait_watchdog_gone(self, out: Outcome, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while watchdog_pids(out.run_id):
            assert time.monotonic() < deadline, f"{out.host}: the watchdog of {out.run_id} still runs after {timeout} s"
            time.sleep(0.5)

    def _run(self, name: str) -> Outcome:
        kind, _sep, step = name.partition(":")
        host = self.hosts[name]
        out = Outcome(host, "link-" + "".join(c if c.isalnum() else "-" for c in name))
        out.states["before"] = self.lab.state(host)
        out.boot["before"] = self.lab.sha256_tree(host, "/mnt/boot")
        delay = FAULT_DELAY.get(step, 0.0)
        cut = kind in ("cut+kill", "cut", "back", "stop")

        def hit(proc: t.Any) -> None:
            if step == "switched":
                # the controller stops itself right after it emitted the arm's result: wait until it
                # has (else a SIGCONT below could come first and leave it stopped for good)
                wait_stopped(proc.pid)
            if kind in ("cut", "fail", "stop"):
                os.killpg(proc.pid, signal.SIGSTOP)  # the controller waits while its link goes
            time.sleep(delay)
            assert watchdog_pids(out.run_id), f"{host}: no watchdog runs for {out.run_id} before the fault"
            if kind == "cut+kill":
                kill_controller(proc)  # the controller is gone at once, then its link
            elif kind == "sigint":
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
            if cut:
                self.lab.link(host, "down")
            if kind == "stop":  # both come back once the watchdog gave the run up
                self._wait_watchdog_gone(out)
                self.lab.link(host, "up")
            if kind in ("cut", "fail", "stop"):
                os.killpg(proc.pid, signal.SIGCONT)
            if kind == "fail":  # the link comes back once the reboot step failed: the rescue reaches the device
                self._wait_for_task_result(name, host, STEP_TASKS["reboot"])
                self.lab.link(host, "up")

        env = {"ANSIBLE_SSH_ARGS": KEEPALIVE_SSH_ARGS} if kind in ("cut", "fail") else {}
        if step == "switched":  # armed, not yet rebooted: the controller stops itself right there (osfleet_events)
            env["OSFLEET_STOP_AT"] = f"{host}\t{TASKS['switched']}\tok"
        cut = cut or kind == "fail"
        try:
            if kind == "fail":
                run = self._playbook(name, out.run_id, {"hup_watchdog_timeout": LONG_BOUND}, trigger=task_started(host, step), on_trigger=hit,
                                     env=env)
            elif kind == "stop":
                run = self._playbook(name, out.run_id, trigger=task_started(host, step), on_trigger=hit, env=env)
            elif kind == "back":
                run = self._playbook_back(name, out, hit, task_started(host, step))
            else:
                run = self._playbook(name, out.run_id, trigger=task_started(host, step), on_trigger=hit, env=env)
                self._wait_watchdog_gone(out)
        finally:
            if cut:
                self.lab.link(host, "up")
        out.runs.append(run)
        out.fired = self.lab.sh(host, "cat /run/osfleet/watchdog/fired 2>/dev/null || true").strip()
        out.locks = self.lab.sh(host, FREE_LOCKS, check=False)
        out.states["interrupted"] = self.lab.state(host)
        out.boot["interrupted"] = self.lab.sha256_tree(host, "/mnt/boot")
        self.lab.labctl("reboot", host, timeout=180)
        out.states["rebooted"] = self.lab.state(host)
        again = "again-" + out.run_id if name in RUN_AGAIN_NEW_ID else out.run_id
        out.runs.append(self._playbook(name, again))
        out.states["final"] = self.lab.state(host)
        return out

    def _wait_for_task_result(self, name: str, host: str, task: str, timeout: float = 300) -> None:
        """Until the running playbook of ``name`` reported a result of ``task`` on ``host`` (bounded)."""
        events = sorted((self.workdir / "".join(c if c.isalnum() else "-" for c in name)).glob("run-*.events.jsonl"))[-1]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in events.read_text().splitlines():
                event = json.loads(line)
                if event["event"] != "start" and event.get("host") == host and task in event.get("task", ""):
                    return
            time.sleep(0.2)
        raise AssertionError(f"{host}: no result of {task!r} within {timeout} s")

    def _playbook_back(self, name: str, out: Outcome, hit: Callable[[t.Any], None],
                       trigger: Callable[[list[dict[str, t.Any]]], bool]) -> PlaybookRun:
        """The link comes back, with the controller still waiting, once the watchdog gave the run up."""
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            def restore_later(proc: t.Any) -> None:
                hit(proc)
                pool.submit(lambda: (self._wait_watchdog_gone(out), self.lab.link(out.host, "up")))

            return self._playbook(name, out.run_id, trigger=trigger, on_trigger=restore_later)
        finally:
            pool.shutdown(wait=True)


SCENARIO_OF_TEST = {
    "test_controller_gone_with_the_link": "cut+kill:{step}",
    "test_link_cut_with_the_controller_waiting": "cut:{step}",
    "test_link_back_after_the_watchdog_gave_the_run_up": "back:rootfs",
    "test_ctrl_c_leaves_the_watchdog_to_clean_up": "sigint:fetch",
    "test_failed_reboot_disarms_the_switch": "fail:switched",
    "test_failed_reboot_after_the_watchdog_disarmed_says_so": "stop:switched",
}


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenarios]:
    scenarios = Scenarios(lab, tmp_path_factory.mktemp("link"), selected_scenarios(request.session, __name__, SCENARIO_OF_TEST))
    yield scenarios
    scenarios.close()


def assert_taken_over_by_the_watchdog(out: Outcome, *, disarmed: bool = False) -> None:
    """What the watchdog leaves when the controller went away: a device as before, its lock marked."""
    host, state = out.host, out.states["interrupted"]
    assert out.fired.startswith("no word from the controller for "), f"{host}: the watchdog did not fire: {out.fired!r}"
    assert state.supervisor_active, f"{host}: the supervisor does not run again"
    lock = json.loads(state.lock)
    assert lock["run_id"] == out.run_id and lock["interrupted"]["reason"].startswith("no word from the controller"), lock
    assert (state.version, state.active_root) == (SOURCE, "resin-rootA"), state
    assert state.env.get("resin_root_part") == "2" and state.env.get("upgrade_available", "0") == "0", f"{host}: env {state.env}"
    assert not any(m.endswith("breadcrumb") for m in state.markers), state.markers
    assert "resinhup-free" in out.locks and "writer-free" in out.locks, f"{host}: a lock is still held: {out.locks!r}"
    if disarmed:
        assert "put the env and boot files back for the running OS" in out.fired, out.fired

        def files(label: str) -> dict[str, str]:
            return {n: d for n, d in out.boot[label].items() if n != FINGERPRINT}
        assert files("interrupted") == files("before"), "the old OS's boot files are back"
    rebooted = out.states["rebooted"]
    assert (rebooted.version, rebooted.active_root) == (SOURCE, "resin-rootA"), f"{host}: after a reboot: {rebooted}"
    assert rebooted.supervisor_active


def assert_completed_when_run_again(out: Outcome) -> None:
    again, final = out.runs[-1], out.states["final"]
    assert again.rc == 0, again.summary()
    assert (final.version, final.active_root) == (TARGET, "resin-rootB") and final.committed, final
    assert final.lock == "" and final.supervisor_active, final
    assert not watchdog_pids(out.run_id) and not watchdog_pids("again-" + out.run_id), "the release stops the watchdog"


@pytest.mark.parametrize("step", CUT_KILL_STEPS)
def test_controller_gone_with_the_link(outcomes: Scenarios, step: str) -> None:
    out = outcomes.result(f"cut+kill:{step}")
    assert out.runs[0].triggered_at is not None, out.runs[0].summary()
    assert_taken_over_by_the_watchdog(out, disarmed=step == "switched")
    assert_completed_when_run_again(out)


@pytest.mark.parametrize("step", CUT_STEPS)
def test_link_cut_with_the_controller_waiting(outcomes: Scenarios, step: str) -> None:
    out = outcomes.result(f"cut:{step}")
    run = out.runs[0]
    assert run.rc != 0 and run.triggered_at is not None, run.summary()
    assert_taken_over_by_the_watchdog(out, disarmed=step == "switched")
    assert_completed_when_run_again(out)


def test_link_back_after_the_watchdog_gave_the_run_up(outcomes: Scenarios) -> None:
    out = outcomes.result("back:rootfs")
    run = out.runs[0]
    assert run.rc != 0, run.summary()
    msg = str(run.failures(out.host)[-1].result.get("msg", ""))
    assert "the device's watchdog gave this run up (no word from the controller for " in msg, msg
    assert f"run again with the same run id (hup_run_id={out.run_id}) to resume" in msg, msg
    # the rescue tasks the watchdog refused are not failed cleanups: it did their work
    assert "nothing switched, the device stays on" in msg and "could not" not in msg, msg
    state = out.states["interrupted"]
    # the rescue ran (the watchdog had started the supervisor already): lock released, old OS
    assert state.lock == "" and state.supervisor_active, state
    assert (state.version, state.active_root, state.env.get("upgrade_available", "0")) == (SOURCE, "resin-rootA", "0"), state
    assert "resinhup-free" in out.locks and "writer-free" in out.locks, out.locks
    assert_completed_when_run_again(out)


def test_ctrl_c_leaves_the_watchdog_to_clean_up(outcomes: Scenarios) -> None:
    out = outcomes.result("sigint:fetch")
    run = out.runs[0]
    assert run.rc == 99 and "User interrupted execution" in run.stdout + run.stderr, run.summary()
    assert_taken_over_by_the_watchdog(out)
    assert_completed_when_run_again(out)  # the same run id: the run resumes


def test_failed_reboot_disarms_the_switch(outcomes: Scenarios) -> None:
    """Armed, then the reboot step fails before the device rebooted (its link lost for a moment): the
    rescue disarms, so the device does not switch at some later power cycle with nobody watching."""
    out = outcomes.result("fail:switched")
    run = out.runs[0]
    assert run.rc != 0, run.summary()
    msg = str(run.failures(out.host)[-1].result.get("msg", ""))
    assert "failed at step reboot: " in msg and msg.endswith(f"-- the switch was disarmed before the reboot, the device stays on {SOURCE}"), msg
    assert run.step(out.host, "osfleet.hup.bootenv", 0).changed, "the switch was armed first (else disarming proves nothing)"
    state = out.states["interrupted"]
    assert state.env.get("resin_root_part") == "2" and state.env.get("upgrade_available", "0") == "0", state.env
    assert not any(m.endswith("breadcrumb") for m in state.markers), state.markers
    assert {n: d for n, d in out.boot["interrupted"].items() if n != FINGERPRINT} == {n: d for n, d in out.boot["before"].items() if n != FINGERPRINT}
    assert state.lock == "" and state.supervisor_active and not watchdog_pids(out.run_id), state
    assert "resinhup-free" in out.locks, out.locks
    rebooted = out.states["rebooted"]
    assert (rebooted.version, rebooted.active_root) == (SOURCE, "resin-rootA"), rebooted
    assert_completed_when_run_again(out)


def test_failed_reboot_after_the_watchdog_disarmed_says_so(outcomes: Scenarios) -> None:
    """Armed; the watchdog gave the run up and disarmed while the controller was away; then the
    reboot step is refused. The message says the switch was disarmed (by the watchdog) and that the
    device stays on its old OS, not that the bootloader is armed, and lists no failed cleanup for the
    rescue tasks the watchdog refused (it did their work)."""
    out = outcomes.result("stop:switched")
    run = out.runs[0]
    assert run.rc != 0, run.summary()
    msg = str(run.failures(out.host)[-1].result.get("msg", ""))
    assert "failed at step reboot: " in msg and "the device's watchdog gave this run up (no word from the controller for " in msg, msg
    assert f"-- the switch was disarmed before the reboot (by the device's watchdog), the device stays on {SOURCE}" in msg, msg
    assert "armed for the new OS" not in msg and "could not" not in msg, msg
    assert f"run again with the same run id (hup_run_id={out.run_id}) to resume" in msg, msg
    assert run.step(out.host, "osfleet.hup.bootenv", 0).changed, "the switch was armed first"
    assert "put the env and boot files back for the running OS" in out.fired, out.fired
    state = out.states["interrupted"]
    assert state.env.get("resin_root_part") == "2" and state.env.get("upgrade_available", "0") == "0", state.env
    assert not any(m.endswith("breadcrumb") for m in state.markers), state.markers
    assert {n: d for n, d in out.boot["interrupted"].items() if n != FINGERPRINT} == {n: d for n, d in out.boot["before"].items() if n != FINGERPRINT}
    # the rescue released the lock (the lock step runs also after the watchdog gave the run up)
    assert state.lock == "" and state.supervisor_active, state
    rebooted = out.states["rebooted"]
    assert (rebooted.version, rebooted.active_root) == (SOURCE, "resin-rootA"), rebooted
    assert_completed_when_run_again(out)
