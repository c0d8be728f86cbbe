# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The bootenv step's decision: arm the bootloader for the inactive root, commit (rollback-stop), or
roll back; commit and rollback are also the health step's.
"""

from __future__ import annotations

import json
import typing as t
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ansible_collections.osfleet.hup.plugins.plugin_utils import bootenv, hooks
from ansible_collections.osfleet.hup.plugins.plugin_utils.bootcopy import (
    ACTIVE_SYSROOT,
    INACTIVE_SYSROOT,
    PAYLOAD_DIR,
    ROLLBACK_RESERVE,
    bootfiles_diff,
    check_extra_keep,
    need_listing,
    payload_of,
    plan_boot_copy,
    plan_inactive_copy,
    previous_release_problem,
    staged_stamp,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import NotStaged, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.fileops import BOOT_MOUNT, STATE_MOUNT, Op, SwitchPlan, finish_ops
from ansible_collections.osfleet.hup.plugins.plugin_utils.markers import (
    ALTBOOT_BREADCRUMB,
    ARM_REMOVES,
    HEALTH_BREADCRUMB,
    HEALTH_VARIABLES,
    HEALTH_VARIABLES_FILE,
    ROLLBACK_MARKER,
    STOP_REMOVES,
    marker_plan,
    markers_text,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import SwitchProbe


def current_boot_state(dev: DeviceState) -> tuple[bootenv.BootState, dict[str, bootenv.FileContent]]:
    """The env the probe read, and its files (the ones a plan rewrites)."""
    files = bootenv.env_files(dev)
    bootenv.check_writable(files)
    return bootenv.boot_state(dev), files


def _same(a: bootenv.FileContent, b: bootenv.FileContent) -> bool:
    """Env file contents compare equal; the probe loses trailing newlines of text files."""
    if a is None or b is None:
        return a is None and b is None
    ta = a.decode("utf-8", "replace") if isinstance(a, bytes) else a
    tb = b.decode("utf-8", "replace") if isinstance(b, bytes) else b
    return ta.rstrip("\n") == tb.rstrip("\n")


def env_plan(before: Mapping[str, bootenv.FileContent], state: bootenv.BootState) -> tuple[list[Op], dict[str, bootenv.FileContent]]:
    """Operations that make the env files say ``state``, and the files after them."""
    try:
        rendered = bootenv.render_files(state, before)
    except ValueError as exc:
        raise PlanError(f"cannot write the bootloader env: {exc}") from None
    ops: list[Op] = []
    after = dict(before)
    for name, content in rendered.items():
        if _same(before.get(name), content):
            continue
        after[name] = content
        if content is None:
            ops.append(("del", f"{BOOT_MOUNT}/{name}", ""))
        else:
            text = content.decode("utf-8") if isinstance(content, bytes) else content
            ops.append(("put", f"{BOOT_MOUNT}/{name}", text))
    return ops, after


def describe_env(state: bootenv.BootState, dev: DeviceState) -> dict[str, t.Any]:
    return {
        "bootloader": state.bootloader,
        "resin_root_part": state.root_part,
        "root": dev.root_label(state.root_part),
        "upgrade_available": state.upgrade_available,
        "bootcount": state.bootcount,
        "bootcount_limit": state.bootcount_limit,
    }


def _env_section(before_files: Mapping[str, bootenv.FileContent], after_files: Mapping[str, bootenv.FileContent],
                 markers_before: set[str], markers_after: set[str]) -> dict[str, str]:
    diff = bootenv.diff_text(before_files, after_files)
    return {
        "before": diff["before"] + markers_text(markers_before),
        "after": diff["after"] + markers_text(markers_after),
    }


def _env_actions(before: bootenv.BootState, after: bootenv.BootState, dev: DeviceState, env_ops: list[Op]) -> list[str]:
    if not env_ops:
        return []
    parts = []
    if before.root_part != after.root_part:
        parts.append(f"resin_root_part {before.root_part:x} -> {after.root_part:x} ({dev.root_label(after.root_part)})")
    if before.upgrade_available != after.upgrade_available:
        parts.append(f"upgrade_available {int(before.upgrade_available)} -> {int(after.upgrade_available)}")
    if before.bootcount != after.bootcount or any(op[0] == "del" for op in env_ops):
        parts.append("reset the boot counter")
    return [f"set the bootloader env: {', '.join(parts) or 'rewrite'}"]


def plan_arm(dev: DeviceState, probe: SwitchProbe, *, expected_digest: str | None = None, extra_keep: Iterable[str] = (),
             assume_staged: bool = False) -> SwitchPlan:
    """bootenv armed: env names the inactive root, ``upgrade_available=1``, count reset, breadcrumbs
    written, the markers of a previous rollback removed (hook 80-rollback + the flip hooks).

    ``assume_staged`` (check mode): plan the env change even when the release is not staged yet
    (no stamp, boot files not copied), and say so.
    """
    state, files = current_boot_state(dev)
    active_stamp = dev.active_stamp or {}
    if expected_digest and active_stamp.get("digest") == expected_digest and state.root_part == dev.active_index:
        how = "waiting for its commit" if state.upgrade_available else "committed"
        return SwitchPlan(msg=f"already booted the target from {dev.active_label} ({how}); nothing to arm",
                          data={"boot_env": describe_env(state, dev)})
    if dev.hostapp:
        return verify_hostapp_armed(dev, probe, state, expected_digest=expected_digest, extra_keep=extra_keep, assume_staged=assume_staged)
    notes: list[str] = []
    try:
        stamp = _staged_release(dev, probe, expected_digest, extra_keep)
    except NotStaged as exc:
        if not assume_staged:
            raise
        stamp = {}
        notes.append(f"(assumed the earlier steps staged the release: {exc})")
    target = bootenv.arm(state, dev.inactive_index)
    env_ops, after_files = env_plan(files, target)
    m_ops, m_actions, m_before, m_after = marker_plan(
        dev, probe,
        put={HEALTH_BREADCRUMB: "", ALTBOOT_BREADCRUMB: "", HEALTH_VARIABLES_FILE: HEALTH_VARIABLES},
        remove=ARM_REMOVES,
    )
    # breadcrumbs first: an env armed without them would boot the new OS with no rollback
    plan = SwitchPlan(ops=finish_ops(m_ops + env_ops), actions=_env_actions(state, target, dev, env_ops) + m_actions)
    if plan.ops:
        plan.diff = _env_section(files, after_files, m_before, m_after)
        plan.actions += notes
    plan.data = {"boot_env": describe_env(target, dev), "release": {k: stamp.get(k) for k in ("version", "digest") if k in stamp}}
    return plan


def verify_hostapp_armed(dev: DeviceState, probe: SwitchProbe, state: bootenv.BootState, *, expected_digest: str | None,
                         extra_keep: Iterable[str] = (), assume_staged: bool = False) -> SwitchPlan:
    """bootenv armed on a balenaOS (hostapp) device: the new OS's hostapp-update hooks (run by
    osfleet.hup.rootfs) armed the env, wrote the breadcrumbs and copied the boot files. Verify
    that, never write; PlanError naming what is missing otherwise."""
    try:
        stamp = staged_stamp(dev, expected_digest)
    except NotStaged as exc:
        if not assume_staged:
            raise
        return SwitchPlan(actions=[f"verified the switch that {hooks.NEW_HOOKS} make once osfleet.hup.rootfs has run hostapp-update ({exc})"],
                          data={"boot_env": describe_env(bootenv.arm(state, dev.inactive_index), dev), "release": {}})
    problems = hooks.env_problems(dev, probe, state)
    expected = f"arm the bootloader env for the new root {dev.inactive_label} and write the rollback breadcrumbs"
    if probe.listed:
        files = hooks.verify_boot_files(dev, probe, extra_keep=check_extra_keep(extra_keep))
        problems += files.problems
        expected = f"arm the bootloader env for the new root {dev.inactive_label}, write the rollback breadcrumbs and {files.expected}"
    if problems:
        raise PlanError(hooks.failure(problems, expected, "osfleet.hup.bootenv"))
    action = (f"verified the switch to {dev.inactive_label} ({stamp.get('version', '?')}): {hooks.NEW_HOOKS} armed the bootloader env "
              f"(resin_root_part={state.root_part:x}, upgrade_available=1) and wrote the rollback breadcrumbs")
    return SwitchPlan(actions=[action], msg=action, data={"boot_env": describe_env(state, dev),
                                                          "release": {k: stamp.get(k) for k in ("version", "digest") if k in stamp}})


def plan_hostapp_rollback(dev: DeviceState, probe: SwitchProbe, *, now: str = "", extra_keep: Iterable[str] = ()) -> SwitchPlan:
    """bootenv rolled_back on a balenaOS (hostapp) device: the running OS's own hooks put its boot
    files and env back (``DURING_UPDATE=0 hostapp-update-hooks``, hostapp-update's recovery); the
    step runs them when anything differs (``pending`` names them; the ops record the rollback).

    Back to the root that runs only: a rollback of a booted new OS to the previous one is the old
    OS's hooks' work, which the device's rollback-health does."""
    state = bootenv.boot_state(dev)
    target_index = rollback_target(state, dev.active_index, dev.inactive_index)
    data: dict[str, t.Any] = {"boot_env": describe_env(state, dev), "restored": [], "removed": []}
    if target_index == dev.inactive_index:
        if state.root_part == dev.inactive_index and not state.upgrade_available:
            data["rollback_to"] = {"root": dev.inactive_label, "version": dev.inactive_os_release.get("VERSION", "?")}
            return SwitchPlan(msg=f"a rollback to {dev.inactive_label} waits for its reboot; nothing to do", data=data)
        raise PlanError(
            f"the device runs the new OS on {dev.active_label}, armed and not committed: on a balenaOS device the rollback to the previous OS "
            f"is the device's rollback-health's (the old OS's hooks from the inactive hostapp); bootenv rolled_back does not do it"
        )
    data["rollback_to"] = {"root": dev.active_label, "version": dev.version}
    problems = hooks.restore_done(dev, probe, state, extra_keep=check_extra_keep(extra_keep))
    if not problems:
        return SwitchPlan(data=data)
    check = hooks.check_boot_files(probe, probe.payloads.get("active"), extra_keep=extra_keep, what="the running OS") if probe.listed else None
    data["restored"] = check.differ if check else []
    after = bootenv.rollback(state, dev.active_index)
    data["boot_env"] = describe_env(after, dev)
    marker = {"reason": "requested", "at": now, "from_root": dev.active_label, "from_version": dev.version,
              "to_root": dev.active_label, "to_version": dev.version}
    plan = SwitchPlan(
        ops=[("put", f"{STATE_MOUNT}/{ROLLBACK_MARKER}", json.dumps(marker, sort_keys=True) + "\n")],
        pending=hooks.CURRENT_HOOKS,
        actions=[f"put the env and boot files back for the running OS ({dev.version or '?'}, {dev.active_label}) with its own hooks "
                 f"({hooks.CURRENT_HOOKS}): {'; '.join(problems)}",
                 f"recorded the rollback (requested) in {STATE_MOUNT}/{ROLLBACK_MARKER}"],
        data=data,
    )
    files = bootenv.env_files(dev)
    try:
        after_files = env_plan(files, after)[1]
    except PlanError:
        after_files = dict(files)
    markers_before = set(dev.markers) | ({ROLLBACK_MARKER} if probe.rollback_marker is not None else set())
    plan.diff = _env_section(files, after_files, markers_before, (markers_before - set(STOP_REMOVES)) | {ROLLBACK_MARKER})
    return plan


def plan_after_previous_hooks(dev: DeviceState, probe: SwitchProbe, *, reason: str = "checks", now: str = "") -> SwitchPlan:
    """The health step's rollback on a balenaOS (hostapp) device, once the previous OS's hooks ran
    (rollback-health's way: they put its boot files back and armed the env for its root): what
    rollback-stop then does (``upgrade_available=0``, no count, breadcrumbs removed) and the
    ``osfleet-rollback`` record. PlanError when the hooks did not point the env at the previous root."""
    state, files = current_boot_state(dev)
    if state.root_part != dev.inactive_index:
        raise PlanError(f"the previous OS's hooks did not point the bootloader env at {dev.inactive_label} "
                        f"(it names {dev.root_label(state.root_part)}); nothing more was written")
    target = bootenv.commit(state)
    env_ops, after_files = env_plan(files, target)
    m_ops, m_actions, m_before, m_after = marker_plan(dev, probe, remove=STOP_REMOVES)
    version = dev.inactive_os_release.get("VERSION") or (dev.inactive_stamp or {}).get("version") or "?"
    marker = {"reason": reason, "at": now, "from_root": dev.active_label, "from_version": dev.version, "to_root": dev.inactive_label,
              "to_version": version}
    ops = env_ops + m_ops + [("put", f"{STATE_MOUNT}/{ROLLBACK_MARKER}", json.dumps(marker, sort_keys=True) + "\n")]
    plan = SwitchPlan(ops=finish_ops(ops), actions=[f"ran {hooks.PREVIOUS_HOOKS}: they put the boot files and env of {dev.inactive_label} back"]
                      + _env_actions(state, target, dev, env_ops) + m_actions
                      + [f"recorded the rollback ({reason}) in {STATE_MOUNT}/{ROLLBACK_MARKER}"])
    plan.diff = _env_section(files, after_files, m_before, m_after | {ROLLBACK_MARKER})
    plan.data = {"boot_env": describe_env(target, dev), "rollback_to": {"root": dev.inactive_label, "version": version}}
    return plan


def _staged_release(dev: DeviceState, probe: SwitchProbe, expected_digest: str | None, extra_keep: Iterable[str]) -> dict[str, t.Any]:
    """The inactive root's stamp, once the release is staged: stamp there (naming ``expected_digest``)
    and its boot files on the boot partition. NotStaged otherwise."""
    stamp = staged_stamp(dev, expected_digest)
    copy, _payload, _boot, what = plan_inactive_copy(dev, probe, stamp, reserve=0, extra_keep=extra_keep)
    if copy.plan.copy:
        names = ", ".join(copy.plan.copy[:5]) + (", ..." if len(copy.plan.copy) > 5 else "")
        raise NotStaged(
            f"the boot partition does not hold the boot files of {what} ({len(copy.plan.copy)} differ: {names}); run osfleet.hup.bootfiles first"
        )
    return stamp


def plan_commit(dev: DeviceState, probe: SwitchProbe) -> SwitchPlan:
    """bootenv committed: ``rollback-stop`` (facts §9.8): breadcrumbs, variables and
    rollback-health-failed removed, boot counter cleared, ``upgrade_available=0``. On a balenaOS
    (hostapp) device a commit is rollback-stop and then the running OS's commit hooks
    (hostapp-facts §5): the plan's last action says so (:func:`hooks.commit_hooks_due`), the
    step runs them after the operations (:func:`hooks.run_commit_hooks`)."""
    state, files = current_boot_state(dev)
    if state.upgrade_available and state.root_part != dev.active_index:
        raise PlanError(
            f"the bootloader env is armed for {dev.root_label(state.root_part)}, which has not booted yet "
            f"(the device runs {dev.active_label}); reboot into it (osfleet.hup.reboot) before committing"
        )
    target = bootenv.commit(state)
    env_ops, after_files = env_plan(files, target)
    m_ops, m_actions, m_before, m_after = marker_plan(dev, probe, remove=STOP_REMOVES)
    plan = SwitchPlan(ops=finish_ops(env_ops + m_ops), actions=_env_actions(state, target, dev, env_ops) + m_actions)
    if plan.ops:
        plan.diff = _env_section(files, after_files, m_before, m_after)
    if hooks.commit_hooks_due(dev, plan.ops):
        plan.actions.append(hooks.COMMIT_HOOKS_ACTION)
    plan.data = {"boot_env": describe_env(target, dev)}
    return plan


def rollback_target(state: bootenv.BootState, active_index: int, inactive_index: int) -> int:
    """The root a rollback returns to (the one that ran before the update).

    * armed for the inactive root, not booted yet (or the bootloader fell back to the active
      root): the active root, i.e. disarm;
    * the env names the inactive root and is not armed: a rollback already happened, waiting for
      its reboot: the inactive root;
    * armed and booted (the env names the active root): the inactive root;
    * not armed, the env names the active root: nothing was switched; the active root stays.
    """
    if state.root_part not in (active_index, inactive_index):
        raise PlanError(f"the bootloader env names partition {state.root_part}, which is neither root ({active_index}, {inactive_index})")
    if state.root_part == inactive_index:
        return active_index if state.upgrade_available else inactive_index
    return inactive_index if state.upgrade_available else active_index


def plan_rollback(
    dev: DeviceState,
    probe: SwitchProbe,
    *,
    target_index: int | None = None,
    reason: str = "requested",
    now: str = "",
    extra_keep: Iterable[str] = (),
    record: bool = True,
) -> SwitchPlan:
    """Roll back: the target root's boot files back on the boot partition, the env at the target
    root with ``upgrade_available=0`` and no count, breadcrumbs cleared (rollback-stop), and the
    marker ``/mnt/state/osfleet-rollback`` (reason, time) written when anything changed (unless
    ``record`` is false: :func:`plan_point_at_running`).

    ``target_index`` None: :func:`rollback_target` decides (bootenv rolled_back); the health step
    passes the inactive root explicitly (it rolls back even after the device's own commit).
    """
    state, files = current_boot_state(dev)
    target_index = rollback_target(state, dev.active_index, dev.inactive_index) if target_index is None else target_index
    if target_index not in (dev.active_index, dev.inactive_index):
        raise PlanError(f"cannot roll back to partition {target_index}: it is neither root")
    side = "active" if target_index == dev.active_index else "inactive"
    label = dev.root_label(target_index)
    if side == "inactive" and not dev.inactive_os_release:
        raise PlanError(f"cannot roll back to the inactive root ({label}): it holds no OS (no /etc/os-release)")
    version = dev.version if side == "active" else dev.inactive_os_release.get("VERSION", "?")
    boot, free = need_listing(probe)
    payload = payload_of(probe, side, label)
    sysroot = ACTIVE_SYSROOT if side == "active" else INACTIVE_SYSROOT
    copy = plan_boot_copy(
        f"{sysroot}/{PAYLOAD_DIR}", payload, boot, free, reserve=ROLLBACK_RESERVE, extra_keep=check_extra_keep(extra_keep),
        what=f"the {side} root ({label}, {version})", fingerprint=False,
        leaving=probe.payloads.get("inactive" if side == "active" else "active"), block_size=probe.boot_block_size,
    )
    target = bootenv.rollback(state, target_index)
    env_ops, after_files = env_plan(files, target)
    m_ops, m_actions, m_before, m_after = marker_plan(dev, probe, remove=STOP_REMOVES)
    plan = SwitchPlan()
    if copy.plan.copy:
        plan.actions.append(f"restored {len(copy.plan.copy)} boot files of {label} ({version})")
    if copy.removed:
        plan.actions.append(f"removed {len(copy.removed)} boot files that {label} ({version}) does not ship: {', '.join(copy.removed)}")
    plan.actions += _env_actions(state, target, dev, env_ops) + m_actions
    ops = copy.ops + env_ops + m_ops
    if ops and not record:
        plan.diff = _env_section(files, after_files, m_before, m_after)
    if ops and record:
        marker = {"reason": reason, "at": now, "from_root": dev.active_label, "from_version": dev.version, "to_root": label, "to_version": version}
        ops.append(("put", f"{STATE_MOUNT}/{ROLLBACK_MARKER}", json.dumps(marker, sort_keys=True) + "\n"))
        plan.actions.append(f"recorded the rollback ({reason}) in {STATE_MOUNT}/{ROLLBACK_MARKER}")
        m_after = m_after | {ROLLBACK_MARKER}
        plan.diff = bootfiles_diff(copy, payload, boot) if copy.ops else None
        plan.extend(SwitchPlan(diff=_env_section(files, after_files, m_before, m_after)))
    plan.ops = finish_ops(ops)
    plan.data = {
        "boot_env": describe_env(target, dev),
        "rollback_to": {"root": label, "version": version},
        "restored": [copy.dst_names[p] for p in copy.plan.copy],
        "removed": list(copy.removed),
    }
    return plan


def plan_point_at_running(dev: DeviceState, probe: SwitchProbe, *, extra_keep: Iterable[str] = ()) -> SwitchPlan:
    """Before the inactive root is written (rootfs): the env at the running root, disarmed, with the
    running root's boot files, so that a power cut during the write boots the running root. No
    rollback is recorded: the marker of an earlier rollback stays as it was."""
    return plan_rollback(dev, probe, target_index=dev.active_index, extra_keep=extra_keep, record=False)


@dataclass(frozen=True)
class BootenvArgs:
    """The bootenv module's options; ``expected_digest`` defaulted from the release options."""

    state: str
    expected_digest: str | None
    extra_keep: tuple[str, ...]
    expected_version: str = ""
    expected_image_id: str = ""

    @classmethod
    def from_args(cls, args: t.Mapping[str, t.Any], expected_digest: str | None) -> BootenvArgs:
        return cls(args["state"], expected_digest, tuple(args["extra_keep"] or ()), args.get("expected_version") or "",
                   args.get("expected_image_id") or "")


def decide_bootenv(args: BootenvArgs, dev: DeviceState, probe: SwitchProbe, *, now: str = "", assume_staged: bool = False) -> SwitchPlan:
    """The bootenv step: arm, commit or roll back (``now``: the time the rollback marker records)."""
    if args.state == "armed":
        return plan_arm(dev, probe, expected_digest=args.expected_digest, extra_keep=args.extra_keep, assume_staged=assume_staged)
    if args.state == "reverted":
        return plan_revert(dev, probe, args, assume_staged=assume_staged)
    if args.expected_version or args.expected_image_id:
        raise PlanError(f"expected_version and expected_image_id apply to state=reverted only, not state={args.state}")
    if args.expected_digest:
        raise PlanError(f"expected_digest applies to state=armed only, not state={args.state}")
    if args.state == "committed":
        return plan_commit(dev, probe)
    if args.state == "rolled_back":
        if dev.hostapp:
            return plan_hostapp_rollback(dev, probe, now=now, extra_keep=args.extra_keep)
        return plan_rollback(dev, probe, reason="requested", now=now, extra_keep=args.extra_keep)
    raise PlanError(f"unknown state {args.state!r} (expected armed, committed, rolled_back or reverted)")


def plan_revert(dev: DeviceState, probe: SwitchProbe, args: BootenvArgs, *, assume_staged: bool = False) -> SwitchPlan:
    """bootenv reverted: the switch back to the release the inactive root still holds (a revert of a
    committed update), only when it verifiably holds ``expected_version`` (bootcopy.previous_release_problem).

    On a balenaOS (hostapp) device that OS's own hooks arm it (``pending``: the step runs
    scripts/previous_hooks.sh, chrooted in the inactive hostapp with DURING_UPDATE=1, as rollback-health
    does; rollback-health's variables first, as hostapp-update writes them), then the step verifies
    the env, the breadcrumbs and the boot files as for an update (nothing of the old root is
    rewritten). On a plain A/B device it is state=armed for that root (its boot files copied before
    by osfleet.hup.bootfiles)."""
    version = args.expected_version
    if not version:
        raise PlanError("state=reverted needs expected_version (the release the inactive root holds)")
    state = bootenv.boot_state(dev)
    if dev.version == version and state.root_part == dev.active_index:
        how = "waiting for its commit" if state.upgrade_available else "committed"
        return SwitchPlan(msg=f"already booted {version} from {dev.active_label} ({how}); nothing to arm",
                          data={"boot_env": describe_env(state, dev), "release": {"version": version}})
    problem = previous_release_problem(
        hostapp=dev.hostapp, label=dev.inactive_label, stamp=dev.inactive_stamp,
        image_id=dev.inactive_hostapp.image_id if dev.inactive_hostapp else "", version=version,
        expected_image_id=args.expected_image_id, expected_digest=args.expected_digest or "")
    if problem:
        raise PlanError(f"not revertible: {problem}; nothing was written")
    if not dev.hostapp:
        stamp = dev.inactive_stamp or {}
        return plan_arm(dev, probe, expected_digest=stamp.get("digest"), extra_keep=args.extra_keep, assume_staged=assume_staged)
    who = hooks.PREVIOUS_HOOKS.replace("previous OS", f"old OS ({version})")
    problems = hooks.env_problems(dev, probe, state)
    if probe.listed and not problems:
        problems += hooks.verify_boot_files(dev, probe, extra_keep=check_extra_keep(args.extra_keep)).problems
    data = {"boot_env": describe_env(bootenv.arm(state, dev.inactive_index), dev), "release": {"version": version}}
    if not problems:
        action = (f"verified the switch back to {dev.inactive_label} ({version}): {who} armed the bootloader env "
                  f"(resin_root_part={state.root_part:x}, upgrade_available=1) and wrote the rollback breadcrumbs")
        return SwitchPlan(msg=action, actions=[action], data={**data, "boot_env": describe_env(state, dev)})
    return SwitchPlan(pending=hooks.PREVIOUS_HOOKS,
                      actions=[f"arm the switch back to {dev.inactive_label} ({version}) with {who}: {'; '.join(problems)}"], data=data)


def needs_listing(state: str) -> bool:
    """Whether a bootenv state needs the boot files listed (hashing; skipped for a commit)."""
    return state != "committed"
