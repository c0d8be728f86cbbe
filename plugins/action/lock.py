# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.lock: probe, decide, one device script (the lock's compare-and-swap, the
watchdog, the keep-back record, the lock read back), verify."""

from __future__ import annotations

import json
import typing as t

from ansible_collections.osfleet.hup.plugins.modules.lock import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import json_object, probe
from ansible_collections.osfleet.hup.plugins.plugin_utils import hooks, watchdog
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.lock import LOCK_NONE, LOCK_REFRESH, LockArgs, decide_lock, holder_text, verify_lock


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    #: the lock step starts, resumes and stops the run's watchdog, also after it gave the run up
    HEARTBEAT = False

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        """Probe; decide; then one device script (``scripts/lock_step.sh``) does the lock's
        compare-and-swap, starts or stops the run's watchdog, records the keep-back files on a
        balenaOS device and prints the lock file as it is then, which the step verifies."""
        largs = LockArgs.from_args(args, check_mode=self.check_mode)
        state = probe(session, "probe_now")
        plan = decide_lock(largs, state, now=state.extra.get("now"))
        unchanged = {"lock": plan.before, "previous": plan.before}
        diff = {"before": holder_text(plan.before), "after": holder_text(plan.after)}
        if self.check_mode:
            if plan.op in (LOCK_NONE, LOCK_REFRESH):
                return StepResult(data=unchanged)
            return StepResult(changed=True, actions=plan.actions, diff=diff, data={"lock": plan.after, "previous": plan.before})
        present = args["state"] == "present"
        if present:
            start = args["watchdog_timeout"] > 0 and bool(args.get("run_id"))
            wd_op, wd_run = ("start" if start else "none"), args.get("run_id") if start else None
        else:
            wd_run = (plan.before or {}).get("run_id") or args.get("run_id")
            wd_op = "stop" if wd_run else "none"
        # a balenaOS device: what "the keep-back files are unchanged" is measured against
        record = hooks.KEEPBACK_RECORD if present and hooks.should_record(state) else ""
        what = {LOCK_REFRESH: "refreshing the lock", LOCK_NONE: "the lock step"}.get(plan.op, "lock")
        done = session.run_json(
            "lock_step", what=what, op=plan.op, expect=plan.expect,
            doc="{}" if plan.op == LOCK_REFRESH else json.dumps(plan.after or {}), watchdog=wd_op, run=wd_run or "",
            bound=args["watchdog_timeout"], interval=max(1, args["watchdog_interval"]), log=args.get("run_log") or "", record=record,
            input={"texts": watchdog.script_texts() if wd_op == "start" else {}, "patterns": hooks.keepback_patterns(args["extra_keep"]) if record else []})
        if plan.op in (LOCK_NONE, LOCK_REFRESH):
            # the same run again: its lock's age starts anew, nothing else changes
            result = StepResult(data=dict(unchanged))
        else:
            after = json_object(str(done.get("lock") or ""))
            problem = verify_lock(largs, plan.op, after)
            if problem:
                raise DeviceError(problem)
            diff["after"] = holder_text(after)
            result = StepResult(changed=True, actions=plan.actions, diff=diff, data={"lock": after, "previous": plan.before})
        result.data["watchdog"] = str(done.get("watchdog") or "none")
        if wd_op == "stop":
            line, problem = watchdog.judge_stop(result.data["watchdog"], str(wd_run))
            if line:
                result.actions.append(line)
            if problem:
                result.failed, result.msg = True, problem
        if record and result.changed:
            result.actions.append(hooks.keepback_line(str(done.get("keepback") or "0")))
        return result
