# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.bootenv: probe, decide (armed/committed/rolled_back), write, verify."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.bootenv import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult, now_iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import apply_ops
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import target_release
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootenv import decide_bootenv, needs_listing
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import probe_switch
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    REQUIRED_TOGETHER = [["catalog", "target_version"]]

    def step(self, args: dict[str, t.Any], session: DeviceSession, task_vars: dict[str, t.Any]) -> StepResult:
        state = args["state"]
        listed = needs_listing(state)
        dev, sw = probe_switch(session, listed=listed)
        expected_digest = args["expected_digest"]
        if state == "armed" and not expected_digest:
            release = target_release(args, dev)
            expected_digest = release.digest if release else None
        options = {
            "state": state,
            "expected_digest": expected_digest,
            "extra_keep": args["extra_keep"] or (),
            "now": now_iso(),
            "assume_staged": self.check_mode,
        }
        plan = decide_bootenv(dev, sw, **options)
        if plan.changed and not self.check_mode:
            apply_ops(session, plan.ops, what=f"writing the bootloader env ({state})")
            dev, sw = probe_switch(session, listed=listed)
            left = decide_bootenv(dev, sw, **options)
            if left.changed:
                raise DeviceError(f"the bootloader env did not converge to {state}; still to do: {'; '.join(left.actions)}")
        return StepResult(changed=plan.changed, actions=plan.actions, diff=plan.diff, data=plan.data, msg=plan.msg)
