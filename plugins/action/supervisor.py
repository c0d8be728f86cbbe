# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.supervisor: probe, decide, systemctl / update-balena-supervisor, verify."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.supervisor import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import find_release, open_catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.preflight import registries_to_check
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.supervisor import SUPERVISOR_SERVICE, SupervisorArgs, SupervisorPlan, decide_supervisor
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import parse_version


def _view(state: DeviceState) -> dict[str, t.Any]:
    return {"version": state.running_supervisor, "active": state.services.get(SUPERVISOR_SERVICE) == "active"}


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    REQUIRED_IF = [["state", "updated", ["catalog"]]]

    def step(self, args: dict[str, t.Any], session: DeviceSession, task_vars: dict[str, t.Any]) -> StepResult:
        state = probe(session)
        sargs, insecure = self._args(args, state)
        plan = decide_supervisor(sargs, state)
        result = {"supervisor": {"before": plan.before, "after": plan.before, "active": plan.active, "target": plan.target, "image": None}}
        if plan.error:
            return StepResult(failed=True, msg=plan.error, data=result)
        if plan.op == "none":
            return StepResult(data=result)
        before = _view(state)
        if self.check_mode:
            after = dict(before, active=plan.op != "stop", version=plan.target or before["version"])
            return StepResult(changed=True, actions=plan.actions, diff={"before": before, "after": after}, data=result)
        out = session.run("supervisor", op=plan.op, insecure=insecure, images=plan.images, what=f"supervisor {plan.op}")
        now = probe(session)
        self._verify(plan, now)
        result["supervisor"].update(after=now.running_supervisor, active=_view(now)["active"])
        if plan.op == "update":
            result["supervisor"]["image"] = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else None
        return StepResult(changed=True, actions=plan.actions, diff={"before": before, "after": _view(now)}, data=result)

    @staticmethod
    def _args(args: dict[str, t.Any], state: DeviceState) -> tuple[SupervisorArgs, bool]:
        if args["state"] != "updated":
            return SupervisorArgs(state=args["state"]), False
        catalog = open_catalog(args["catalog"])
        release_version = release_digest = None
        if args.get("target_version"):
            release = find_release(catalog, args.get("device_type") or state.device_type, args["target_version"])
            release_version, release_digest = release.supervisor_version, release.digest
        insecure = catalog.insecure_registries if args.get("registry_insecure") is None else bool(args["registry_insecure"])
        sargs = SupervisorArgs(
            state="updated",
            version=args.get("version"),
            repository=args.get("repository") or catalog.supervisor_repository,
            registries=tuple(registry for _name, registry in registries_to_check(catalog)),
            release_version=release_version,
            release_digest=release_digest,
        )
        return sargs, insecure

    @staticmethod
    def _verify(plan: SupervisorPlan, state: DeviceState) -> None:
        active = state.services.get(SUPERVISOR_SERVICE) == "active"
        if plan.op == "stop" and active:
            raise DeviceError(f"{SUPERVISOR_SERVICE} is still active after stopping it")
        if plan.op == "start" and not active:
            raise DeviceError(f"{SUPERVISOR_SERVICE} is not active after starting it")
        if plan.op == "update":
            running = state.running_supervisor
            if running is None or parse_version(running) < parse_version(str(plan.target)):
                raise DeviceError(f"the supervisor runs {running or 'an unknown version'} after updating it to {plan.target}")
