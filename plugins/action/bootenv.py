# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.bootenv: probe, decide (armed/committed/rolled_back), write, verify."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.bootenv import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult, now_iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import apply_ops
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import optional_release
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootenv import BootenvArgs, decide_bootenv, needs_listing
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import probe_switch


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
        if plan.changed and not self.check_mode:
            apply_ops(session, plan.ops, what=f"writing the bootloader env ({bargs.state})")
            dev, sw = probe_switch(session, listed=listed)
            left = decide_bootenv(bargs, dev, sw, now=now)
            if left.changed:
                raise DeviceError(f"the bootloader env did not converge to {bargs.state}; still to do: {'; '.join(left.actions)}")
        return StepResult(changed=plan.changed, actions=plan.actions, diff=plan.diff, data=plan.data, msg=plan.msg)
