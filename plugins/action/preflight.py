# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.preflight: one probe (with the registry check), no change."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.preflight import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.lockfile import default_lock_owner
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import ReleaseArgs, open_catalog, release_dict
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.device_info import device_facts
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.preflight import PreflightArgs, RegistryCheck, decide_preflight, registries_to_check


def _facts(state: DeviceState) -> dict[str, t.Any]:
    try:
        return device_facts(state)
    except (DeviceError, ValueError):
        return state.facts()


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    READ_ONLY = True

    def step(self, args: dict[str, t.Any], session: DeviceSession, task_vars: dict[str, t.Any]) -> StepResult:
        catalog = open_catalog(args["catalog"])
        release_args = ReleaseArgs.from_args(args)
        insecure = catalog.insecure_registries if release_args.registry_insecure is None else release_args.registry_insecure
        registries = [{"name": name, "registry": registry} for name, registry in registries_to_check(catalog)]
        state = probe(session, "probe_registry", enabled=args["check_registry"], scheme="http" if insecure else "https",
                      registries=registries)
        checks = [RegistryCheck(str(r["name"]), str(r["registry"]), str(r.get("error", ""))) for r in state.extra.get("registries", [])]
        free = args.get("min_free_mib") or {}
        pargs = PreflightArgs(
            release=release_args,
            allow_downgrade=bool(args["allow_downgrade"]),
            allow_takeover=bool(args["allow_takeover"]),
            check_registry=bool(args["check_registry"]),
            min_free_data_mib=64 if free.get("data") is None else int(free["data"]),
            min_free_state_mib=int(free.get("state") or 0),
            lock_owner=args.get("lock_owner") or default_lock_owner(),
            lock_stale_after=int(args["lock_stale_after"]),
        )
        plan = decide_preflight(pargs, catalog, state, checks, now=state.extra.get("now"))
        data = {
            "phase": plan.phase,
            "method": plan.method,
            "release": release_dict(plan.release) if plan.release else None,
            "problems": plan.problems,
            "registries": [{"name": c.name, "registry": c.registry, "ok": not c.error, "error": c.error} for c in checks],
            "device": _facts(state),
        }
        if plan.problems:
            return StepResult(failed=True, msg="preflight failed: " + "; ".join(plan.problems), data=data)
        return StepResult(msg="; ".join(plan.notes), data=data)
