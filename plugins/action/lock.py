# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.lock: probe, decide, compare-and-swap the lock file, verify."""

from __future__ import annotations

import json
import typing as t

from ansible_collections.osfleet.hup.plugins.modules.lock import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, probe
from ansible_collections.osfleet.hup.plugins.plugin_utils import hooks, watchdog
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.lock import LOCK_NONE, LOCK_REFRESH, LockArgs, decide_lock, holder_text, verify_lock


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    #: the lock step starts, resumes and stops the run's watchdog, also after it gave the run up
    HEARTBEAT = False
    _state: DeviceState | None = None

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        result = self._lock(args, session)
        if not self.check_mode and not result.failed:
            result.data["watchdog"] = self._watchdog(args, session, result)
            if args["state"] == "present" and self._state is not None:
                # a balenaOS device: what "the keep-back files are unchanged" is measured against
                line = hooks.record_keepback(session, self._state)
                if line and result.changed:
                    result.actions.append(line)
        return result

    def _watchdog(self, args: dict[str, t.Any], session: DeviceSession, result: StepResult) -> str:
        """Start the run's watchdog with its lock, stop it with the release."""
        if args["state"] == "absent":
            run_id = (result.data.get("previous") or {}).get("run_id") or args.get("run_id")
            return "stopped" if watchdog.stop(session, run_id) else "none"
        if args["watchdog_timeout"] > 0 and args.get("run_id"):
            return watchdog.start(session, args["run_id"], bound=args["watchdog_timeout"], interval=max(1, args["watchdog_interval"]),
                                  log=args.get("run_log"))
        return "none"

    def _lock(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        largs = LockArgs.from_args(args, check_mode=self.check_mode)
        state = self._state = probe(session, "probe_now")
        plan = decide_lock(largs, state, now=state.extra.get("now"))
        if plan.op == LOCK_NONE or (plan.op == LOCK_REFRESH and self.check_mode):
            return StepResult(data={"lock": plan.before, "previous": plan.before})
        if plan.op == LOCK_REFRESH:  # the same run again: its lock's age starts anew, nothing else changes
            session.run("lock", op=plan.op, expect=plan.expect, doc="{}", what="refreshing the lock")
            return StepResult(data={"lock": plan.before, "previous": plan.before})
        diff = {"before": holder_text(plan.before), "after": holder_text(plan.after)}
        if self.check_mode:
            return StepResult(changed=True, actions=plan.actions, diff=diff, data={"lock": plan.after, "previous": plan.before})
        session.run("lock", op=plan.op, expect=plan.expect, doc=json.dumps(plan.after or {}), what="lock")
        after = probe(session, "probe_now").lock
        problem = verify_lock(largs, plan.op, after)
        if problem:
            raise DeviceError(problem)
        diff["after"] = holder_text(after)
        return StepResult(changed=True, actions=plan.actions, diff=diff, data={"lock": after, "previous": plan.before})
