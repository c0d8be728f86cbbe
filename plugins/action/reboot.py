# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.reboot: probe, decide, reboot, wait for a new boot id, report what booted."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.reboot import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.bootenv import boot_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.reconnect import booted_summary, reboot_and_report
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.reboot import RebootArgs, decide_reboot, reboot_diff


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        rargs = RebootArgs.from_args(args, check_mode=self.check_mode)
        dev = probe(session)
        plan = decide_reboot(rargs, dev, boot_state(dev))
        data: dict[str, t.Any] = {"rebooted": plan.reboot, "boot_id_before": dev.boot_id, "boot_id": dev.boot_id, "expected_root": plan.expected_root}
        if not plan.reboot or self.check_mode:
            data["device"] = booted_summary(dev)
            return StepResult(changed=plan.reboot, actions=plan.actions, msg="" if plan.reboot else plan.reason, data=data,
                              diff=reboot_diff(plan, dev) if plan.reboot else None)
        outcome, after = reboot_and_report(session, dev.boot_id, timeout=rargs.timeout, connect_timeout=rargs.connect_timeout)
        data.update(boot_id=outcome.boot_id, elapsed=outcome.elapsed, device=booted_summary(after))
        actions = plan.actions + [f"booted {after.version or '?'} from {after.active_label} in {outcome.elapsed:g} s"]
        if after.active_label != plan.expected_root:
            actions.append(f"the device booted {after.active_label}, not {plan.expected_root} as its env named (the bootloader fell back)")
        return StepResult(changed=True, actions=actions, data=data, diff=reboot_diff(plan, dev, after))
