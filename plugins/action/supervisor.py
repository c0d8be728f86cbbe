# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.supervisor: probe, decide, systemctl / update-balena-supervisor and re-probe (one round trip), verify."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.supervisor import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import act_then_probe, probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import open_catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.supervisor import SupervisorArgs, decide_supervisor, supervisor_view, verify_supervisor


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    REQUIRED_IF = [["state", "updated", ["catalog"]]]

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        catalog = open_catalog(args) if args["state"] == "updated" else None
        state = probe(session)
        plan = decide_supervisor(SupervisorArgs.from_args(args, catalog, state), state)
        result = {"supervisor": plan.view()}
        if plan.op == "none":
            return StepResult(data=result)
        before = supervisor_view(state)
        if self.check_mode:
            after = dict(before, active=plan.op != "stop", version=plan.target or before["version"])
            return StepResult(changed=True, actions=plan.actions, diff={"before": before, "after": after}, data=result)
        # the act and the probe that verifies it in one round trip
        out, now = act_then_probe(session, "supervisor", {"op": plan.op, "insecure": plan.insecure, "images": plan.images},
                                  what=f"supervisor {plan.op}")
        problem = verify_supervisor(plan, now)
        if problem:
            raise DeviceError(problem)
        result["supervisor"].update(after=now.running_supervisor, active=supervisor_view(now)["active"])
        if plan.op == "update":
            result["supervisor"]["image"] = out.strip().splitlines()[-1] if out.strip() else None
        return StepResult(changed=True, actions=plan.actions, diff={"before": before, "after": supervisor_view(now)}, data=result)
