# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.lock: probe, decide, compare-and-swap the lock file, verify."""

from __future__ import annotations

import json
import typing as t

from ansible_collections.osfleet.hup.plugins.modules.lock import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.lockfile import default_lock_owner
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.lock import LOCK_NONE, LOCK_REMOVE, LockArgs, decide_lock


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION

    def step(self, args: dict[str, t.Any], session: DeviceSession, task_vars: dict[str, t.Any]) -> StepResult:
        largs = LockArgs(
            state=args["state"],
            owner=args.get("owner") or default_lock_owner(),
            run_id=args.get("run_id"),
            target=args.get("target_version"),
            stale_after=int(args["stale_after"]),
            force=bool(args["force"]),
        )
        state = probe(session, "probe_now")
        plan = decide_lock(largs, state, now=state.extra.get("now"))
        data: dict[str, t.Any] = {"lock": plan.before, "previous": plan.before}
        if plan.error:
            return StepResult(failed=True, msg=plan.error, data=data)
        if plan.op == LOCK_NONE:
            return StepResult(changed=False, data=data)
        diff = {"before": _holder(plan.before), "after": _holder(plan.after)}
        if self.check_mode:
            return StepResult(changed=True, actions=plan.actions, diff=diff, data={"lock": plan.after, "previous": plan.before})
        session.run("lock", op=plan.op, expect=plan.expect, doc=json.dumps(plan.after or {}), what="lock")
        after = probe(session, "probe_now").lock
        self._verify(largs, plan.op, after)
        diff["after"] = _holder(after)
        return StepResult(changed=True, actions=plan.actions, diff=diff, data={"lock": after, "previous": plan.before})

    @staticmethod
    def _verify(largs: LockArgs, op: str, after: dict[str, t.Any] | None) -> None:
        if op == LOCK_REMOVE:
            if after is not None:
                raise DeviceError(f"the lock is still held after removing it: {after}")
            return
        if after is None or after.get("owner") != largs.owner:
            raise DeviceError(f"the lock is not held by {largs.owner} after taking it: {after}")


def _holder(lock: dict[str, t.Any] | None) -> str:
    if not lock:
        return "(no lock)\n"
    shown = {k: lock.get(k) for k in ("owner", "run_id", "since", "target")}
    if shown["since"] is None:
        shown["since"] = "(now)"
    return "".join(f"{k}: {'-' if v is None else v}\n" for k, v in shown.items())
