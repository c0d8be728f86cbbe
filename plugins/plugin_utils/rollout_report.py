# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""What osfleet.hup.rollout says of a rollout, from its plan, state and device records (plugin_utils.rollout_store):
the summary with its lines (:func:`summary`, :func:`plan_summary` in check mode) and what the report callback gets
(:func:`report_stats`). Pure: nothing here reads or writes the state directory."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout as ro
from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout_revert as rv
from ansible_collections.osfleet.hup.plugins.plugin_utils.report import iso, strip_host


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
    out = {"status": state.get("status", "planned"), "reason": state.get("reason"), "waves": waves,
           "unplanned": plan.get("unplanned", []), "lines": lines}
    if isinstance(state.get("revert"), dict):
        out["revert"] = revert_summary(plan, state["revert"], records)
        lines.extend(out["revert"]["lines"])
    return out


def revert_summary(plan: dict[str, t.Any], scope: dict[str, t.Any], records: dict[str, dict[str, t.Any]]) -> dict[str, t.Any]:
    """The revert's waves (the devices the rollout committed) with their revert counts, and each
    device not reverted with its reason."""
    view, _records = rv.revert_view(plan, records)
    waves, lines = [], []
    for wave in view["waves"]:
        mine = (scope.get("waves") or {}).get(wave["name"]) or {}
        counts = {s: 0 for s in ("pending", *rv.REVERT_STATUSES)}
        for host in wave["hosts"]:
            counts[str(((records.get(host) or {}).get("revert") or {}).get("status") or "pending")] += 1
        waves.append({"name": wave["name"], "order": wave["order"], "hosts": wave["hosts"], "limit": wave["limit"],
                      "counts": counts, "status": mine.get("status", "pending"), "reason": mine.get("reason")})
        text = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items() if n)
        lines.append(f"revert wave {wave['order']} {wave['name']}: {len(wave['hosts'])} device(s) ({', '.join(wave['hosts']) or 'none'}), "
                     f"{wave['limit']}; {mine.get('status', 'pending')}" + (f" ({text})" if text else ""))
        for host in wave["hosts"]:
            mine_rec = (records.get(host) or {}).get("revert") or {}
            if mine_rec.get("status") in ("refused", "failed", "deferred") and mine_rec.get("reason"):
                lines.append(f"  {host}: {mine_rec['status']}: {strip_host(mine_rec['reason'], host)}")
    lines.append(f"revert of rollout {plan['id']} (back from {plan['target_version']}): {scope.get('status', 'pending')}"
                 + (f" ({scope['reason']})" if scope.get("reason") else ""))
    return {"status": scope.get("status", "pending"), "reason": scope.get("reason"), "waves": waves, "lines": lines}


def plan_summary(plan: dict[str, t.Any], state: dict[str, t.Any], records: dict[str, dict[str, t.Any]],
                 planned: dict[str, t.Any], revert: bool = False) -> dict[str, t.Any]:
    """:func:`summary` with a line per device: what its update would do (the role's check mode), and the totals."""
    out = summary(plan, state, records)
    if revert:
        return revert_plan_summary(plan, out, records, planned)
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


def revert_plan_summary(plan: dict[str, t.Any], out: dict[str, t.Any], records: dict[str, dict[str, t.Any]],
                        planned: dict[str, t.Any]) -> dict[str, t.Any]:
    """The plan of a revert (check mode): per wave, what the revert would do on each device the
    rollout committed (its probe's decision), and the totals."""
    view, _records = rv.revert_view(plan, records)
    lines, counts = [], {"switch": 0, "commit": 0, "done": 0, "refuse": 0}
    for wave in view["waves"]:
        lines.append(f"revert wave {wave['order']} {wave['name']}: {len(wave['hosts'])} device(s) "
                     f"({', '.join(wave['hosts']) or 'none'}), {wave['limit']}")
        for host in wave["hosts"]:
            mine = (planned.get(host) or {}).get("revert") or {}
            status = ((records.get(host) or {}).get("revert") or {}).get("status")
            if status in ("reverted", "refused") and not mine:
                lines.append(f"  {host}: {status} already")
            elif not mine:
                lines.append(f"  {host}: not checked (outside --limit, or unreachable)")
            else:
                counts[mine["action"]] = counts.get(mine["action"], 0) + 1
                word = {"switch": "would revert", "commit": "would commit", "done": "nothing to do", "refuse": "would be refused"}[mine["action"]]
                lines.append(f"  {host}: {word}: {strip_host(mine['reason'], host)}")
    skipped = sorted(set(plan["fleet"]) - {h for w in view["waves"] for h in w["hosts"]})
    lines.append(f"revert plan: {sum(len(w['hosts']) for w in view['waves'])} device(s) the rollout committed, {counts['switch']} to revert to "
                 f"the release each ran before, {counts['commit']} to commit, {counts['done']} reverted already, {counts['refuse']} refused"
                 + (f"; {len(skipped)} not committed by the rollout (nothing to revert): {', '.join(skipped)}" if skipped else ""))
    return {**out, "lines": lines, "revert_plan": counts}


#: a device record's status as the report's outcome (plugin_utils.report.OUTCOMES)
REPORT_OUTCOME = {"committed": "committed", "current": "current", "failed": "failed", "deferred": "deferred",
                  "in_progress": "incomplete", "pending": "skipped"}


def report_stats(plan: dict[str, t.Any], state: dict[str, t.Any], records: dict[str, dict[str, t.Any]], run: str | None,
                 rdir: str, revert: bool = False) -> dict[str, t.Any]:
    """What the report callback gets (set_stats osfleet_hup): the rollout, its waves with their
    verdicts, and the word for every device this run did not update (or deferred)."""
    waves, devices = {}, {}
    for wave in plan["waves"]:
        mine = (state.get("waves") or {}).get(wave["name"]) or {}
        waves[wave["name"]] = {"order": wave["order"], "devices": wave["hosts"], "halted": mine.get("status") == "halted",
                               "reason": ro.wave_decision(wave, mine, state.get("reason") if state.get("status") == "waiting" else None),
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
                             "reason": strip_host(record.get("reason"), host) or None, **record_versions(record, plan)}
    rollout = {"id": plan["id"], "dir": rdir, "target_version": plan["target_version"], "digest": plan["digest"],
               "status": state.get("status"), "reason": state.get("reason")}
    if revert and isinstance(state.get("revert"), dict):
        scope = state["revert"]
        rollout.update(action="revert", revert_status=scope.get("status"), revert_reason=scope.get("reason"))
        for wave in plan["waves"]:
            mine = (scope.get("waves") or {}).get(wave["name"]) or {}
            waves[wave["name"]].update(halted=mine.get("status") == "halted", status=mine.get("status", "pending"),
                                       reason=mine.get("reason") or "not started")
            for host in wave["hosts"]:
                devices[host] = {"wave": wave["name"], **revert_word(records.get(host) or {}, run, host)}
    return {"rollout": rollout, "waves": waves, "devices": devices}


def record_versions(record: dict[str, t.Any], plan: dict[str, t.Any]) -> dict[str, t.Any]:
    """The versions the rollout recorded for a device (for the report of a run that did not touch
    it): the one it ran before, the one last seen running, the target."""
    return {"version_before": record.get("from_version") or None, "version_after": record.get("os_version") or None,
            "target_version": record.get("to_version") or plan["target_version"]}


def revert_word(record: dict[str, t.Any], run: str | None, host: str) -> dict[str, t.Any]:
    """A device's outcome in the report of a revert run: the revert's word, except for a device
    this run reverted or failed (the steps of this run say it). The reason comes without the
    ``<device>: `` prefix: the report names the device already."""
    mine = record.get("revert") or {}
    status = str(mine.get("status") or "")
    if record.get("status") != "committed":
        return {"outcome": "skipped", "outcome_text": "nothing to revert (the rollout did not commit it)"}
    if run is not None and mine.get("run") == run and status in ("reverted", "failed"):
        return {}
    text = {"": ("skipped", "not reverted (its wave did not run)"), "reverted": ("committed", f"reverted to {mine.get('to_version')}"),
            "refused": ("skipped", "refused"), "failed": ("failed", "the revert failed"),
            "deferred": ("deferred", "deferred (unreachable before any change)"),
            "in_progress": ("incomplete", "revert in progress (an earlier run ended before it)")}[status]
    return {"outcome": text[0], "outcome_text": text[1], "reason": strip_host(mine.get("reason"), host) or None}
