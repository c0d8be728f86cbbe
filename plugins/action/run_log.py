# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.run_log: the outcome line, rotation, the controller's copy."""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import typing as t

from ansible_collections.osfleet.hup.plugins.modules.run_log import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult, now_iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.run_log import copy_path, outcome_entry, rotation


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    #: the outcome line is this step's own work; the base does not add a line of its own
    LOGS_ITSELF = True
    #: it ends the log also of a run whose watchdog gave it up (the rescue's last step)
    HEARTBEAT = False

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        path = args.get("run_log")
        data: dict[str, t.Any] = {"exists": False, "entry": None, "removed": [], "copied_to": None, "lines": 0}
        if not path:
            return StepResult(actions=["no run log given: nothing to end"], data=data)
        entry = {"time": now_iso(), **self.run_log_fields(args), **outcome_entry(args["outcome"], args["msg"], args.get("failed_step"))}
        data["entry"] = entry
        if self.check_mode:
            copy = f" and keep a copy in {args['copy_to']}" if args.get("copy_to") else ""
            # the real run's steps have written the log by then (check mode's write none): it appends, a change
            line = json.dumps(entry, sort_keys=True)
            return StepResult(changed=True, actions=[f"would append the outcome ({args['outcome']}) to {path} when the run wrote it, "
                                                     f"keep the newest {args['keep']} run logs{copy}"], data=data,
                              diff={"before": f"# {path}: the lines of this run's steps\n", "after": f"# {path}: the lines of this run's steps\n{line}\n"})
        out = session.run_json("run_log_end", path=str(path), entry=json.dumps(entry, sort_keys=True), what="ending the run log")
        if not out.get("exists"):
            return StepResult(actions=[f"no log of this run on the device ({path}): nothing to end"], data=data)
        log_text = str(out.get("log") or "")
        data.update(exists=True, lines=len([ln for ln in log_text.splitlines() if ln.strip()]))
        actions = [f"appended the outcome ({args['outcome']}) to {path}"]
        plan = rotation(str(out.get("listing") or ""), posixpath.basename(str(path)), int(args["keep"]))
        if plan.remove:
            session.run("run_log_rotate", dir=posixpath.dirname(str(path)), names="\n".join(plan.remove), what="rotating the run logs")
            data["removed"] = plan.remove
            actions.append(f"removed {len(plan.remove)} old run log(s), keeping the newest {args['keep']}")
        if args.get("copy_to"):
            host = session.host
            target = copy_path(str(args["copy_to"]), host, str(path), os.getcwd())
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".run-log-")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(log_text)
            os.replace(tmp, target)
            data["copied_to"] = target
            actions.append(f"kept a copy in {target}")
        return StepResult(changed=True, actions=actions, data=data)
