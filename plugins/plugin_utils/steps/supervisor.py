# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The supervisor step's decision: stop, start, or update the supervisor to the version the new OS
ships.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import BalenaVersion, parse_version


SUPERVISOR_SERVICE = "balena-supervisor"


@dataclass(frozen=True)
class SupervisorArgs:
    """What the supervisor step works with; None: not given."""

    state: str
    version: str | None = None
    repository: str | None = None
    #: registries to pull from, in order (primary, fallback)
    registries: tuple[str, ...] = ()
    #: the catalog's supervisor version of the target release, and the release's digest: the
    #: inactive root's supervisor.conf is the default only when that root holds the release
    release_version: str | None = None
    release_digest: str | None = None
    insecure: bool = False
    #: the catalog (its supervisors list gives the digest to pull by)
    catalog: Catalog | None = None

    @classmethod
    def from_args(cls, args: t.Mapping[str, t.Any], catalog: Catalog | None, state: DeviceState) -> SupervisorArgs:
        """The module's options, completed from the catalog (needed for state=updated)."""
        if args["state"] != "updated" or catalog is None:
            return cls(state=args["state"])
        release_version = release_digest = None
        if args.get("target_version"):
            release = catalog.release(args.get("device_type") or state.device_type, args["target_version"])
            release_version, release_digest = release.supervisor_version, release.digest
        return cls(
            state="updated",
            version=args.get("version"),
            repository=args.get("repository") or catalog.supervisor_repository,
            registries=tuple(registry for _name, registry in catalog.ordered_registries),
            release_version=release_version,
            release_digest=release_digest,
            insecure=catalog.registry_insecure(args.get("registry_insecure")),
            catalog=catalog,
        )


@dataclass
class SupervisorPlan:
    op: str  # none | stop | start | update
    active: bool
    before: str | None
    target: str | None = None
    images: list[str] = field(default_factory=list)
    insecure: bool = False
    actions: list[str] = field(default_factory=list)

    def view(self) -> dict[str, t.Any]:
        """The result key ``supervisor`` before the act (``after`` is still ``before``)."""
        return {"before": self.before, "after": self.before, "active": self.active, "target": self.target, "image": None}


def _strip_v(version: str) -> str:
    return version[1:] if version.startswith("v") else version


def decide_supervisor(args: SupervisorArgs, state: DeviceState) -> SupervisorPlan:
    """PlanError (with the result key ``supervisor``) when no update can be planned."""
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


def release_supervisor(state: DeviceState, release_version: str | None, release_digest: str | None) -> str | None:
    """The supervisor version a release ships: the inactive root's supervisor.conf when that root holds
    the release (its stamp names the release's digest; no digest given: any), else the catalog's
    (``release_version``, also on a device that runs the release: its inactive root holds the old OS)."""
    inactive_holds_release = release_digest is None or (state.inactive_stamp or {}).get("digest") == release_digest
    return (state.inactive_supervisor if inactive_holds_release else None) or release_version


def supervisor_older(running: str | None, target: BalenaVersion) -> bool:
    """Whether the running supervisor (None or not a version: unknown) is older than ``target``, so
    that state=updated updates it (a newer one is never downgraded)."""
    if not running:
        return True
    try:
        return parse_version(_strip_v(running)) < target
    except ValueError:
        return True


def supervisor_lag(state: DeviceState, release_version: str | None, release_digest: str | None) -> str | None:
    """Why state=updated (with the release's options) would update the running supervisor, None when
    it would not: e.g. on a device that booted the release before its supervisor was updated (a power
    cut after hostapp-update's hooks armed the new OS). A release without a supervisor version (or an
    invalid one) lags nothing here; the step says what is wrong with it."""
    wanted = release_supervisor(state, release_version, release_digest)
    if not wanted:
        return None
    try:
        target = parse_version(_strip_v(wanted))
    except ValueError:
        return None
    if not supervisor_older(state.running_supervisor, target):
        return None
    return f"the supervisor runs {state.running_supervisor or 'an unknown version'}, the release ships {_strip_v(wanted)}"


def _decide_supervisor_update(args: SupervisorArgs, state: DeviceState, plan: SupervisorPlan) -> SupervisorPlan:
    wanted = args.version or release_supervisor(state, args.release_version, args.release_digest)
    if not wanted:
        raise PlanError("no supervisor version given, and the inactive root ships no supervisor.conf", supervisor=plan.view())
    target = _strip_v(wanted)
    try:
        target_v = parse_version(target)
    except ValueError as exc:
        raise PlanError(f"invalid supervisor version: {exc}", supervisor=plan.view()) from None
    plan.target = target
    if not supervisor_older(plan.before, target_v):
        return plan
    if not args.repository:
        raise PlanError("no supervisor repository given and the catalog has no supervisor_repository", supervisor=plan.view())
    if not args.registries:
        raise PlanError("no registry to pull the supervisor from (the catalog has no registries)", supervisor=plan.view())
    image = args.catalog.supervisor(target, args.repository) if args.catalog is not None else None
    if image is None:
        raise PlanError(f"the catalog names no digest for supervisor v{target} in {args.repository} (its supervisors list); "
                        "the supervisor is pulled by digest only", supervisor=plan.view())
    plan.op, plan.insecure = "update", args.insecure
    plan.images = [f"{registry}/{args.repository}:v{target}@{image.digest}" for registry in args.registries]
    plan.actions.append(f"updated the supervisor from {plan.before or 'unknown'} to {target}")
    return plan


def supervisor_view(state: DeviceState) -> dict[str, t.Any]:
    """What the diff shows of the supervisor."""
    return {"version": state.running_supervisor, "active": state.services.get(SUPERVISOR_SERVICE) == "active"}


def verify_supervisor(plan: SupervisorPlan, state: DeviceState) -> str | None:
    """Why the re-probed device is not what the plan made of it (None: it converged)."""
    active = state.services.get(SUPERVISOR_SERVICE) == "active"
    if plan.op == "stop" and active:
        return f"{SUPERVISOR_SERVICE} is still active after stopping it"
    if plan.op == "start" and not active:
        return f"{SUPERVISOR_SERVICE} is not active after starting it"
    if plan.op == "update":
        running = state.running_supervisor
        if running is None or parse_version(running) < parse_version(str(plan.target)):
            return f"the supervisor runs {running or 'an unknown version'} after updating it to {plan.target}"
    return None
