# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The preflight's decision: every coherence check of a host OS update at once, and where the device
stands towards the target (its phase).
"""

from __future__ import annotations

import re
import typing as t
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog, Release
from ansible_collections.osfleet.hup.plugins.plugin_utils.bootenv import boot_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.lockfile import (
    LEGACY_HELD,
    LOCK_PATH,
    default_lock_owner,
    device_clock,
    in_progress,
    may_take,
    lock_unreadable,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.markers import HEALTH_BREADCRUMB, rolled_back_releases
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import MIB, ReleaseArgs, release_dict, root_space_problem
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.device_info import device_facts
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.supervisor import supervisor_lag
from ansible_collections.osfleet.hup.plugins.plugin_utils.method import METHOD_STANDARD, RULE_DOWNGRADE, TAKEOVER_RULES, MethodChoice, choose_method
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import same_version


PHASE_CURRENT = "current"
#: on the target and committed, but the running supervisor is older than the release's: the update
#: only brings the supervisor up (issue 9: a balenaOS device that lost power after hostapp-update's
#: hooks armed the new OS, before the supervisor step, boots the target with the old supervisor)
PHASE_SUPERVISOR_BEHIND = "supervisor_behind"
PHASE_PENDING_COMMIT = "pending_commit"
PHASE_STAGED = "staged"
PHASE_NEEDED = "needed"
#: the phases whose update pulls from a registry (the release, or its supervisor): the preflight
#: checks from the device that one answers
REGISTRY_PHASES = (PHASE_NEEDED, PHASE_STAGED, PHASE_SUPERVISOR_BEHIND)
#: /mnt/state must keep at least this much free (meta-balena#1657: a full state partition breaks boot)
STATE_MIN_FREE_KIB = 64


@dataclass(frozen=True)
class PreflightArgs:
    """The preflight's options (defaults in its DOCUMENTATION; ``lock_owner`` already defaulted)."""

    release: ReleaseArgs
    allow_downgrade: bool
    allow_takeover: bool
    check_registry: bool
    min_free_data_mib: int
    min_free_state_mib: int
    lock_owner: str
    lock_run_id: str | None
    lock_stale_after: int
    retry_rolled_back: bool

    @classmethod
    def from_args(cls, args: t.Mapping[str, t.Any], free_defaults: t.Mapping[str, int]) -> PreflightArgs:
        """``free_defaults``: the documented defaults of ``min_free_mib``'s suboptions (for an explicit null)."""
        free = args.get("min_free_mib") or {}
        margin = {key: int(default if free.get(key) is None else free[key]) for key, default in free_defaults.items()}
        return cls(
            release=ReleaseArgs.from_args(args),
            allow_downgrade=bool(args["allow_downgrade"]),
            allow_takeover=bool(args["allow_takeover"]),
            check_registry=bool(args["check_registry"]),
            min_free_data_mib=margin["data"],
            min_free_state_mib=margin["state"],
            lock_owner=args.get("lock_owner") or default_lock_owner(),
            lock_run_id=args.get("lock_run_id"),
            lock_stale_after=int(args["lock_stale_after"]),
            retry_rolled_back=bool(args["retry_rolled_back"]),
        )


@dataclass(frozen=True)
class RegistryCheck:
    """One registry probed from the device: ``error`` is empty when it answered."""

    name: str
    registry: str
    error: str = ""


def parse_registry_checks(extra: t.Mapping[str, t.Any]) -> list[RegistryCheck]:
    """The registry check of the probe (``scripts/probe_registry.sh``)."""
    return [RegistryCheck(str(r["name"]), str(r["registry"]), str(r.get("error", ""))) for r in extra.get("registries", [])]


def registry_check_skipped(extra: t.Mapping[str, t.Any]) -> bool:
    """Whether the probe spared the device the registry check (its VERSION was one of ``unless_versions``)."""
    return extra.get("skipped") is True


_VERSION_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_~-]*")


def registry_skip_versions(args: PreflightArgs, catalog: Catalog) -> str:
    """The probe's ``unless_versions``: the target as the operator and the catalog spell it, space-separated.

    A device whose /etc/os-release VERSION is one of them most likely runs the target already
    (phase current, or pending_commit), and neither needs a registry, so the probe skips the
    registry check there; :func:`registry_check_missing` says when the check is needed after all.
    Empty (the check everywhere) when check_registry is off, and words that are no plain version
    are left out.
    """
    if not args.check_registry:
        return ""
    target = args.release.target_version
    words = [str(target)] + [str(r.version) for dt in catalog.device_types for r in catalog.releases(dt)
                             if same_version(str(r.version), str(target))]
    return " ".join(dict.fromkeys(w for w in words if _VERSION_WORD.fullmatch(w)))


def registry_check_missing(args: PreflightArgs, plan: PreflightPlan, skipped: bool) -> bool:
    """Whether the device needs the registry check the probe skipped: it runs the target's version,
    but its update still pulls from a registry (phase supervisor_behind)."""
    return args.check_registry and skipped and plan.phase in REGISTRY_PHASES


@dataclass
class PreflightPlan:
    phase: str | None
    method: str | None
    release: Release | None
    device_type: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the rule of method.choose_method that decided, and why (None when the device is on the target)
    method_rule: str | None = None
    method_reason: str | None = None

    def result(self, checks: t.Sequence[RegistryCheck], state: DeviceState) -> dict[str, t.Any]:
        """The preflight's result keys."""
        return {
            "phase": self.phase,
            "method": self.method,
            "method_rule": self.method_rule,
            "method_reason": self.method_reason,
            "release": release_dict(self.release) if self.release else None,
            "problems": self.problems,
            "registries": [{"name": c.name, "registry": c.registry, "ok": not c.error, "error": c.error} for c in checks],
            "device": device_facts(state, strict=False),
        }


def update_phase(release: Release, state: DeviceState) -> tuple[str, str]:
    """Where the device stands towards ``release``: (phase, why)."""
    env = boot_state(state)
    if same_version(state.version, release.version):
        booted_uncommitted = env.upgrade_available or HEALTH_BREADCRUMB in state.markers
        if booted_uncommitted:
            return PHASE_PENDING_COMMIT, f"booted {release.version} on {state.active_label}, not committed yet"
        lag = supervisor_lag(state, release.supervisor_version, release.digest)
        if lag:
            return PHASE_SUPERVISOR_BEHIND, f"already on {release.version} (committed), but {lag}"
        return PHASE_CURRENT, f"already on {release.version} (committed)"
    stamp = state.inactive_stamp or {}
    if stamp.get("digest") == release.digest and same_version(str(stamp.get("version", "")), release.version):
        armed = env.upgrade_available and env.root_part == state.inactive_index
        return PHASE_STAGED, f"{state.inactive_label} holds {release.version}" + (" and the bootloader is armed" if armed else "")
    return PHASE_NEEDED, f"{state.version} → {release.version}"


def _method(catalog: Catalog, device_type: str, release: Release, state: DeviceState, allow_downgrade: bool) -> MethodChoice:
    current_release: Release | None
    try:
        current_release = catalog.release(device_type, state.version)
    except CatalogError:
        current_release = None
    return choose_method(
        device_type,
        state.version,
        release.version,
        min_takeover_version=catalog.device_type(device_type).get("min_takeover_version"),
        current_layout=current_release.layout if current_release else None,
        target_layout=release.layout,
        current_arch=state.os_release.get("OSFLEET_ARCH") or None,
        target_arch=release.arch,
        allow_downgrade=allow_downgrade,
    )


def _space_problems(args: PreflightArgs, release: Release, state: DeviceState) -> list[str]:
    problems = []
    state_need_kib = max(STATE_MIN_FREE_KIB, args.min_free_state_mib * 1024)
    state_free = state.free_kib.get("state")
    if state_free is not None and state_free < state_need_kib:
        problems.append(f"not enough free space on /mnt/state: {state_free} KiB free, {state_need_kib} KiB needed")
    root = root_space_problem(release, state)
    if root:
        problems.append(root)
    if not release.size:
        return problems
    data_need = release.size + args.min_free_data_mib * MIB
    data_free = state.free_kib.get("data")
    if data_free is not None and data_free * 1024 < data_need:
        problems.append(
            f"not enough free space on /mnt/data: {data_free // 1024} MiB free, {-(-data_need // MIB)} MiB needed "
            f"(release {-(-release.size // MIB)} MiB + {args.min_free_data_mib} MiB margin)"
        )
    return problems


def _registry_problem(checks: t.Sequence[RegistryCheck]) -> str | None:
    if not checks or any(not c.error for c in checks):
        return None
    return "no registry answers from the device: " + "; ".join(f"{c.name} {c.registry}: {c.error}" for c in checks)


def _pending_other_problem(state: DeviceState, release: Release) -> str | None:
    """A device that booted a root that is not committed yet, for another version."""
    if same_version(state.version, release.version):
        return None
    env = boot_state(state)
    if env.upgrade_available and env.root_part == state.active_index:
        return (
            f"an update to {state.version} is waiting for its commit ({state.active_label} booted with "
            "upgrade_available=1); commit or roll it back first"
        )
    if state.rollback_health_state in ("waiting", "testing"):
        return f"rollback-health is checking the update to {state.version} ({state.rollback_health_state})"
    return None


def _rolled_back_problem(args: PreflightArgs, state: DeviceState, release: Release, notes: list[str]) -> str | None:
    """A release that rolled back on this device is not tried again unless the operator says so."""
    if same_version(state.version, release.version):
        return None
    rolled = [r for r in rolled_back_releases(state) if same_version(r.version, release.version)]
    if not rolled:
        return None
    why = "; ".join(r.describe() for r in rolled)
    if args.retry_rolled_back:
        notes.append(f"trying {release.version} again although it rolled back on this device ({why}): retry_rolled_back is set")
        return None
    return (
        f"{release.version} rolled back on this device ({why}); it is not tried again unless retry_rolled_back is set "
        "(the role's hup_retry_rolled_back)"
    )


def _lock_problems(args: PreflightArgs, state: DeviceState, now: int | None) -> list[str]:
    problems = []
    if state.legacy_lock_held:
        problems.append(LEGACY_HELD)
    lock = state.lock
    if lock_unreadable(state):
        problems.append(f"the update lock {LOCK_PATH} is unreadable; remove it or take it with osfleet.hup.lock force=true")
    elif lock is not None and may_take(lock, args.lock_owner, args.lock_run_id, device_clock(state, now), args.lock_stale_after) is None:
        problems.append(in_progress(lock, device_clock(state, now), args.lock_stale_after))
    return problems


def decide_preflight(args: PreflightArgs, catalog: Catalog, state: DeviceState,
                     registry_checks: t.Sequence[RegistryCheck] = (), now: int | None = None) -> PreflightPlan:
    """Every coherence check at once; ``problems`` empty means the update may go on.

    The preflight is a check: its problems are its result (it fails with all of them), so this
    decision returns them instead of raising the first.
    """
    device_type = args.release.device_type or state.device_type
    plan = PreflightPlan(phase=None, method=None, release=None, device_type=device_type)
    if device_type != state.device_type:
        plan.problems.append(f"the device is a {state.device_type or '?'}, the release is for {device_type}")
    try:
        plan.release = catalog.release(device_type, args.release.target_version)
    except CatalogError as exc:
        plan.problems.append(str(exc))
        return plan
    release = plan.release
    try:
        plan.phase, why = update_phase(release, state)
    except PlanError as exc:
        plan.problems.append(str(exc))
        return plan
    plan.notes.append(why)
    if plan.phase == PHASE_CURRENT:
        plan.method = METHOD_STANDARD
        return plan
    if same_version(state.version, release.version):
        plan.method = METHOD_STANDARD  # booted the target, not committed: the update is done
    else:
        try:
            choice = _method(catalog, device_type, release, state, args.allow_downgrade)
        except CatalogError as exc:
            plan.problems.append(str(exc))
        else:
            plan.method, plan.method_rule, plan.method_reason = choice.needs, choice.rule, choice.reason
            if choice.refused:
                # the one refusal an option allows: say which (the module's option and the role's variable)
                allow = "; set allow_downgrade (the role's hup_allow_downgrade) to allow it" if choice.rule == RULE_DOWNGRADE else ""
                plan.problems.append(f"{choice.reason} [rule: {choice.rule}]{allow}")
    if plan.method_rule in TAKEOVER_RULES and not args.allow_takeover:
        plan.problems.append(
            f"needs the advanced update (takeover), which wipes the data partition ({plan.method_reason}) "
            f"[rule: {plan.method_rule}]; set allow_takeover (the role's hup_allow_data_loss: true, per device or group) to allow it"
        )
    pending = _pending_other_problem(state, release)
    if pending:
        plan.problems.append(pending)
    rolled_back = _rolled_back_problem(args, state, release, plan.notes)
    if rolled_back:
        plan.problems.append(rolled_back)
    plan.problems.extend(_lock_problems(args, state, now))
    if plan.phase == PHASE_NEEDED:
        plan.problems.extend(_space_problems(args, release, state))
        env = boot_state(state)
        if env.root_part == state.inactive_index:
            # issue 7 item 1: the root to write is the one the bootloader boots next
            plan.notes.append(f"the bootloader env names {state.inactive_label}, the root to write, as the root to boot "
                              f"(upgrade_available={int(env.upgrade_available)}); osfleet.hup.rootfs points it at the running root "
                              f"{state.active_label} before it writes")
    if args.check_registry and plan.phase in REGISTRY_PHASES:
        registry = _registry_problem(registry_checks)
        if registry:
            plan.problems.append(registry)
    plan.problems = list(dict.fromkeys(plan.problems))
    return plan
