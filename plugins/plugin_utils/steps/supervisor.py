# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The supervisor step's decision: stop, start, or update the supervisor to the version the new OS
ships.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import BalenaVersion, parse_version


SUPERVISOR_SERVICE = "balena-supervisor"


@dataclass(frozen=True)
class SupervisorArgs:
    state: str
    version: str | None = None
    repository: str | None = None
    #: registries to pull from, in order (primary, fallback)
    registries: tuple[str, ...] = ()
    #: the catalog's supervisor version of the target release, and the release's digest: the
    #: inactive root's supervisor.conf is the default only when that root holds the release
    release_version: str | None = None
    release_digest: str | None = None


@dataclass
class SupervisorPlan:
    op: str  # none | stop | start | update
    active: bool
    before: str | None
    target: str | None = None
    images: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    error: str | None = None


def _strip_v(version: str) -> str:
    return version[1:] if version.startswith("v") else version


def decide_supervisor(args: SupervisorArgs, state: DeviceState) -> SupervisorPlan:
    active = state.services.get(SUPERVISOR_SERVICE) == "active"
    plan = SupervisorPlan(op="none", active=active, before=state.running_supervisor)
    if args.state == "stopped":
        if active:
            plan.op = "stop"
            plan.actions.append(f"stopped {SUPERVISOR_SERVICE}")
        return plan
    if args.state == "started":
        if not active:
            plan.op = "start"
            plan.actions.append(f"started {SUPERVISOR_SERVICE}")
        return plan
    return _decide_supervisor_update(args, state, plan)


def _decide_supervisor_update(args: SupervisorArgs, state: DeviceState, plan: SupervisorPlan) -> SupervisorPlan:
    inactive_holds_release = args.release_digest is None or (state.inactive_stamp or {}).get("digest") == args.release_digest
    wanted = args.version or (state.inactive_supervisor if inactive_holds_release else None) or args.release_version
    if not wanted:
        plan.error = "no supervisor version given, and the inactive root ships no supervisor.conf"
        return plan
    target = _strip_v(wanted)
    try:
        target_v = parse_version(target)
    except ValueError as exc:
        plan.error = f"invalid supervisor version: {exc}"
        return plan
    plan.target = target
    running_v: BalenaVersion | None = None
    if plan.before:
        try:
            running_v = parse_version(plan.before)
        except ValueError:
            running_v = None
    if running_v is not None and running_v >= target_v:
        return plan
    if not args.repository:
        plan.error = "no supervisor repository given and the catalog has no supervisor_repository"
        return plan
    if not args.registries:
        plan.error = "no registry to pull the supervisor from (the catalog has no registries)"
        return plan
    plan.op = "update"
    plan.images = [f"{registry}/{args.repository}:v{target}" for registry in args.registries]
    plan.actions.append(f"updated the supervisor from {plan.before or 'unknown'} to {target}")
    return plan
