# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of osfleet.hup.rootfs: probe the cache and the inactive root, write, verify the stamp."""

from __future__ import annotations

import typing as t

from ansible_collections.osfleet.hup.plugins.modules.rootfs import DOCUMENTATION
from ansible_collections.osfleet.hup.plugins.plugin_utils.action import DeviceSession, OsfleetAction, StepResult
from ansible_collections.osfleet.hup.plugins.plugin_utils.bootenv import boot_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import probe
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import apply_ops
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import open_catalog, resolve_target, stamp_summary
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootenv import plan_point_at_running
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.rootfs import RootfsArgs, decide_rootfs, stamped
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import probe_switch
from ansible_collections.osfleet.hup.plugins.plugin_utils.writer import writer_for


def point_env_at_running(session: DeviceSession, extra_keep: t.Sequence[str]) -> None:
    """The bootloader env at the running root (with its boot files), synced, before the write; verified."""
    dev, sw = probe_switch(session, listed=True)
    plan = plan_point_at_running(dev, sw, extra_keep=extra_keep)
    apply_ops(session, plan.ops, what="pointing the bootloader env at the running root")
    after = probe(session)
    env = boot_state(after)
    if env.root_part != after.active_index or env.upgrade_available:
        raise DeviceError(f"the bootloader env still names {after.root_label(env.root_part)} (upgrade_available={int(env.upgrade_available)}) "
                          f"after pointing it at the running root {after.active_label}; {after.inactive_label} was not written")


class ActionModule(OsfleetAction):
    DOCUMENTATION = DOCUMENTATION

    def step(self, args: dict[str, t.Any], session: DeviceSession) -> StepResult:
        catalog = open_catalog(args)
        rargs = RootfsArgs.from_args(args)
        writer = writer_for()
        cache_probe = writer.cache_probe(rargs.cache_dir)
        state = probe(session, cache_probe.script, **cache_probe.params)
        target = resolve_target(rargs.release, catalog, state)
        cache = writer.cache_state(rargs.cache_dir, state.extra)
        plan = decide_rootfs(rargs, target, catalog, state, cache, assume_staged=self.check_mode)
        if plan.done:
            return StepResult(data=stamped(state))
        diff = {"before": stamp_summary(state.inactive_stamp), "after": stamp_summary(plan.stamp)}
        if self.check_mode:
            return StepResult(changed=True, actions=plan.actions, diff=diff,
                              data=dict(stamped(state), mode=plan.mode or None, source=plan.stamp.get("source") or stamped(state)["source"]))
        if plan.point_env_first:
            point_env_at_running(session, rargs.extra_keep)
        script = writer.write_script(plan)
        written = session.run_json(script.script, what=f"writing {plan.label}", **script.params)
        after = probe(session)
        stamp = after.inactive_stamp or {}
        if stamp.get("digest") != target.release.digest or not after.inactive_mounted:
            raise DeviceError(
                f"{plan.label} is not stamped with {target.release.digest} after writing it (stamp: {stamp_summary(after.inactive_stamp)})"
            )
        # write_root.sh stamps the root only when its listing has the catalog's sha256 (when it gives one)
        listing = written.get("listing") if plan.listing is not None and isinstance(written.get("listing"), dict) else None
        diff["after"] = stamp_summary(stamp)
        return StepResult(changed=True, actions=plan.actions, diff=diff,
                          data={"partition": plan.label, "stamp": stamp, "mode": plan.mode, "source": stamp.get("source"),
                                "listing_verified": plan.listing is not None, "listing": listing if plan.listing is not None else None})
