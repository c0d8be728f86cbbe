# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The bootfiles step's decision: the boot partition gets the inactive root's payload, except the
keep-back files.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils import hooks, keepback
from ansible_collections.osfleet.hup.plugins.plugin_utils.bootcopy import bootfiles_diff, check_extra_keep, plan_inactive_copy, staged_stamp
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import NotStaged, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import BOOT_MOUNT, SwitchPlan
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import SwitchProbe


@dataclass(frozen=True)
class BootfilesArgs:
    """The bootfiles module's options (defaults in its DOCUMENTATION) and the digest the inactive
    root's stamp must name (from the optional release options), if any."""

    extra_keep: tuple[str, ...]
    reserve_kib: int
    expected_digest: str | None = None

    @classmethod
    def from_args(cls, args: t.Mapping[str, t.Any], expected_digest: str | None) -> BootfilesArgs:
        return cls(tuple(args["extra_keep"] or ()), int(args["reserve_kib"]), expected_digest)


def decide_bootfiles(args: BootfilesArgs, dev: DeviceState, probe: SwitchProbe, *, assume_staged: bool = False) -> SwitchPlan:
    """The bootfiles step: the boot partition gets the inactive root's payload, except keep-back files.

    ``assume_staged`` (check mode): when the inactive root does not hold the release yet, report
    the copy as pending instead of failing.
    """
    if args.reserve_kib < 0:
        raise PlanError(f"reserve_kib must not be negative, got {args.reserve_kib}")
    extra_keep = check_extra_keep(args.extra_keep)
    if dev.hostapp:
        return verify_hostapp_bootfiles(args, dev, probe, extra_keep, assume_staged=assume_staged)
    try:
        stamp = staged_stamp(dev, args.expected_digest)
    except NotStaged as exc:
        if not assume_staged:
            raise
        note = f"copied the new release's boot files once osfleet.hup.rootfs has written it ({exc})"
        return SwitchPlan(actions=[note], pending=note, diff=pending_diff(dev, probe, extra_keep),
                          data={"copied": [], "kept_back": [], "unchanged": [], "needed_kib": 0, "free_after_kib": 0, "release": {}})
    copy, payload, boot, what = plan_inactive_copy(dev, probe, stamp, reserve=args.reserve_kib * 1024, extra_keep=extra_keep)
    plan = SwitchPlan(ops=copy.ops)
    for path in copy.plan.copy:
        verb = "replaced" if copy.dst_names[path] in boot.files else "added"
        plan.actions.append(f"{verb} {BOOT_MOUNT}/{copy.dst_names[path]} from {what}")
    if any(op[0] == "put" for op in copy.ops):
        plan.actions.append(f"regenerated {BOOT_MOUNT}/{keepback.FINGERPRINT_FILE}")
    if copy.stale_tmp:
        plan.actions.extend(f"removed stale temporary {BOOT_MOUNT}/{name}" for name in copy.stale_tmp if ("del", f"{BOOT_MOUNT}/{name}", "") in copy.ops)
    if plan.ops:
        plan.diff = bootfiles_diff(copy, payload, boot)
    plan.data = {
        "copied": [copy.dst_names[p] for p in copy.plan.copy],
        "kept_back": list(copy.plan.kept_back),
        "unchanged": list(copy.plan.unchanged),
        "needed_kib": -(-copy.plan.needed_bytes // 1024),
        "free_after_kib": copy.plan.free_after // 1024,
        "release": {k: stamp.get(k) for k in ("version", "digest", "device_type") if k in stamp},
    }
    return plan


def verify_hostapp_bootfiles(args: BootfilesArgs, dev: DeviceState, probe: SwitchProbe, extra_keep: tuple[str, ...], *,
                             assume_staged: bool = False) -> SwitchPlan:
    """On a balenaOS (hostapp) device the new OS's hostapp-update hooks copied the boot files (run by
    osfleet.hup.rootfs): verify them, never write. PlanError naming what is missing otherwise."""
    empty = {"copied": [], "kept_back": [], "unchanged": [], "needed_kib": 0, "free_after_kib": 0, "release": {}}
    try:
        stamp = staged_stamp(dev, args.expected_digest)
    except NotStaged as exc:
        if not assume_staged:
            raise
        return SwitchPlan(actions=[f"verified the boot files that {hooks.NEW_HOOKS} copy once osfleet.hup.rootfs has run hostapp-update ({exc})"],
                          data=dict(empty))
    check = hooks.verify_boot_files(dev, probe, extra_keep=extra_keep)
    if check.problems:
        raise PlanError(hooks.failure(check.problems, check.expected, "osfleet.hup.bootfiles"))
    action = (f"verified the boot files of {stamp.get('version', '?')} on {BOOT_MOUNT}: {hooks.NEW_HOOKS} copied them "
              f"({len(check.copied)} files, {len(check.kept_back)} kept back)")
    actions = [action + (f"; {check.note}" if check.note else "")]
    data = dict(empty, unchanged=check.copied, kept_back=check.kept_back,
                release={k: stamp.get(k) for k in ("version", "digest", "device_type") if k in stamp})
    if probe.boot_free_bytes is not None:
        data["free_after_kib"] = probe.boot_free_bytes // 1024
    return SwitchPlan(actions=actions, data=data, msg=action)


def pending_diff(dev: DeviceState, probe: SwitchProbe, extra_keep: t.Sequence[str] = ()) -> dict[str, str]:
    """Check mode before the release is staged: the plan as a diff (the new files are known only once
    osfleet.hup.rootfs has written the inactive root); the device's own files that stay are named."""
    files = sorted(probe.boot.files) if probe.boot is not None else []
    kept = [name for name in files if keepback.rule_for(name, extra_keep) != keepback.RULE_COPY and name not in keepback.ENV_FILES]
    return {
        "before": f"# boot files on {BOOT_MOUNT}: those of {dev.version or 'the running OS'} ({dev.active_label})\n",
        "after": f"# boot files on {BOOT_MOUNT}: those of the release osfleet.hup.rootfs writes to {dev.inactive_label}\n"
                 f"# kept back (the device's own): {', '.join(kept) or '-'}\n",
    }
