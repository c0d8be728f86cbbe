# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.bootfiles: probe (hashes), decide, copy atomically and re-probe (one round trip), verify."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.bootfiles import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils import hooks
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import optional_release
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootfiles import BootfilesArgs, decide_bootfiles
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import apply_then_probe_switch, probe_switch


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    REQUIRED_TOGETHER = [["catalog", "target_version"]]

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        dev, sw = probe_switch(session, listed=True)
        release = optional_release(args, dev)
        bargs = BootfilesArgs.from_args(args, release.digest if release else None)
        plan = decide_bootfiles(bargs, dev, sw, assume_staged=self.check_mode)
        if plan.changed and not self.check_mode:
            dev, sw = apply_then_probe_switch(session, plan.ops, listed=True, what="copying the boot files")
            left = decide_bootfiles(bargs, dev, sw)
            if left.changed:
                raise DeviceError(f"the boot files did not converge; still to do: {'; '.join(left.actions)}")
            plan.data["free_after_kib"] = left.data["free_after_kib"]
        actions = list(plan.actions)
        if dev.hostapp and not self.check_mode:
            actions += hooks.tell_watchdog(session, dev)
        return StepResult(changed=plan.changed, actions=actions, diff=plan.diff, data=plan.data, msg=plan.msg)
