# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.health: classify the booted device, wait for it to settle, run the
checks, then commit (rollback-stop) or roll back and reboot."""

from __future__ import annotations

import math
import typing as t

from ansible_collections.osfleet.hup.plugins.modules.health import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils import hooks, reconnect
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult, clip, device_wait_seconds, now_iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.bootenv import boot_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, OsfleetError, error_text
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import apply_ops
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import optional_release
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps import health
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootenv import plan_after_previous_hooks, plan_commit, plan_rollback
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import SwitchProbe, apply_then_probe_switch, probe_switch, wait_then_probe_switch

#: the most one waiting call waits on the device for a settling device to move (it ends as soon as
#: what the step classifies the device by moves, scripts/health_wait.sh)
DEVICE_WAIT = 5
OUTPUT_LIMIT = 2000


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    clock: reconnect.Clock = reconnect.SYSTEM_CLOCK

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        clock = self.clock
        start = clock.monotonic()
        deadline = start + args["device_timeout"]
        session.set_connect_timeout(args["connect_timeout"])
        # the first look at the device also names the release (its device type): no probe of its own
        first = self._look(session, deadline, 0, "", "")
        hargs = health.HealthArgs.from_args(args, self._expected_version(args, first[0]))
        dev, view, waited_for_rollback_health = self._settle(session, hargs.expected_version, deadline, first)
        data: dict[str, t.Any] = {"rolled_back": False, "device": reconnect.booted_summary(dev), "waited": round(clock.monotonic() - start, 2)}
        if self.check_mode:
            changed, actions = health.health_preview(view, hargs.expected_version, commands=len(hargs.commands), commit=hargs.commit,
                                                     rollback=hargs.rollback, device_timeout=hargs.device_timeout, hostapp=dev.hostapp)
            data["committed"] = view.kind == health.READY and view.committed
            # a commit of the device as it stands: its diff is the one the real commit shows
            diff = plan_commit(*probe_switch(session, listed=False)).diff if changed else None
            return StepResult(changed=changed, actions=actions, data=data, diff=diff)
        if view.kind == health.ROLLED_BACK:
            data.update(rolled_back=True, rollback_reason=view.reason or "unknown")
            return StepResult(failed=True, msg=view.msg, data=data)
        if view.kind != health.READY:
            return StepResult(failed=True, msg=view.msg, data=data)
        checks = [self._check(session, cmd, hargs.retries, hargs.delay) for cmd in hargs.commands]
        if checks:
            data["checks"] = [c.as_dict() for c in checks]
        decision = health.decide_after_checks(checks, committed=view.committed, commit=hargs.commit, rollback=hargs.rollback)
        if decision == "none":
            data["committed"] = view.committed
            data["committed_by"] = health.committed_by(view, waited_for_rollback_health=waited_for_rollback_health,
                                                       rollback_health_state=dev.rollback_health_state)
            return StepResult(changed=False, data=data, msg=health.COMMITTED_TEXT.get(data["committed_by"] or "", ""))
        if decision == "commit":
            return self._commit(session, data)
        failed = health.failed_checks_text(checks)
        if decision == "fail":
            data["committed"] = view.committed
            return StepResult(failed=True, msg=f"health checks failed (no rollback: rollback=false): {failed}", data=data)
        if dev.hostapp:
            return self._rollback_hostapp(session, hargs, failed, data, dev)
        return self._rollback(session, hargs, failed, data)

    @staticmethod
    def _expected_version(args: dict[str, t.Any], dev: DeviceState) -> str | None:
        """expected_version, else target_version (as the catalog spells it for the device's type when
        a catalog is given)."""
        if args["expected_version"] or not args["target_version"]:
            return args["expected_version"] or None
        if not args["catalog"]:
            return str(args["target_version"])
        release = optional_release(args, dev)
        return release.version if release else str(args["target_version"])

    # --- waiting -----------------------------------------------------------------------------------

    def _look(self, session: DeviceSession, deadline: float, seconds: int, since: str, boot: str) -> tuple[DeviceState, SwitchProbe, str]:
        """The device's state after waiting up to ``seconds`` on the device for it to move (0: at
        once), and the fingerprint to wait on next; connection errors retried until ``deadline``."""
        return reconnect.retry_until(
            lambda: wait_then_probe_switch(session, seconds=seconds, since=since, boot=boot),
            session, deadline=deadline, what="the device did not answer", clock=self.clock,
        )

    def _settle(self, session: DeviceSession, expected: str | None, deadline: float,
                first: tuple[DeviceState, SwitchProbe, str]) -> tuple[DeviceState, health.HealthView, bool]:
        """Probe until the device is rolled back, ready, or clearly wrong; wait while it settles
        (on the device, until what the step reads moves: one round trip a change, or every
        DEVICE_WAIT seconds). ``first`` is the step's first look (no wait). The flag: whether the
        step waited for the device's rollback-health."""
        waited_for_rollback_health = False
        seconds, since, boot = 0, "", ""
        look: tuple[DeviceState, SwitchProbe, str] | None = first
        while True:
            dev, sw, since = look or self._look(session, deadline, seconds, since, boot)
            look = None
            boot = dev.boot_id
            view = health.classify_health(dev, sw, boot_state(dev), expected)
            if view.kind != health.WAIT or self.check_mode:
                return dev, view, waited_for_rollback_health
            waited_for_rollback_health = waited_for_rollback_health or view.proceed_on_timeout or view.device_commits
            left = deadline - self.clock.monotonic()
            if left <= 0:
                if view.proceed_on_timeout:
                    return dev, health.HealthView(health.READY, committed=False), False
                raise DeviceError(f"the device did not settle within the device_timeout: {view.msg}")
            seconds = device_wait_seconds(session.exec_timeout, min(DEVICE_WAIT, math.ceil(left)))

    # --- checks ------------------------------------------------------------------------------------

    def _check(self, session: DeviceSession, command: str, retries: int, delay: int) -> health.CheckResult:
        result = health.CheckResult(command, None)
        for attempt in range(1, max(retries, 0) + 2):
            try:
                res = session.run_command(command, check=False, what=f"health check {command!r}")
                result = health.CheckResult(command, res.rc, res.stdout[-OUTPUT_LIMIT:], res.stderr[-OUTPUT_LIMIT:], attempt)
            except Exception as exc:  # pylint: disable=broad-exception-caught
                if not reconnect.transient(exc):
                    raise
                result = health.CheckResult(command, None, "", f"connection failed: {error_text(exc)}"[:OUTPUT_LIMIT], attempt)
                session.reset_connection()
            if result.ok:
                break
            if attempt <= retries:
                self.clock.sleep(delay)
        return result

    # --- commit / rollback ---------------------------------------------------------------------------

    def _commit(self, session: DeviceSession, data: dict[str, t.Any]) -> StepResult:
        dev, sw = probe_switch(session, listed=False)
        plan = plan_commit(dev, sw)
        due = hooks.commit_hooks_due(dev, plan.ops)
        # the commit and the probe that verifies it in one round trip
        dev, sw = apply_then_probe_switch(session, plan.ops, listed=False, what="committing the update")
        if plan_commit(dev, sw).changed:
            raise DeviceError("the commit did not converge (the env or the breadcrumbs are still armed)")
        actions, msg = list(plan.actions), ""
        if due:
            # a balenaOS device: rollback-stop, then the running OS's commit hooks (rollback-health's way)
            report = hooks.run_commit_hooks(session, actions)
            data["commit_hooks"] = report.as_dict()
            msg = hooks.commit_hooks_msg(report)
        data.update(committed=True, committed_by=health.BY_STEP, device=reconnect.booted_summary(dev))
        return StepResult(changed=plan.changed, actions=actions, diff=plan.diff, data=data, msg=msg)

    def _rollback_hostapp(self, session: DeviceSession, hargs: health.HealthArgs, failed: str, data: dict[str, t.Any], dev: DeviceState) -> StepResult:
        """A balenaOS device: the previous OS's own hooks put it back (rollback-health's way), then
        rollback-stop's effects and the record, then the reboot."""
        old_root = dev.inactive_label
        res = session.run("previous_hooks", variables="keep", check=False, what=f"running {hooks.PREVIOUS_HOOKS}")
        if res.rc != 0:
            out = clip(res.stderr.strip() or res.stdout.strip(), 300)
            msg = f"health checks failed: {failed}; the rollback to {old_root} did not complete: {hooks.PREVIOUS_HOOKS} failed (exit {res.rc}): {out}"
            return StepResult(changed=True, failed=True, msg=msg, data={**data, "rolled_back": False, "rollback_reason": "checks"})
        dev, sw = probe_switch(session, listed=False)
        try:
            plan = plan_after_previous_hooks(dev, sw, reason="checks", now=now_iso())
            apply_ops(session, plan.ops, what="rolling back")
            outcome, after = reconnect.reboot_and_report(
                session, dev.boot_id, timeout=hargs.reboot_timeout, connect_timeout=hargs.connect_timeout, clock=self.clock
            )
        except OsfleetError as exc:
            msg = f"health checks failed: {failed}; the rollback to {old_root} did not complete: {exc}"
            return StepResult(changed=True, failed=True, msg=msg, data={**data, "rolled_back": False, "rollback_reason": "checks"})
        old_version = plan.data["rollback_to"]["version"]
        msg = f"health checks failed: {failed}; rolled back to {old_version} on {old_root}"
        if after.active_label != old_root:
            msg = f"health checks failed: {failed}; rolled back to {old_root} but the device booted {after.active_label}"
        actions = plan.actions + [f"rebooted in {outcome.elapsed:g} s into {after.version or '?'} on {after.active_label}"]
        data.update(rolled_back=after.active_label == old_root, rollback_reason="checks", committed=False,
                    device=reconnect.booted_summary(after), boot_id=outcome.boot_id)
        return StepResult(changed=True, failed=True, actions=actions, diff=plan.diff, msg=msg, data=data)

    def _rollback(self, session: DeviceSession, hargs: health.HealthArgs, failed: str, data: dict[str, t.Any]) -> StepResult:
        dev, sw = probe_switch(session, listed=True)
        plan = plan_rollback(dev, sw, target_index=dev.inactive_index, reason="checks", now=now_iso(), extra_keep=hargs.extra_keep)
        old_root, old_version = plan.data["rollback_to"]["root"], plan.data["rollback_to"]["version"]
        msg = f"health checks failed: {failed}; rolled back to {old_version} on {old_root}"
        try:
            apply_ops(session, plan.ops, what="rolling back")
            outcome, after = reconnect.reboot_and_report(
                session, dev.boot_id, timeout=hargs.reboot_timeout, connect_timeout=hargs.connect_timeout, clock=self.clock
            )
        except OsfleetError as exc:
            msg = f"health checks failed: {failed}; the rollback to {old_root} did not complete: {exc}"
            return StepResult(changed=True, failed=True, actions=plan.actions, diff=plan.diff, msg=msg,
                              data={**data, "rolled_back": False, "rollback_reason": "checks"})
        actions = plan.actions + [f"rebooted in {outcome.elapsed:g} s into {after.version or '?'} on {after.active_label}"]
        data.update(rolled_back=after.active_label == old_root, rollback_reason="checks", committed=False,
                    device=reconnect.booted_summary(after), boot_id=outcome.boot_id)
        if after.active_label != old_root:
            msg = f"health checks failed: {failed}; rolled back to {old_root} but the device booted {after.active_label}"
        return StepResult(changed=True, failed=True, actions=actions, diff=plan.diff, msg=msg, data=data)
