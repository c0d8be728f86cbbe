# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.fetch: probe the image cache, decide the sources, pull, verify."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.fetch import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import ReleaseArgs, open_catalog, resolve_target
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.fetch import FetchArgs, decide_fetch, describe_attempt_errors, fetched_actions
from ansible_collections.osfleet.hup.plugins.plugin_utils.writer import writer_for


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION

    def step(self, args: dict[str, t.Any], session: DeviceSession, task_vars: dict[str, t.Any]) -> StepResult:
        catalog = open_catalog(args["catalog"])
        fargs = FetchArgs(ReleaseArgs.from_args(args), tuple(args["sources"]), args["cache_dir"])
        writer = writer_for()
        cache_probe = writer.cache_probe(fargs.cache_dir)
        state = probe(session, cache_probe.script, **cache_probe.params)
        target = resolve_target(fargs.release, catalog, state)
        plan = decide_fetch(fargs, target, catalog, state, writer.cache_state(fargs.cache_dir, state.extra))
        if plan.error:
            return StepResult(failed=True, msg=plan.error, data={"attempts": []})
        if plan.done:
            cached = plan.cached
            return StepResult(data={
                "source": cached.kind if cached else "inactive",
                "ref": cached.ref if cached else None,
                "digest": cached.digest if cached else target.release.digest,
                "layout": f"{fargs.cache_dir.rstrip('/')}/{cached.name}" if cached else None,
                "bytes": 0,
                "cached": True,
                "attempts": [],
            })
        planned = [{"kind": a.kind, "ref": a.ref, "digest": a.digest} for a in plan.attempts]
        if self.check_mode:
            return StepResult(changed=True, actions=plan.actions, data={"attempts": planned, "bytes": 0, "cached": False})
        script = writer.fetch_script(plan, target.insecure)
        outcome = writer.fetch_outcome(session.run_json(script.script, what="fetch", **script.params))
        if outcome.image is None:
            return StepResult(failed=True, msg=describe_attempt_errors(outcome.attempts), data={"attempts": outcome.attempts})
        after = probe(session, cache_probe.script, **cache_probe.params)
        if writer.cache_state(fargs.cache_dir, after.extra).find(outcome.image.digest) is None:
            raise DeviceError(f"the fetched image {outcome.image.digest} is not in {fargs.cache_dir} after fetching it")
        image = outcome.image
        actions = fetched_actions(plan, target.release.version, outcome.attempts, image)
        return StepResult(changed=True, actions=actions, data={
            "source": image.kind,
            "ref": image.ref,
            "digest": image.digest,
            "layout": f"{fargs.cache_dir.rstrip('/')}/{image.name}",
            "bytes": image.bytes,
            "cached": False,
            "attempts": outcome.attempts,
        })
