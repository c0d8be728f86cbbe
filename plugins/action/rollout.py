# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.rollout: the rollout's state directory (plugin_utils.rollout_store)
driven by the pure decisions of plugin_utils.rollout."""

from __future__ import annotations

import os
import re
import time
import typing as t

from ansible_collections.osfleet.hup.plugins.modules.rollout import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal_store
from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout as ro
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.controller_action import ControllerAction
from ansible_collections.osfleet.hup.plugins.plugin_utils.report import iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout_store import RolloutDir, default_dir, operator

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: a record keeps this many earlier statuses (when, status, reason)
HISTORY = 20


def _need(args: dict[str, t.Any], *names: str) -> None:
    missing = [n for n in names if args.get(n) in (None, "")]
    if missing:
        raise ro.RolloutError(f"phase {args['phase']} needs {', '.join(missing)}")


def summary(plan: dict[str, t.Any], state: dict[str, t.Any], records: dict[str, dict[str, t.Any]]) -> dict[str, t.Any]:
    """Each wave with its counts, status and reason; the rollout's status."""
    waves = []
    for wave in plan["waves"]:
        mine = (state.get("waves") or {}).get(wave["name"]) or {}
        waves.append({
            "name": wave["name"], "order": wave["order"], "hosts": wave["hosts"], "limit": wave["limit"],
            "allowed_failures": wave["allowed_failures"], "counts": ro.counts_of(wave, records),
            "status": mine.get("status", "pending"), "reason": mine.get("reason"),
            "bake_until": iso(mine["bake_until"]) if mine.get("bake_until") else None,
        })
    lines = []
    for wave in waves:
        counts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in wave["counts"].items() if n)
        lines.append(f"wave {wave['order']} {wave['name']}: {len(wave['hosts'])} device(s) ({', '.join(wave['hosts']) or 'none'}), "
                     f"{wave['limit']}; {wave['status']}" + (f" until {wave['bake_until']}" if wave["status"] == "baking" else "")
                     + (f" ({counts})" if counts else ""))
    lines.append(f"rollout {plan['id']} to {plan['target_version']}: {state.get('status', 'planned')}"
                 + (f" ({state['reason']})" if state.get("reason") else ""))
    return {"status": state.get("status", "planned"), "reason": state.get("reason"), "waves": waves,
            "unplanned": plan.get("unplanned", []), "lines": lines}


def plan_summary(plan: dict[str, t.Any], state: dict[str, t.Any], records: dict[str, dict[str, t.Any]],
                 planned: dict[str, t.Any]) -> dict[str, t.Any]:
    """:func:`summary` with a line per device: what its update would do (the role's check mode), and the totals."""
    out = summary(plan, state, records)
    lines, total_bytes, updates, errors = [], 0, 0, 0
    for wave, line in zip(out["waves"], out["lines"]):
        lines.append(line)
        for host in wave["hosts"]:
            mine = planned.get(host) or {}
            status = (records.get(host) or {}).get("status")
            if status in ro.DONE:
                lines.append(f"  {host}: {status} already")
            elif not mine:
                lines.append(f"  {host}: not checked (outside --limit, or unreachable)")
            elif mine.get("error"):
                errors += 1
                method = mine.get("method") if mine.get("method") not in (None, "", "?") else None
                lines.append(f"  {host}: would fail" + (f" (method {method}" + (f" [rule: {mine['rule']}]" if mine.get("rule") else "") + ")" if method else "")
                             + f": {mine['error']}")
            elif mine.get("phase") == "current":
                lines.append(f"  {host}: already on {plan['target_version']} (method {mine.get('method')})")
            else:
                updates += 1
                total_bytes += int(mine.get("bytes") or 0)
                lines.append(f"  {host}: method {mine.get('method')}" + (f" [rule: {mine['rule']}]" if mine.get("rule") else "")
                             + f", source {mine.get('source')}, {int(mine.get('bytes') or 0)} bytes to download")
    lines.append(f"plan: {len(plan['fleet'])} device(s) in {len(plan['waves'])} wave(s), {updates} to update "
                 f"({total_bytes} bytes to download), {errors} would fail" + (f", {len(plan['unplanned'])} in no wave" if plan["unplanned"] else ""))
    lines.extend(out["lines"][len(out["waves"]):])
    return {**out, "lines": lines, "bytes": total_bytes, "updates": updates, "errors": errors}


#: a device record's status as the report's outcome (plugin_utils.report.OUTCOMES)
REPORT_OUTCOME = {"committed": "committed", "current": "current", "failed": "failed", "deferred": "deferred",
                  "in_progress": "incomplete", "pending": "skipped"}


def report_stats(plan: dict[str, t.Any], state: dict[str, t.Any], records: dict[str, dict[str, t.Any]], run: str | None,
                 rdir: str) -> dict[str, t.Any]:
    """What the report callback gets (set_stats osfleet_hup): the rollout, its waves with their
    verdicts, and the word for every device this run did not update (or deferred)."""
    waves, devices = {}, {}
    for wave in plan["waves"]:
        mine = (state.get("waves") or {}).get(wave["name"]) or {}
        waves[wave["name"]] = {"order": wave["order"], "devices": wave["hosts"], "halted": mine.get("status") == "halted",
                               "reason": ro.wave_decision(wave, mine),
                               "status": mine.get("status", "pending"), "max_failures": wave["max_failures"],
                               "limit": wave["limit"]}
        for host in wave["hosts"]:
            record = records.get(host) or {}
            status = str(record.get("status") or "pending")
            if run is None or (record.get("run") == run and status != "deferred"):
                devices[host] = {"wave": wave["name"]}
                continue
            text = {"pending": "not started (its wave did not run)", "deferred": "deferred (unreachable before any change)",
                    "committed": "committed (in an earlier run)", "current": "already current (in an earlier run)",
                    "failed": "failed (in an earlier run)", "in_progress": "in progress (an earlier run ended before it)"}[status]
            devices[host] = {"wave": wave["name"], "outcome": REPORT_OUTCOME[status], "outcome_text": text,
                             "reason": record.get("reason") or None}
    rollout = {"id": plan["id"], "dir": rdir, "target_version": plan["target_version"], "digest": plan["digest"],
               "status": state.get("status"), "reason": state.get("reason")}
    return {"rollout": rollout, "waves": waves, "devices": devices}


class ActionModule(ControllerAction):
    """osfleet.hup.rollout"""

    DOCUMENTATION = DOCUMENTATION

    def step(self, args: dict[str, t.Any]) -> StepResult:
        if not _ID.match(args["rollout_id"] or ""):
            raise ro.RolloutError(f"hup_rollout_id {args['rollout_id']!r}: letters, digits, '.', '_' and '-' (a file name)")
        self.rdir = RolloutDir(args.get("dir") or default_dir(args["rollout_id"]))
        self.pid = os.getppid()  # ansible-playbook: the worker's parent, the same in every play of the run
        self.dry = self.check_mode or args["action"] == "plan"
        return t.cast(StepResult, getattr(self, "phase_" + args["phase"])(args))

    # -- start
    def _new_plan(self, args: dict[str, t.Any]) -> dict[str, t.Any]:
        _need(args, "target_version", "waves")
        waves = ro.parse_waves(args["waves"])
        fleet = sorted(dict.fromkeys(args.get("fleet") or []))
        if not fleet:
            raise ro.RolloutError("the rollout has no devices (hup_hosts matches no host of the inventory)")
        members, unplanned = ro.assign(waves, fleet, args.get("pattern_hosts") or {})
        return {
            "schema": 1, "id": args["rollout_id"], "target_version": args["target_version"],
            "digest": ro.spec_digest(args["target_version"], args["waves"], fleet),
            "created": iso(time.time()), "created_by": operator(), "fleet": fleet,
            "waves": [ro.wave_dict(w, members[w.name], i + 1) for i, w in enumerate(waves)],
            "unplanned": unplanned,
        }

    @staticmethod
    def _differs(old: dict[str, t.Any], new: dict[str, t.Any]) -> str:
        what = []
        if old.get("target_version") != new["target_version"]:
            what.append(f"the target changed from {old.get('target_version')} to {new['target_version']}")
        if [w["name"] for w in old["waves"]] != [w["name"] for w in new["waves"]] or any(
                {k: v for k, v in a.items() if k != "hosts"} != {k: v for k, v in b.items() if k != "hosts"}
                for a, b in zip(old["waves"], new["waves"])):
            what.append("the waves changed")
        added, gone = sorted(set(new["fleet"]) - set(old["fleet"])), sorted(set(old["fleet"]) - set(new["fleet"]))
        if added:
            what.append(f"devices were added ({', '.join(added[:5])}{', ...' if len(added) > 5 else ''})")
        if gone:
            what.append(f"devices were removed ({', '.join(gone[:5])}{', ...' if len(gone) > 5 else ''})")
        return "; ".join(what) or "the spec changed"

    def _run_token(self) -> str:
        """This run: its ansible-playbook pid and the time it took the lock."""
        holder = self.rdir.lock_holder() if os.path.isdir(self.rdir.path) else None
        return f"{self.pid}@{(holder or {}).get('since', '')}"

    def phase_start(self, args: dict[str, t.Any]) -> StepResult:
        new = self._new_plan(args)
        old = self.rdir.plan()
        notes: list[str] = []
        if old and old.get("digest") != new["digest"] and args["action"] != "replan":
            if not self.dry:
                raise ro.RolloutError(f"rollout {args['rollout_id']}: {self._differs(old, new)} since the plan was frozen "
                                      f"({old.get('created')}, {self.rdir.file('plan.json')}); run with "
                                      "hup_rollout_action=replan to freeze a new plan (done devices stay done)")
            notes.append(f"the frozen plan differs ({self._differs(old, new)}): shown is the plan a replan would freeze")
        plan = new if not old or args["action"] == "replan" or old.get("digest") != new["digest"] else old
        state = self.rdir.state()
        records = self.rdir.records(plan["fleet"])
        # hup_require_rehearsal: refuses (naming the pairs without evidence) before anything is written
        gate, gate_lines = rehearsal_store.gate_rollout(args.get("rehearsal"), plan, records, self.dry, time.time(), args["action"],
                                                        bool(state.get("waves")))
        notes.extend(gate_lines)
        gated = {"rehearsal": gate} if gate is not None else {}
        if self.dry:
            return StepResult(changed=False, msg=f"plan of rollout {args['rollout_id']} (nothing written)",
                              data={"plan": plan, "summary": summary(plan, state, records), "notes": notes, "dir": self.rdir.path, **gated})
        took = self.rdir.acquire(self.pid, args["rollout_id"])
        if took:
            notes.append(took)
        if gate is not None and gate.get("required"):
            # the evidence this run started on, in the rollout's own directory (the sign-off's trail)
            self.rdir.save("rehearsal.json", gate)
        changed = False
        if not old or args["action"] == "replan":
            self.rdir.save("plan.json", plan)
            notes.append(("froze a new plan" if old else "froze the plan") + f" ({plan['digest']})")
            changed = True
        waves = state.setdefault("waves", {})
        history = state.setdefault("history", [])
        action = args["action"]
        if action == "abort":
            state.update(status="aborted", reason=f"aborted by {operator()} at {iso(time.time())}")
        elif action in ("resume", "retry_failed"):
            for wave in plan["waves"]:
                mine = waves.get(wave["name"]) or {}
                if mine.get("status") in ("halted", "inconclusive"):
                    failed = ro.counts_of(wave, records)["failed"]
                    mine.update(status="running", acknowledged=failed if action == "resume" else 0,
                                reason=f"{action} by {operator()} at {iso(time.time())} after: {mine.get('reason')}")
                    waves[wave["name"]] = mine
                    notes.append(f"wave {wave['name']}: {action}" + (f" ({failed} failure(s) accepted)" if action == "resume" else ""))
            if action == "retry_failed":  # the failed devices are tried again: pending, their history kept
                for mine in waves.values():  # failures accepted by a resume are tried again too: they count again
                    mine["acknowledged"] = 0
                for host, record in records.items():
                    if record.get("status") == "failed":
                        retry = {"at": iso(time.time()), "status": "pending", "reason": f"retry_failed by {operator()}"}
                        record["history"] = [*(record.get("history") or []), retry][-HISTORY:]
                        record["status"] = "pending"
                        self.rdir.save_record(host, record)
                        notes.append(f"{host}: tried again")
            if state.get("status") in ("halted", "paused"):
                state.update(status="active", reason=None)
        elif state.get("status") == "paused":  # a rerun retries the deferred devices
            state.update(status="active", reason=None)
            for mine in waves.values():
                if mine.get("status") == "inconclusive":
                    mine["status"] = "running"
        if args.get("approve"):
            names = [w["name"] for w in plan["waves"]]
            if args["approve"] not in names:
                raise ro.RolloutError(f"hup_rollout_approve: no wave {args['approve']!r} in the plan (waves: {', '.join(names)})")
            approvals = self.rdir.approvals()
            approvals[args["approve"]] = {"by": operator(), "at": iso(time.time()), "remark": args.get("remark") or "",
                                          "digest": plan["digest"]}
            self.rdir.save("approvals.json", approvals)
            notes.append(f"wave {args['approve']} approved by {operator()}")
            changed = True
        state.pop("run", None)
        history.append({"at": iso(time.time()), "by": operator(), "action": action, "pid": self.pid})
        del history[:-50]
        self.rdir.save("state.json", state)
        return StepResult(changed=changed, msg=f"rollout {args['rollout_id']}: {action}",
                          data={"plan": plan, "summary": summary(plan, state, records), "notes": notes, "dir": self.rdir.path, **gated})

    # -- the slots of a run
    def _loaded(self) -> tuple[dict[str, t.Any], dict[str, t.Any], dict[str, dict[str, t.Any]]]:
        plan = self.rdir.plan()
        if not plan:
            raise ro.RolloutError(f"no frozen plan in {self.rdir.path} (phase start freezes it)")
        return plan, self.rdir.state(), self.rdir.records(plan["fleet"])

    def phase_slot(self, args: dict[str, t.Any]) -> StepResult:
        _need(args, "index")
        if self.dry:
            return self._plan_slot(args)
        self.rdir.check_lock(self.pid, args["rollout_id"])
        plan, state, records = self._loaded()
        decision = ro.decide_slot(plan, state, records, args["index"], args["action"], time.time(), self.rdir.approvals())
        out = {"mode": decision.mode, "wave": decision.wave, "hosts": decision.hosts, "serial": decision.serial,
               "gate": decision.gate, "reason": decision.reason,
               "boot_ids": {h: (records.get(h) or {}).get("boot_id") for h in decision.hosts} if decision.mode == "bake_check" else {}}
        changed = False
        if decision.mode == "update":
            mine = state.setdefault("waves", {}).setdefault(decision.wave, {})
            if mine.get("status") in (None, "pending", "passed", "baked"):
                mine.update(status="running", started=mine.get("started") or time.time())
                changed = True
        if decision.mode == "stop":
            if decision.gate in ("bake", "approval"):
                state.update(status="waiting", reason=decision.reason)
            state["run"] = {"pid": self.pid, "stop": decision.reason}
            changed = True
        if changed:
            self.rdir.save("state.json", state)
        return StepResult(changed=False, msg=decision.reason, data={"decision": out, "stop": decision.reason if decision.mode == "stop" else None})

    def _plan_slot(self, args: dict[str, t.Any]) -> StepResult:
        """Check mode: the first slot takes the devices of every wave that are not done, for the
        role's own check mode all at once (nothing changes, so no wave waits for another); the
        other slots have nothing to do."""
        plan = self._new_plan(args) if args.get("waves") else self.rdir.plan()
        if plan is None or args["index"] > 0:
            return StepResult(changed=False, msg="planned in the first slot", data={"decision": {"mode": "skip", "hosts": [], "serial": 1}, "stop": None})
        records = self.rdir.records(plan["fleet"])
        hosts = [h for w in plan["waves"] for h in w["hosts"] if (records.get(h) or {}).get("status") not in ro.DONE]
        out = {"mode": "plan", "wave": "plan", "hosts": hosts, "serial": max(1, len(hosts)), "gate": None,
               "reason": f"the plan: {len(hosts)} device(s) checked (check mode)"}
        return StepResult(changed=False, msg=out["reason"], data={"decision": out, "stop": None})

    def phase_batch(self, args: dict[str, t.Any]) -> StepResult:
        _need(args, "index")
        if self.dry:
            return StepResult(changed=False, data={"halted": False})
        plan, state, records = self._loaded()
        wave = plan["waves"][args["index"]]
        mine = (state.get("waves") or {}).get(wave["name"]) or {}
        verdict = ro.judge(wave, records, int(mine.get("acknowledged") or 0))
        return StepResult(changed=False, msg=verdict.reason, data={"halted": verdict.status == "halted", "verdict": verdict.__dict__})

    def phase_record(self, args: dict[str, t.Any]) -> StepResult:
        _need(args, "host", "status")
        host = args["host"]
        old = (self.rdir.records([host]).get(host) or {}) if os.path.isdir(self.rdir.path) else {}
        record = {**old, **{k: v for k, v in (args.get("facts") or {}).items() if v not in (None, "")}}
        if not (args.get("facts") or {}).get("reason"):  # an earlier failure's reason stays in the history only
            record.pop("reason", None)
        now = time.time()
        if (args.get("facts") or {}).get("os_version"):  # what the device was seen running, and when (fleet inventory)
            record["observed_at"] = iso(now)
        if args["status"] == "in_progress":
            if old.get("status") != "in_progress" or "attempt" not in old:
                record["attempt"] = int(old.get("attempt") or 0) + 1
            record["started"] = iso(now) if old.get("status") != "in_progress" else old.get("started")
            record.pop("ended", None)
            record["run_id"] = f"rollout-{args['rollout_id']}-{record['attempt']}"
        else:
            record["ended"] = iso(now)
        record.update(host=host, status=args["status"], run=self._run_token())
        history = list(old.get("history") or [])
        if old.get("status") != args["status"] or (args.get("facts") or {}).get("reason"):
            history.append({"at": iso(now), "status": args["status"], "reason": (args.get("facts") or {}).get("reason")})
        record["history"] = history[-HISTORY:]
        if self.dry:
            return StepResult(changed=False, data={"record": record})
        self.rdir.check_lock(self.pid, args["rollout_id"])
        changed = {k: v for k, v in record.items() if k != "history"} != {k: v for k, v in old.items() if k != "history"}
        if changed:
            self.rdir.save_record(host, record)
        return StepResult(changed=changed, msg=f"{host}: {args['status']}", data={"record": record})

    def phase_judge(self, args: dict[str, t.Any]) -> StepResult:
        _need(args, "index")
        if self.dry:
            return StepResult(changed=False, data={"halted": False, "stop": None})
        self.rdir.check_lock(self.pid, args["rollout_id"])
        plan, state, records = self._loaded()
        if args["index"] >= len(plan["waves"]):
            return StepResult(changed=False, data={"halted": False, "stop": None})
        wave = plan["waves"][args["index"]]
        mine = state.setdefault("waves", {}).setdefault(wave["name"], {})
        verdict = ro.judge(wave, records, int(mine.get("acknowledged") or 0))
        now = time.time()
        stop = None
        if verdict.status == "halted":
            mine.update(status="halted", reason=verdict.reason, ended=now)
            state.update(status="halted", reason=verdict.reason)
            stop = verdict.reason
        elif verdict.status == "inconclusive":
            mine.update(status="inconclusive", reason=verdict.reason, ended=now)
            state.update(status="paused", reason=verdict.reason)
            stop = verdict.reason
        elif verdict.status == "running":
            left = ro.to_run(wave, records, False)
            stop = (f"wave {wave['name']} is not done: {', '.join(left)} not updated in this run (outside --limit, "
                    "or the play stopped); no later wave starts before")
            mine.update(status="running", reason=stop)
        elif args.get("mode") == "update" and wave["bake"] and mine.get("status") != "baked":
            mine.update(status="baking", reason=verdict.reason, ended=now, bake_until=now + wave["bake"])
            stop = f"wave {wave['name']} passed ({verdict.reason}); it bakes until {iso(now + wave['bake'])}: run again then"
            state.update(status="waiting", reason=stop)
        else:
            mine.update(status="baked" if args.get("mode") == "bake_check" or mine.get("status") == "baked" else "passed",
                        reason=verdict.reason, ended=mine.get("ended") or now)
            if state.get("status") not in ("aborted",):
                state.update(status="active", reason=None)
        if stop:
            state["run"] = {"pid": self.pid, "stop": stop}
        if all(((state["waves"].get(w["name"]) or {}).get("status") in ("passed", "baked")) for w in plan["waves"]):
            state.update(status="done", reason="every wave passed")
        self.rdir.save("state.json", state)
        return StepResult(changed=False, msg=verdict.reason, data={"halted": verdict.status == "halted", "verdict": verdict.__dict__, "stop": stop})

    def phase_finish(self, args: dict[str, t.Any]) -> StepResult:
        if self.dry:
            plan = self.rdir.plan() or (self._new_plan(args) if args.get("waves") else None)
            if plan is None:
                return StepResult(changed=False, data={"summary": None, "stop": None, "ok": True})
            state, records = self.rdir.state(), self.rdir.records(plan["fleet"])
            report = report_stats(plan, state, records, None, self.rdir.path)
            return StepResult(changed=False, data={"summary": plan_summary(plan, state, records, args.get("planned") or {}),
                                                   "plan": plan, "stop": None, "ok": True,
                                                   "report": report, "report_dir": None})
        plan, state, records = self._loaded()
        stop = (state.get("run") or {}).get("stop") if (state.get("run") or {}).get("pid") == self.pid else None
        ok = state.get("status") not in ("halted", "paused", "aborted")
        report = report_stats(plan, state, records, self._run_token(), self.rdir.path)
        released = self.rdir.release(self.pid)
        return StepResult(changed=False, msg=stop or f"rollout {args['rollout_id']}: {state.get('status')}",
                          data={"summary": summary(plan, state, records), "plan": plan, "stop": stop, "ok": ok, "report": report,
                                "report_dir": os.path.join(self.rdir.path, "report"),
                                "notes": [] if released else ["the lock was not this run's"]})
