# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.takeover: probe, decide (steps/takeover.py), stage in RAM, verify;
state=flashed: the whole-disk write (scripts/takeover_flash.sh, takeover_flash_stage2.sh), the wait
for the new OS (the device's next host key pinned) and its verification."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import typing as t

from ansible_collections.osfleet.hup.plugins.modules.takeover import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils import shell
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Release
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState, probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.reconnect import retry_until, wait_for_new_boot
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import ReleaseArgs, open_catalog, resolve_target
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps import takeover


def _record_view(record: t.Any) -> dict[str, t.Any] | None:
    if not isinstance(record, dict):
        return None
    return {"url": record.get("url"), "sha256": record.get("sha256"), "size": record.get("size"),
            "keep": [k.get("path") for k in record.get("keep") or [] if isinstance(k, dict)]}


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION
    #: the SSH host key the device generated before this task wrote its disk (None until then)
    _new_host_key: str | None = None

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        state = probe(session)
        target = resolve_target(ReleaseArgs.from_args(args), open_catalog(args), state)
        staging = str(args["staging_dir"])
        # staging: a staged image is hashed again before it is reused (it sat in RAM since it was verified)
        verify = args["state"] == "staged"
        raw = session.run_json("takeover_probe", dir=staging, verify=verify, what="checking the device for the advanced update")
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
        if args["state"] == "flashed":
            return self._flash(args, session, state, target.release, raw, plan, data)
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
        after = session.run_json("takeover_probe", dir=staging, verify=False, what="checking the staging")
        if not takeover.staged_already(after, plan):
            raise DeviceError(f"the staging in {staging} does not hold the disk image {plan.sha256} and the kept files after staging them")
        data.update(staged=after.get("record"), downloaded=int(out.get("downloaded") or 0))
        resumed = 0 < plan.download_bytes < wanted["size"]
        actions[1] = (f"kept the disk image of {target.release.version} that an earlier run downloaded and verified ({plan.url})"
                      if data["downloaded"] == 0 and not resumed else
                      f"downloaded the disk image of {target.release.version} ({data['downloaded']} bytes"
                      + (f", resuming an earlier download of {wanted['size'] - plan.download_bytes} bytes" if resumed else "")
                      + f") from {plan.url} into RAM ({staging}) and verified its sha256 {plan.sha256}")
        if out.get("damaged"):
            actions.insert(1, f"removed the disk image staged earlier: it had sha256 {out['damaged']} now, not the catalog's "
                              f"{plan.sha256} (damaged in RAM since it was verified)")
        return StepResult(changed=True, actions=actions, diff={"before": before, "after": _record_view(after.get("record"))}, data=data)

    # -- state=flashed ---------------------------------------------------------------------------
    def _flash(self, args: dict[str, t.Any], session: DeviceSession, state: DeviceState, release: Release,
               raw: dict[str, t.Any], plan: takeover.TakeoverPlan, data: dict[str, t.Any]) -> StepResult:
        staging, want = str(args["staging_dir"]), release.version
        before = takeover.flash_view(state.version, raw.get("table"))
        record = raw.get("flashed") if isinstance(raw.get("flashed"), dict) else None
        data.update(flashed=record, host_key=None, log=(record or {}).get("log"))
        if state.version == want:
            # done: a device on the target is never written again; what an earlier write recorded is checked
            if record and record.get("version") == want:
                problems = takeover.flash_problems(raw, state.version, want, record)
                if problems:
                    raise DeviceError(f"runs {want}, written by an earlier whole-disk write, but " + "; ".join(problems))
                return StepResult(data=data, msg=f"{session.host}: runs {want} on the disk image's partition layout "
                                  f"({takeover.layout_text(raw.get('table'))}) with the kept files, written at {record.get('time')}")
            return StepResult(data=data, msg=f"{session.host}: runs {want} already: nothing to write")
        if plan.problems:
            raise PlanError("; ".join(p.removeprefix(f"{session.host}: ") for p in plan.problems) + "; nothing was written")
        if not takeover.staged_already(raw, plan):
            raise PlanError(f"the disk image {plan.sha256} and the kept files as the boot partition has them now are not staged in "
                            f"{staging}: stage them first (state=staged); nothing was written")
        actions = [
            f"checked the staging in {staging}: the disk image of {want} (sha256 {plan.sha256}, read again on the device) "
            f"and the kept files {', '.join(plan.keep)}",
            *plan.actions[3:],
            f"checked that the device runs {want} on the disk image's partition layout with the kept files byte for byte",
        ]
        after_view = {"version": want, "layout": "the disk image's partition table"}
        if self.check_mode:
            return StepResult(changed=True, actions=actions, diff={"before": before, "after": after_view}, data=data)
        ts = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        timeout, connect_timeout = float(args["flash_timeout"]), int(args["connect_timeout"])
        start = time.monotonic()
        home = plan.host_key
        if home is None:  # decide_takeover refuses such a device (host_key_problem): never reached
            raise PlanError("no place on the state partition for the device's next SSH host key; nothing was written")
        out = session.run_json("takeover_flash", dir=staging, sha256=plan.sha256, raw_size=plan.disk_needed, version=want, ts=ts,
                               carry=takeover.carried_log(args.get("run_log")), key_path=home.inner, key_type=home.type,
                               stage2=shell.load("takeover_flash_stage2").text, what="starting the whole-disk write")
        host_key = str(out.get("host_key") or "")
        self._new_host_key = host_key
        data.update(host_key=host_key, log=out.get("log"))
        deadline = start + timeout
        with self._pinned_host_key(host_key):
            session.set_connect_timeout(connect_timeout)
            session.reset_connection()
            time.sleep(2)
            wait_for_new_boot(session, state.boot_id, deadline=deadline, timeout=timeout)
            after = retry_until(lambda: probe(session), session, deadline=deadline, what="probing the device after the whole-disk write")
            now = retry_until(lambda: session.run_json("takeover_probe", dir=staging, verify=False, what="checking the new disk"), session,
                              deadline=deadline, what="checking the device after the whole-disk write")
        elapsed = round(time.monotonic() - start, 1)
        flashed = now.get("flashed") if isinstance(now.get("flashed"), dict) else {}
        data.update(flashed=flashed or None, staged=None, elapsed=elapsed)
        problems = takeover.flash_problems(now, after.version, want, flashed)
        if flashed.get("time") != ts:
            problems.insert(0, f"the new data partition holds no record of this write ({takeover.FLASH_RECORD} is "
                               f"{'from ' + str(flashed.get('time')) if flashed else 'missing'}; the flash log is on the device's console)")
        if problems:
            raise DeviceError(f"after the whole-disk write ({elapsed} s): " + "; ".join(problems))
        stopped = ", ".join(out.get("stopped") or []) or "none"
        actions = [
            actions[0],
            f"stopped the device's services ({stopped}), moved PID 1 into RAM (telinit u), stopped every other process and "
            f"unmounted the disk's partitions",
            f"wrote the whole disk {out.get('disk')} with the disk image of {want} and read it back "
            f"({state.version} -> {want}, layout {release.layout or '?'})",
            f"re-read the partition table ({takeover.layout_text(now.get('table'))}) and restored the kept files "
            f"{', '.join(plan.keep)} onto the new boot partition",
            f"rebooted into {want} ({elapsed} s for the write and the boot); the flash log is {out.get('log')}; "
            f"the device's new SSH host key is {' '.join(host_key.split()[:2])}",
            f"checked that the device runs {want} on the disk image's partition layout with the kept files byte for byte",
        ]
        return StepResult(changed=True, actions=actions, data=data,
                          diff={"before": before, "after": takeover.flash_view(after.version, now.get("table"))},
                          msg=f"{session.host}: wrote the whole disk with {want} and booted it (the data partition is new)")

    def _append_run_log(self, session: DeviceSession, path: t.Any, result: t.Mapping[str, t.Any],
                        args: t.Mapping[str, t.Any] | None = None) -> None:
        """After a whole-disk write the run log (carried onto the new data partition) is reached with
        the device's new host key: the inventory's known_hosts still names the old one."""
        if not self._new_host_key:
            super()._append_run_log(session, path, result, args)
            return
        with self._pinned_host_key(self._new_host_key):
            super()._append_run_log(session, path, result, args)

    @contextlib.contextmanager
    def _pinned_host_key(self, host_key: str) -> t.Iterator[None]:
        """While the device comes back with the SSH host key it generated before the write (and
        that stage 2 put on its new state partition), the ssh connection trusts that key only (a
        known_hosts file of its own, with StrictHostKeyChecking=yes); the options go first, so
        they win over the inventory's. Connections without ``ssh_args`` are left as they are."""
        conn = self._connection
        try:
            old = conn.get_option("ssh_args")
        except (KeyError, AttributeError):
            yield
            return
        parts = host_key.split()
        if len(parts) < 2:
            yield
            return
        fd, path = tempfile.mkstemp(prefix="osfleet-takeover-", suffix=".known_hosts")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"osfleet-takeover {parts[0]} {parts[1]}\n")
            conn.set_option("ssh_args", f"{old or ''} -o UserKnownHostsFile={path} -o HostKeyAlias=osfleet-takeover "
                                        "-o StrictHostKeyChecking=yes")
            yield
        finally:
            conn.set_option("ssh_args", old)
            with contextlib.suppress(OSError):
                conn.reset()
            os.unlink(path)
