# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.fetch: probe the image cache, decide the sources, pull, verify."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.fetch import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import Target, inactive_is_target, open_catalog, resolve_target
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.fetch import (
    FetchArgs, decide_fetch, describe_attempt_errors, fetch_diff, fetched_actions, fetched_result, planned_result,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.hostapp import hostapp_attempts, hostapp_fetch_actions
from ansible_collections.osfleet.hup.plugins.plugin_utils.writer import ExportWriter, HostappWriter, writer_for


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        catalog = open_catalog(args)
        fargs = FetchArgs.from_args(args)
        cache_probe = ExportWriter().cache_probe(fargs.cache_dir)
        state = probe(session, cache_probe.script, **cache_probe.params)
        target = resolve_target(fargs.release, catalog, state)
        writer = writer_for(state, args["writer"])
        if isinstance(writer, HostappWriter):
            return hostapp_fetch(fargs, target, catalog, state)
        plan = decide_fetch(fargs, target, catalog, state, writer.cache_state(fargs.cache_dir, state.extra))
        if plan.done:
            return StepResult(data=fetched_result(fargs.cache_dir, plan.cached, target.release.digest))
        if self.check_mode:
            return StepResult(changed=True, actions=plan.actions, data=planned_result(plan), diff=fetch_diff(plan, target.release.version))
        script = writer.fetch_script(plan, target.insecure)
        outcome = writer.fetch_outcome(session.run_json(script.script, what="fetch", **script.params))
        if outcome.image is None:
            raise DeviceError(describe_attempt_errors(outcome.attempts), attempts=outcome.attempts)
        after = probe(session, cache_probe.script, **cache_probe.params)
        if writer.cache_state(fargs.cache_dir, after.extra).find(outcome.image.digest) is None:
            raise DeviceError(f"the fetched image {outcome.image.digest} is not in {fargs.cache_dir} after fetching it")
        actions = fetched_actions(plan, target.release.version, outcome.attempts, outcome.image)
        return StepResult(changed=True, actions=actions, diff=fetch_diff(plan, target.release.version, outcome.image),
                          data=fetched_result(fargs.cache_dir, outcome.image, outcome.image.digest, outcome.attempts))


def hostapp_fetch(fargs: FetchArgs, target: Target, catalog: Catalog, state: DeviceState) -> StepResult:
    """A balenaOS device: nothing is fetched ahead (hostapp-update wipes the inactive engine before
    it pulls); the result names the source the rootfs step's hostapp-update tries first, the same in
    check mode and in a real run."""
    data = dict(fetched_result(fargs.cache_dir, None, target.release.digest), writer="hostapp")
    if inactive_is_target(target, state):
        return StepResult(data=data)
    attempts = hostapp_attempts(target, catalog, state, fargs.sources)
    first = attempts[0]
    data.update(source=first.kind, ref=first.ref, digest=first.digest, cached=False,
                attempts=[a.as_dict() for a in attempts])
    return StepResult(actions=hostapp_fetch_actions(target.release.version, attempts), data=data)
