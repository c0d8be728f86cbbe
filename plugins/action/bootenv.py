# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.bootenv: probe, decide (armed/committed/rolled_back), write and re-probe (one round trip), verify."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.bootenv import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils import hooks, watchdog
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult, clip, now_iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.bootenv import boot_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, OsfleetError
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import optional_release
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootenv import BootenvArgs, decide_bootenv, needs_listing
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import apply_then_probe_switch, probe_switch


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    REQUIRED_TOGETHER = [["catalog", "target_version"]]

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        listed = needs_listing(args["state"])
        dev, sw = probe_switch(session, listed=listed)
        expected_digest = args["expected_digest"]
        if args["state"] == "armed" and not expected_digest:
            release = optional_release(args, dev)
            expected_digest = release.digest if release else None
        bargs = BootenvArgs.from_args(args, expected_digest)
        now = now_iso()
        plan = decide_bootenv(bargs, dev, sw, now=now, assume_staged=self.check_mode)
        if plan.changed and not self.check_mode and dev.hostapp and plan.pending == hooks.CURRENT_HOOKS:
            # a balenaOS device: the running OS's own hooks put its env and boot files back
            res = session.run("current_hooks", check=False, what=f"running the running OS's hooks ({hooks.CURRENT_HOOKS})")
            if res.rc != 0:
                out = clip(res.stderr.strip() or res.stdout.strip(), 300)
                raise DeviceError(f"the running OS's hooks ({hooks.CURRENT_HOOKS}) failed (exit {res.rc}): {out}")
        if plan.changed and not self.check_mode and dev.hostapp and plan.pending == hooks.PREVIOUS_HOOKS:
            # a revert on a balenaOS device: the old OS's own hooks arm the switch back to it
            res = session.run("previous_hooks", variables="write", check=False, what=f"running {hooks.PREVIOUS_HOOKS}")
            if res.rc != 0:
                out = clip(res.stderr.strip() or res.stdout.strip(), 300)
                raise DeviceError(f"{hooks.PREVIOUS_HOOKS} failed (exit {res.rc}): {out}")
        actions, msg = list(plan.actions), plan.msg
        if plan.changed and not self.check_mode:
            due = bargs.state == "committed" and hooks.commit_hooks_due(dev, plan.ops)
            self.note_failure(acted=True)  # a failed result says the env may be written
            dev, sw = apply_then_probe_switch(session, plan.ops, listed=listed, what=f"writing the bootloader env ({bargs.state})")
            left = decide_bootenv(bargs, dev, sw, now=now)
            if left.changed:
                raise DeviceError(f"the bootloader env did not converge to {bargs.state}; still to do: {'; '.join(left.actions)}")
            if due:
                # a balenaOS device: rollback-stop, then the running OS's commit hooks
                report = hooks.run_commit_hooks(session, actions)
                plan.data["commit_hooks"] = report.as_dict()
                msg = hooks.commit_hooks_msg(report) or msg
        if bargs.state in ("armed", "reverted") and not self.check_mode:
            actions += self._tell_watchdog(session, bargs, dev, sw, now)
        return StepResult(changed=plan.changed, actions=actions, diff=plan.diff, data=plan.data, msg=msg)

    @staticmethod
    def _tell_watchdog(session: DeviceSession, bargs: BootenvArgs, dev: t.Any, sw: t.Any, now: str) -> list[str]:
        """While the armed root has not booted, the run's watchdog must be able to disarm it: hand it
        the operations of state=rolled_back (a controller that goes away before the reboot must not
        leave a device that switches at some later power cycle with nobody watching)."""
        if not session.run_id:
            return []
        try:
            env = boot_state(dev)
            if not (env.upgrade_available and env.root_part == dev.inactive_index):
                return []
            if dev.hostapp:
                return hooks.tell_watchdog(session, dev)
            undo = decide_bootenv(BootenvArgs("rolled_back", None, bargs.extra_keep), dev, sw, now=now)
            if watchdog.store_disarm(session, session.run_id, undo.ops):
                return ["told the device-side watchdog how to disarm the switch if the controller goes away before the reboot"]
        except OsfleetError as exc:
            return [f"could not tell the device-side watchdog how to disarm the switch: {exc}"]
        return []
