# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.rollout: the rollout's state directory (plugin_utils.rollout_store)
driven by the pure decisions of plugin_utils.rollout (rollout_revert, rollout_approval), told by plugin_utils.rollout_report."""

from __future__ import annotations

import os
import re
import time
import typing as t

from ansible_collections.osfleet.hup.plugins.modules.rollout import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal_store
from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout as ro
from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout_approval as approval
from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout_revert as rv
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.controller_action import ControllerAction
from ansible_collections.osfleet.hup.plugins.plugin_utils.report import iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout_report import plan_summary, report_stats, summary
from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout_store import RolloutDir, default_dir, operator

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: a record keeps this many earlier statuses (when, status, reason)
HISTORY = 20


def _need(args: dict[str, t.Any], *names: str) -> None:
    missing = [n for n in names if args.get(n) in (None, "")]
    if missing:
        raise ro.RolloutError(f"phase {args['phase']} needs {', '.join(missing)}")


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
        if args["action"] == "revert" and not old:
            raise ro.RolloutError(f"rollout {args['rollout_id']}: nothing to revert: no frozen plan in {self.rdir.path}")
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
        approval.check_approval(plan, args.get("approve"))  # a real start, --check and the plan alike; before anything is written
        if self.dry:
            return StepResult(changed=False, msg=f"plan of rollout {args['rollout_id']} (nothing written)",
                              data={"plan": plan, "summary": summary(plan, state, records), "notes": notes, "dir": self.rdir.path, **gated})
        held = self.rdir.holds(self.pid)  # a later play of this run: the lock stays when this start fails
        took = self.rdir.acquire(self.pid, args["rollout_id"], stale_after=args["lock_stale_after"])
        if took:
            notes.append(took)
        try:
            return self._start(args, plan, old, state, records, gate, notes)
        except BaseException:
            if not held:  # a failed start leaves no lock behind (the next run would find it stale)
                self.rdir.release(self.pid)
            raise

    def _start(self, args: dict[str, t.Any], plan: dict[str, t.Any], old: dict[str, t.Any] | None, state: dict[str, t.Any],
               records: dict[str, dict[str, t.Any]], gate: dict[str, t.Any] | None, notes: list[str]) -> StepResult:
        """The start's writes, the lock held: the plan frozen, the operator's action, the state."""
        gated = {"rehearsal": gate} if gate is not None else {}
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
        elif action == "revert":
            notes += self._start_revert(plan, state, records)
        elif state.get("status") == "paused":  # a rerun retries the deferred devices
            state.update(status="active", reason=None)
            for mine in waves.values():
                if mine.get("status") == "inconclusive":
                    mine["status"] = "running"
        if args.get("approve"):
            approvals = self.rdir.approvals()
            approvals[approval.approval_key(args["approve"], action)] = {"by": operator(), "at": iso(time.time()),
                                                                         "remark": args.get("remark") or "", "digest": plan["digest"]}
            self.rdir.save("approvals.json", approvals)
            notes.append(f"wave {args['approve']} approved by {operator()}" + (" (its revert)" if action == "revert" else ""))
            changed = True
        state.pop("run", None)
        history.append({"at": iso(time.time()), "by": operator(), "action": action, "pid": self.pid})
        del history[:-50]
        self.rdir.save("state.json", state)
        return StepResult(changed=changed, msg=f"rollout {args['rollout_id']}: {action}",
                          data={"plan": plan, "summary": summary(plan, state, records), "notes": notes, "dir": self.rdir.path, **gated})

    @staticmethod
    def _start_revert(plan: dict[str, t.Any], state: dict[str, t.Any], records: dict[str, dict[str, t.Any]]) -> list[str]:
        """The revert's own state (``state["revert"]``, the update's stays): started, or rerun
        (a halted or paused revert wave goes on; its failed devices are tried again)."""
        view, _records = rv.revert_view(plan, records)
        if not any(w["hosts"] for w in view["waves"]):
            raise ro.RolloutError(f"rollout {plan['id']}: nothing to revert: the rollout committed no device")
        scope = state.get("revert")
        if not isinstance(scope, dict):
            state["revert"] = {"status": "active", "started": iso(time.time()), "by": operator(), "waves": {}}
            return [f"revert of rollout {plan['id']} started: {sum(len(w['hosts']) for w in view['waves'])} committed device(s), "
                    "back to the release each ran before"]
        notes = []
        for name, mine in (scope.get("waves") or {}).items():
            if mine.get("status") in ("halted", "inconclusive"):
                mine.update(status="running", reason=f"revert again by {operator()} at {iso(time.time())} after: {mine.get('reason')}")
                notes.append(f"revert wave {name}: goes on, its failed devices tried again")
        # a revert whose waves all went through (incomplete: devices refused) stays so: a refused device is done
        if scope.get("status") in ("halted", "paused"):
            scope.update(status="active", reason=None)
        return notes

    # -- the slots of a run
    def _loaded(self) -> tuple[dict[str, t.Any], dict[str, t.Any], dict[str, dict[str, t.Any]]]:
        plan = self.rdir.plan()
        if not plan:
            raise ro.RolloutError(f"no frozen plan in {self.rdir.path} (phase start freezes it)")
        return plan, self.rdir.state(), self.rdir.records(plan["fleet"])

    @staticmethod
    def _decision(decision: ro.SlotDecision, records: dict[str, dict[str, t.Any]], revert: bool = False) -> dict[str, t.Any]:
        """The slot's decision as the role reads it (hup_rollout_decision.decision), one builder for
        every slot (the run's, the plan's); a revert's update is mode ``revert``, and a re-check
        after its bake expects the release each device went back to (``versions``)."""
        mode = "revert" if revert and decision.mode == "update" else decision.mode
        bake = decision.mode == "bake_check"
        return {"mode": mode, "wave": decision.wave, "hosts": decision.hosts, "serial": decision.serial,
                "gate": decision.gate, "reason": decision.reason.replace("to update", "to revert") if revert else decision.reason,
                "boot_ids": {h: (records.get(h) or {}).get("boot_id") for h in decision.hosts} if bake else {},
                "versions": {h: (records.get(h) or {}).get("to_version") for h in decision.hosts} if bake and revert else {}}

    def _scope(self, args: dict[str, t.Any], plan: dict[str, t.Any], state: dict[str, t.Any], records: dict[str, dict[str, t.Any]]
               ) -> tuple[dict[str, t.Any], dict[str, t.Any], dict[str, dict[str, t.Any]]]:
        """What the waves of this run are judged on: the rollout's (plan, state, records), or for a
        revert its view (the committed devices, their revert records) and ``state["revert"]``."""
        if args["action"] != "revert":
            return plan, state, records
        view, view_records = rv.revert_view(plan, records)
        return view, state.setdefault("revert", {"status": "active", "waves": {}}), view_records

    def phase_slot(self, args: dict[str, t.Any]) -> StepResult:
        _need(args, "index")
        if self.dry:
            return self._plan_slot(args)
        self.rdir.check_lock(self.pid, args["rollout_id"])
        plan, state, records = self._loaded()
        revert = args["action"] == "revert"
        view, scope, view_records = self._scope(args, plan, state, records)
        approvals = {approval.wave_of_approval(k, revert): v for k, v in self.rdir.approvals().items() if approval.wave_of_approval(k, revert)}
        # a rerun of a revert tries its failed devices again
        decision = ro.decide_slot(view, scope, view_records, args["index"], "retry_failed" if revert else args["action"], time.time(), approvals)
        out = self._decision(decision, {h: {**(records.get(h) or {}), **view_records.get(h, {})} for h in decision.hosts}, revert)
        changed = False
        if decision.mode == "update":
            mine = scope.setdefault("waves", {}).setdefault(decision.wave, {})
            if mine.get("status") in (None, "pending", "passed", "baked"):
                mine.update(status="running", started=mine.get("started") or time.time())
                changed = True
        if decision.mode == "stop":
            if decision.gate in ("bake", "approval"):
                scope.update(status="waiting", reason=decision.reason)
            state["run"] = {"pid": self.pid, "stop": decision.reason}
            changed = True
        if changed:
            self.rdir.save("state.json", state)
        return StepResult(changed=False, msg=out["reason"], data={"decision": out, "stop": decision.reason if decision.mode == "stop" else None})

    def _plan_slot(self, args: dict[str, t.Any]) -> StepResult:
        """Check mode: the first slot takes the devices of every wave that are not done, for the
        role's own check mode all at once (nothing changes, so no wave waits for another); the
        other slots have nothing to do. A revert's plan takes the devices the rollout committed and
        its revert has not done."""
        plan = self._new_plan(args) if args.get("waves") and args["action"] != "revert" else self.rdir.plan()
        if plan is None or args["index"] > 0:
            return StepResult(changed=False, msg="planned in the first slot", data={"decision": self._decision(ro.SlotDecision("skip"), {}), "stop": None})
        records = self.rdir.records(plan["fleet"])
        revert = args["action"] == "revert"
        if revert:
            view, view_records = rv.revert_view(plan, records)
            hosts = [h for w in view["waves"] for h in w["hosts"] if (view_records.get(h) or {}).get("status") not in ro.DONE]
        else:
            hosts = [h for w in plan["waves"] for h in w["hosts"] if (records.get(h) or {}).get("status") not in ro.DONE]
        decision = ro.SlotDecision("plan", "plan", hosts=hosts, serial=max(1, len(hosts)),
                                   reason=f"the plan{' of the revert' if revert else ''}: {len(hosts)} device(s) checked (check mode)")
        out = self._decision(decision, records)
        return StepResult(changed=False, msg=out["reason"], data={"decision": out, "stop": None})

    def phase_batch(self, args: dict[str, t.Any]) -> StepResult:
        _need(args, "index")
        if self.dry:
            return StepResult(changed=False, data={"halted": False})
        plan, scope, records = self._scope(args, *self._loaded())
        wave = plan["waves"][args["index"]]
        mine = (scope.get("waves") or {}).get(wave["name"]) or {}
        verdict = ro.judge(wave, records, int(mine.get("acknowledged") or 0))
        return StepResult(changed=False, msg=verdict.reason, data={"halted": verdict.status == "halted", "verdict": verdict.__dict__})

    def phase_record(self, args: dict[str, t.Any]) -> StepResult:
        """The device's record; a revert's status goes into its key ``revert`` (committed there
        means reverted, current refused), the update's record stays as it was."""
        _need(args, "host", "status")
        host = args["host"]
        whole = (self.rdir.records([host]).get(host) or {}) if os.path.isdir(self.rdir.path) else {}
        revert = args.get("action") == "revert"
        status = rv.REVERT_FROM_VIEW.get(args["status"], args["status"]) if revert else args["status"]
        old = dict(whole.get("revert") or {}) if revert else whole
        record = {**old, **{k: v for k, v in (args.get("facts") or {}).items() if v not in (None, "")}}
        if status == "in_progress" and old.get("status") == "in_progress":
            # resumed: what the device ran before the rollout changed it is the first probe's
            record.update({k: v for k, v in old.items() if k.startswith("from_")})
        if not (args.get("facts") or {}).get("reason"):  # an earlier failure's reason stays in the history only
            record.pop("reason", None)
        now = time.time()
        if (args.get("facts") or {}).get("os_version"):  # what the device was seen running, and when (fleet inventory)
            record["observed_at"] = iso(now)
        if status == "in_progress":
            if old.get("status") != "in_progress" or "attempt" not in old:
                record["attempt"] = int(old.get("attempt") or 0) + 1
            record["started"] = iso(now) if old.get("status") != "in_progress" else old.get("started")
            record.pop("ended", None)
            record["run_id"] = f"rollout-{args['rollout_id']}-{'revert-' if revert else ''}{record['attempt']}"
        else:
            record["ended"] = iso(now)
        record.update(status=status, run=self._run_token())
        if not revert:
            record["host"] = host
        history = list(old.get("history") or [])
        if old.get("status") != status or (args.get("facts") or {}).get("reason"):
            history.append({"at": iso(now), "status": status, "reason": (args.get("facts") or {}).get("reason")})
        record["history"] = history[-HISTORY:]
        full = {**whole, "revert": record} if revert else record
        if self.dry:
            return StepResult(changed=False, data={"record": full})
        self.rdir.check_lock(self.pid, args["rollout_id"])
        changed = {k: v for k, v in record.items() if k != "history"} != {k: v for k, v in old.items() if k != "history"}
        if changed:
            self.rdir.save_record(host, full)
        return StepResult(changed=changed, msg=f"{host}: {status}", data={"record": full})

    def phase_revert(self, args: dict[str, t.Any]) -> StepResult:
        """What the revert does on one device (plugin_utils.rollout_revert.decide_revert) from its record
        and its probe (O(device)); a refused device is recorded so, with the reason (nothing on it
        changes)."""
        _need(args, "host", "device")
        host = args["host"]
        record = self.rdir.records([host]).get(host) or {}
        step = rv.decide_revert(host, record, args["device"])
        data: dict[str, t.Any] = {"revert": {"action": step.action, "reason": step.reason, "version": step.version,
                                             "from_version": record.get("to_version"), "image_id": record.get("from_image_id") or "",
                                             "digest": record.get("from_digest") or ""}}
        changed = False
        if step.action == "refuse" and not self.dry:
            res = self.phase_record({**args, "status": "current", "facts": {"wave": record.get("wave"), "reason": step.reason,
                                                                            "from_version": record.get("to_version"),
                                                                            "to_version": record.get("from_version")}})
            changed, data["record"] = res.changed, res.data["record"]
        return StepResult(changed=changed, msg=step.reason, data=data)

    def phase_judge(self, args: dict[str, t.Any]) -> StepResult:
        _need(args, "index")
        if self.dry:
            return StepResult(changed=False, data={"halted": False, "stop": None})
        self.rdir.check_lock(self.pid, args["rollout_id"])
        full_plan, state, full_records = self._loaded()
        plan, scope, records = self._scope(args, full_plan, state, full_records)
        if args["index"] >= len(plan["waves"]):
            return StepResult(changed=False, data={"halted": False, "stop": None})
        wave = plan["waves"][args["index"]]
        mine = scope.setdefault("waves", {}).setdefault(wave["name"], {})
        verdict = ro.judge(wave, records, int(mine.get("acknowledged") or 0))
        now = time.time()
        stop = None
        if verdict.status == "halted":
            mine.update(status="halted", reason=verdict.reason, ended=now)
            scope.update(status="halted", reason=verdict.reason)
            stop = verdict.reason
        elif verdict.status == "inconclusive":
            mine.update(status="inconclusive", reason=verdict.reason, ended=now)
            scope.update(status="paused", reason=verdict.reason)
            stop = verdict.reason
        elif verdict.status == "running":
            stop = ro.not_done_reason(wave, records, self._run_token())
            mine.update(status="running", reason=stop)
        elif args.get("mode") in ("update", "revert") and wave["bake"] and mine.get("status") != "baked":
            mine.update(status="baking", reason=verdict.reason, ended=now, bake_until=now + wave["bake"])
            stop = f"wave {wave['name']} passed ({verdict.reason}); it bakes until {iso(now + wave['bake'])}: run again then"
            scope.update(status="waiting", reason=stop)
        else:
            mine.update(status="baked" if args.get("mode") == "bake_check" or mine.get("status") == "baked" else "passed",
                        reason=verdict.reason, ended=mine.get("ended") or now)
            if scope.get("status") not in ("aborted",):
                scope.update(status="active", reason=None)
        if stop:
            state["run"] = {"pid": self.pid, "stop": stop}
        if all(((scope["waves"].get(w["name"]) or {}).get("status") in ("passed", "baked")) for w in plan["waves"]):
            if scope is state:
                state.update(status="done", reason="every wave passed")
            else:
                scope.update(zip(("status", "reason"), rv.revert_outcome(full_plan, full_records)))
        self.rdir.save("state.json", state)
        return StepResult(changed=False, msg=verdict.reason, data={"halted": verdict.status == "halted", "verdict": verdict.__dict__, "stop": stop})

    def phase_finish(self, args: dict[str, t.Any]) -> StepResult:
        if self.dry:
            plan = self.rdir.plan() or (self._new_plan(args) if args.get("waves") else None)
            if plan is None:
                return StepResult(changed=False, data={"summary": None, "stop": None, "ok": True})
            state, records = self.rdir.state(), self.rdir.records(plan["fleet"])
            revert = args["action"] == "revert"
            report = report_stats(plan, state, records, None, self.rdir.path, revert)
            return StepResult(changed=False, data={"summary": plan_summary(plan, state, records, args.get("planned") or {}, revert),
                                                   "plan": plan, "stop": None, "ok": True,
                                                   "report": report, "report_dir": None})
        plan, state, records = self._loaded()
        stop = (state.get("run") or {}).get("stop") if (state.get("run") or {}).get("pid") == self.pid else None
        revert = args["action"] == "revert"
        scope = (state.get("revert") or {}) if revert else state
        # a revert that left devices refused is not done: the run fails naming them
        ok = scope.get("status") not in ("halted", "paused", "aborted", "incomplete")
        report = report_stats(plan, state, records, self._run_token(), self.rdir.path, revert)
        released = self.rdir.release(self.pid)
        status = f"revert {scope.get('status')}" if revert else state.get("status")
        return StepResult(changed=False, msg=stop or f"rollout {args['rollout_id']}: {status}",
                          data={"summary": summary(plan, state, records), "plan": plan, "stop": stop, "ok": ok, "report": report,
                                "report_dir": os.path.join(self.rdir.path, "report"),
                                "notes": [] if released else ["the lock was not this run's"]})
