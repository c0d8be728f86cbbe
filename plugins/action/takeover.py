# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.takeover: probe, decide (steps/takeover.py), stage in RAM, verify."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.takeover import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import ReleaseArgs, open_catalog, resolve_target
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps import takeover


def _record_view(record: t.Any) -> dict[str, t.Any] | None:
    if not isinstance(record, dict):
        return None
    return {"url": record.get("url"), "sha256": record.get("sha256"), "size": record.get("size"),
            "keep": [k.get("path") for k in record.get("keep") or [] if isinstance(k, dict)]}


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        state = probe(session)
        target = resolve_target(ReleaseArgs.from_args(args), open_catalog(args), state)
        staging = str(args["staging_dir"])
        raw = session.run_json("takeover_probe", dir=staging, what="checking the device for the advanced update")
        facts = takeover.facts_from_probe(raw)
        plan = takeover.decide_takeover(session.host, state.version or "?", target.release, facts)
        before = _record_view(raw.get("record"))
        data: dict[str, t.Any] = {"plan": plan.as_dict(), "staged": raw.get("record"), "downloaded": 0}
        if args["state"] == "absent":
            if before is None and not raw.get("staging_fstype") and not facts.staged_bytes:
                return StepResult(data=data)
            actions = [f"removed the staging in {staging} and gave its RAM back"]
            if not self.check_mode:
                session.run("takeover_drop", dir=staging, what="removing the staging")
            data["staged"] = None
            return StepResult(changed=True, actions=actions, diff={"before": before, "after": None}, data=data)
        if plan.problems:
            raise PlanError("; ".join(p.removeprefix(f"{session.host}: ") for p in plan.problems))
        if args["state"] == "checked":
            return StepResult(data=data, msg="the device can take the advanced update: " + plan.actions[0])
        if takeover.staged_already(raw, plan):
            return StepResult(data=data, msg=f"the disk image {plan.sha256[:12]}... and the kept files are staged in {staging} already")
        wanted = {"url": plan.url, "sha256": plan.sha256, "size": int((target.release.disk_image or {}).get("size") or 0),
                  "keep": list(plan.keep)}
        actions = plan.actions[:3]
        if self.check_mode:
            return StepResult(changed=True, actions=actions, diff={"before": before, "after": wanted}, data=data)
        out = session.run_json("takeover_stage", dir=staging, url=plan.url, sha256=plan.sha256, size=wanted["size"],
                               ram_mib=takeover.staging_mib(plan, facts), what="staging the disk image in RAM")
        after = session.run_json("takeover_probe", dir=staging, what="checking the staging")
        if not takeover.staged_already(after, plan):
            raise DeviceError(f"the staging in {staging} does not hold the disk image {plan.sha256} and the kept files after staging them")
        data.update(staged=after.get("record"), downloaded=int(out.get("downloaded") or 0))
        resumed = 0 < plan.download_bytes < wanted["size"]
        actions[1] = (f"kept the disk image of {target.release.version} that an earlier run downloaded and verified ({plan.url})"
                      if data["downloaded"] == 0 and not resumed else
                      f"downloaded the disk image of {target.release.version} ({data['downloaded']} bytes"
                      + (f", resuming an earlier download of {wanted['size'] - plan.download_bytes} bytes" if resumed else "")
                      + f") from {plan.url} into RAM ({staging}) and verified its sha256 {plan.sha256}")
        return StepResult(changed=True, actions=actions, diff={"before": before, "after": _record_view(after.get("record"))}, data=data)
