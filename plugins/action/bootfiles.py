# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.bootfiles: probe (hashes), decide, copy atomically, verify."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.bootfiles import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import apply_ops
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import target_release
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootfiles import decide_bootfiles
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import probe_switch
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    REQUIRED_TOGETHER = [["catalog", "target_version"]]

    def step(self, args: dict[str, t.Any], session: DeviceSession, task_vars: dict[str, t.Any]) -> StepResult:
        dev, sw = probe_switch(session, listed=True)
        release = target_release(args, dev)
        options = {
            "extra_keep": args["extra_keep"] or (),
            "reserve_kib": args["reserve_kib"],
            "expected_digest": release.digest if release else None,
            "assume_staged": self.check_mode,
        }
        plan = decide_bootfiles(dev, sw, **options)
        if plan.changed and not self.check_mode:
            apply_ops(session, plan.ops, what="copying the boot files")
            dev, sw = probe_switch(session, listed=True)
            left = decide_bootfiles(dev, sw, **options)
            if left.changed:
                raise DeviceError(f"the boot files did not converge; still to do: {'; '.join(left.actions)}")
            plan.data["free_after_kib"] = left.data["free_after_kib"]
        return StepResult(changed=plan.changed, actions=plan.actions, diff=plan.diff, data=plan.data)
