# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.preflight: one probe (with the registry check), no change."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.preflight import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import open_catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.preflight import (
    PreflightArgs,
    decide_preflight,
    parse_registry_checks,
    registry_check_missing,
    registry_check_skipped,
    registry_skip_versions,
)


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    READ_ONLY = True
    FIRST_CONTACT = True

    def logs_result(self, result: t.Mapping[str, t.Any]) -> bool:
        """A device that already runs the target gets no run log from this run (a no-op makes no file)."""
        return bool(result.get("failed")) or result.get("phase") != "current"

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        catalog = open_catalog(args)
        free_defaults = {name: opt["default"] for name, opt in self.argument_spec["min_free_mib"]["options"].items()}
        pargs = PreflightArgs.from_args(args, free_defaults)
        insecure = catalog.registry_insecure(pargs.release.registry_insecure)
        registries = [{"name": name, "registry": registry} for name, registry in catalog.ordered_registries]
        scheme = "http" if insecure else "https"
        # a device that already runs the target is spared the registry check (a no-op pulls nothing) ...
        state = probe(session, "probe_registry", enabled=pargs.check_registry, scheme=scheme,
                      unless_versions=registry_skip_versions(pargs, catalog), registries=registries)
        checks = parse_registry_checks(state.extra)
        plan = decide_preflight(pargs, catalog, state, checks, now=state.extra.get("now"))
        if registry_check_missing(pargs, plan, registry_check_skipped(state.extra)):
            # ... unless its update pulls after all (its supervisor is behind): a second round trip
            extra = session.run_json("probe_registry", what="registry check", enabled=True, scheme=scheme, unless_versions="",
                                     registries=registries)
            checks = parse_registry_checks(extra)
            plan = decide_preflight(pargs, catalog, state, checks, now=state.extra.get("now"))
        if plan.problems:
            return StepResult(failed=True, msg="preflight failed: " + "; ".join(plan.problems), data=plan.result(checks, state))
        return StepResult(msg="; ".join(plan.notes), data=plan.result(checks, state))
