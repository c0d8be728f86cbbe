# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The decide functions of the preparing steps: preflight, lock, supervisor, fetch, rootfs.

Each ``decide_<step>(args, ..., state)`` is a pure function from the step's arguments, the
catalog (already loaded) and the probed :class:`~.device.DeviceState` to a plan dataclass. No
I/O: the action plugins probe, call these, and hand the plan to a script (``writer.py`` for
fetch and rootfs). Errors that forbid a plan are returned in the plan (``error``/``problems``),
so check mode can report them the same way as a real run.
"""

from __future__ import annotations

import datetime
import getpass
import json
import posixpath
import re
import socket
import typing as t
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import (
    KIND_DELTA,
    KIND_FALLBACK,
    KIND_REGISTRY,
    Catalog,
    Release,
    Source,
    load_catalog,
    sources_for,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import LOCK_PATH, DeviceState, boot_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError, DeviceError
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import (
    METHOD_STANDARD,
    METHOD_TAKEOVER,
    BalenaVersion,
    check_update_path,
    parse_version,
    same_version,
    select_method,
)

PHASE_CURRENT = "current"
PHASE_PENDING_COMMIT = "pending_commit"
PHASE_STAGED = "staged"
PHASE_NEEDED = "needed"

DEFAULT_SOURCES = (KIND_DELTA, KIND_REGISTRY, KIND_FALLBACK)
DEFAULT_CACHE_DIR = "/mnt/data/osfleet/images"
#: the inactive root must hold the release with this much headroom (release size × factor)
ROOT_SIZE_FACTOR = 1.2
#: /mnt/state must keep at least this much free (meta-balena#1657: a full state partition breaks boot)
STATE_MIN_FREE_KIB = 64
MIB = 1024 * 1024
LEGACY_LOCK = "/var/lock/resinhup.lock"


# --- shared helpers (controller side) -----------------------------------------------------------

def open_catalog(source: str) -> Catalog:
    """Load the catalog; every error names the catalog (the only I/O in this module)."""
    try:
        return load_catalog(source)
    except CatalogError as exc:
        text = str(exc)
        raise CatalogError(text if source in text else f"catalog {source}: {text}") from None


def default_lock_owner() -> str:
    """``<user>@<controller host>``: who runs this playbook."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def digest_hex(digest: str) -> str:
    """``sha256:abc...`` → ``abc...``"""
    return digest.split(":", 1)[1] if ":" in digest else digest


def release_dict(release: Release) -> dict[str, t.Any]:
    """The catalog entry of a release as plain data (for results)."""
    return {
        "device_type": release.device_type,
        "version": release.version,
        "digest": release.digest,
        "repository": release.repository,
        "tag": release.tag,
        "size": release.size,
        "supervisor_version": release.supervisor_version,
        "layout": release.layout,
        "arch": release.arch,
        "disk_image": release.disk_image,
        "deltas": [
            {"from": d.from_version, "repository": d.repository, "tag": d.tag, "digest": d.digest, "size": d.size}
            for d in release.deltas
        ],
        "lab_fault": release.lab_fault,
    }


def stamp_summary(stamp: dict[str, t.Any] | None) -> dict[str, t.Any] | None:
    """What the diff shows of a release stamp (None: no stamp)."""
    if not stamp:
        return None
    return {k: stamp.get(k) for k in ("device_type", "version", "digest", "source")}


@dataclass(frozen=True)
class ReleaseArgs:
    """The options every release step shares (doc fragment ``osfleet.hup.release``)."""

    target_version: str
    device_type: str | None = None
    registry_insecure: bool | None = None

    @classmethod
    def from_args(cls, args: t.Mapping[str, t.Any]) -> ReleaseArgs:
        return cls(str(args["target_version"]), args.get("device_type"), args.get("registry_insecure"))


@dataclass(frozen=True)
class Target:
    """The release a step works towards, resolved against the catalog and the device."""

    device_type: str
    release: Release
    registries: dict[str, str]
    insecure: bool


def resolve_target(args: ReleaseArgs, catalog: Catalog, state: DeviceState) -> Target:
    """The target release; CatalogError names the device type and the known versions."""
    device_type = args.device_type or state.device_type
    release = find_release(catalog, device_type, args.target_version)
    insecure = catalog.insecure_registries if args.registry_insecure is None else bool(args.registry_insecure)
    return Target(device_type, release, catalog.registries, insecure)


def find_release(catalog: Catalog, device_type: str, version: str) -> Release:
    """``catalog.release`` with the message "unknown target version X for T; known: ..."."""
    try:
        return catalog.release(device_type, version)
    except CatalogError:
        known = ", ".join(r.version for r in catalog.releases(device_type))
        if not known:
            raise CatalogError(
                f"unknown device type {device_type} in catalog {catalog.source}; known: {', '.join(catalog.device_types) or 'none'}"
            ) from None
        raise CatalogError(f"unknown target version {version} for {device_type}; known: {known}") from None


def active_release(catalog: Catalog, device_type: str, state: DeviceState) -> Release | None:
    """The catalog release the active root verifiably holds: its stamp names a catalog release
    of this device type with the same digest (so a delta from that release applies to it)."""
    stamp = state.active_stamp or {}
    version, digest = stamp.get("version"), stamp.get("digest")
    if not isinstance(version, str) or not isinstance(digest, str):
        return None
    if stamp.get("device_type") not in (None, device_type):
        return None
    try:
        release = catalog.release(device_type, version)
    except CatalogError:
        return None
    return release if release.digest == digest else None


def _lock_text(lock: dict[str, t.Any]) -> str:
    return f"lock held by {lock.get('owner') or '?'} since {lock.get('since') or '?'}"


def _lock_age(lock: dict[str, t.Any], now: int | None) -> float | None:
    since = lock.get("since")
    if now is None or not isinstance(since, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return now - when.timestamp()


def lock_is_stale(lock: dict[str, t.Any], now: int | None, stale_after: int) -> bool:
    """True when the lock is older than ``stale_after`` seconds by the device's clock."""
    age = _lock_age(lock, now)
    return age is not None and stale_after > 0 and age > stale_after


# --- preflight ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreflightArgs:
    release: ReleaseArgs
    allow_downgrade: bool = False
    allow_takeover: bool = False
    check_registry: bool = True
    min_free_data_mib: int = 64
    min_free_state_mib: int = 0
    lock_owner: str = ""
    lock_stale_after: int = 7200


@dataclass(frozen=True)
class RegistryCheck:
    """One registry probed from the device: ``error`` is empty when it answered."""

    name: str
    registry: str
    error: str = ""


@dataclass
class PreflightPlan:
    phase: str | None
    method: str | None
    release: Release | None
    device_type: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def registries_to_check(catalog: Catalog) -> list[tuple[str, str]]:
    """``[(name, host:port)]`` of the catalog's registries, primary first."""
    regs = catalog.registries
    ordered = [name for name in ("primary", "fallback") if regs.get(name)]
    ordered += sorted(name for name in regs if name not in ordered)
    return [(name, regs[name]) for name in ordered]


def update_phase(release: Release, state: DeviceState) -> tuple[str, str]:
    """Where the device stands towards ``release``: (phase, why)."""
    env = boot_state(state)
    if same_version(state.version, release.version):
        booted_uncommitted = env.upgrade_available or "rollback-health-breadcrumb" in state.markers
        if booted_uncommitted:
            return PHASE_PENDING_COMMIT, f"booted {release.version} on {state.active_label}, not committed yet"
        return PHASE_CURRENT, f"already on {release.version} (committed)"
    stamp = state.inactive_stamp or {}
    if stamp.get("digest") == release.digest and same_version(str(stamp.get("version", "")), release.version):
        armed = env.upgrade_available and env.root_part == state.inactive_index
        return PHASE_STAGED, f"{state.inactive_label} holds {release.version}" + (" and the bootloader is armed" if armed else "")
    return PHASE_NEEDED, f"{state.version} → {release.version}"


def takeover_reason(device_type: str, current: str, release: Release, current_release: Release | None,
                    device_arch: str, min_takeover: str | None) -> str:
    """Why the standard update cannot work (the same rules as version.select_method)."""
    if current_release is not None and current_release.layout and release.layout and current_release.layout != release.layout:
        return f"the partition layout changes from {current_release.layout} to {release.layout}"
    if device_arch and release.arch and device_arch != release.arch:
        return f"the architecture changes from {device_arch} to {release.arch}"
    cutover = min_takeover or "the cut-over version"
    return f"{device_type} changes its partition layout at {cutover}, between {current} and {release.version}"


def _method(catalog: Catalog, device_type: str, release: Release, state: DeviceState) -> tuple[str, str]:
    current_release: Release | None
    try:
        current_release = catalog.release(device_type, state.version)
    except CatalogError:
        current_release = None
    device_arch = state.os_release.get("OSFLEET_ARCH", "")
    min_takeover = catalog.device_type(device_type).get("min_takeover_version")
    method = select_method(
        device_type,
        state.version,
        release.version,
        min_takeover,
        current_layout=current_release.layout if current_release else None,
        target_layout=release.layout,
        current_arch=device_arch or None,
        target_arch=release.arch,
    )
    if method == METHOD_STANDARD:
        return method, ""
    return method, takeover_reason(device_type, state.version, release, current_release, device_arch, min_takeover)


def _space_problems(args: PreflightArgs, release: Release, state: DeviceState) -> list[str]:
    problems = []
    state_need_kib = max(STATE_MIN_FREE_KIB, args.min_free_state_mib * 1024)
    state_free = state.free_kib.get("state")
    if state_free is not None and state_free < state_need_kib:
        problems.append(f"not enough free space on /mnt/state: {state_free} KiB free, {state_need_kib} KiB needed")
    if not release.size:
        return problems
    root_need = int(release.size * ROOT_SIZE_FACTOR)
    root_size = state.size_kib.get("inactive")
    if root_size is not None and root_size * 1024 < root_need:
        problems.append(
            f"the inactive root {state.inactive_label} is too small: {root_size // 1024} MiB, "
            f"the release needs {-(-root_need // MIB)} MiB (size × {ROOT_SIZE_FACTOR})"
        )
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


def _lock_problems(args: PreflightArgs, state: DeviceState, now: int | None) -> list[str]:
    problems = []
    if state.legacy_lock_held:
        problems.append(f"update already in progress: {LEGACY_LOCK} is held (another updater runs)")
    lock = state.lock
    if lock is None and str(state.raw.get("lock", "")).strip():
        problems.append(f"the update lock {LOCK_PATH} is unreadable; remove it or take it with osfleet.hup.lock force=true")
    elif lock is not None and lock.get("owner") != args.lock_owner and not lock_is_stale(lock, now, args.lock_stale_after):
        problems.append(f"update already in progress: {_lock_text(lock)}")
    return problems


def decide_preflight(args: PreflightArgs, catalog: Catalog, state: DeviceState,
                     registry_checks: t.Sequence[RegistryCheck] = (), now: int | None = None) -> PreflightPlan:
    """Every coherence check at once; ``problems`` empty means the update may go on."""
    device_type = args.release.device_type or state.device_type
    plan = PreflightPlan(phase=None, method=None, release=None, device_type=device_type)
    if device_type != state.device_type:
        plan.problems.append(f"the device is a {state.device_type or '?'}, the release is for {device_type}")
    try:
        plan.release = find_release(catalog, device_type, args.release.target_version)
    except CatalogError as exc:
        plan.problems.append(str(exc))
        return plan
    release = plan.release
    try:
        plan.phase, why = update_phase(release, state)
    except (ValueError, DeviceError) as exc:
        plan.problems.append(f"cannot read the bootloader env: {exc}")
        return plan
    plan.notes.append(why)
    if plan.phase == PHASE_CURRENT:
        plan.method = METHOD_STANDARD
        return plan
    if not same_version(state.version, release.version):
        plan.problems.extend(check_update_path(state.version, release.version, allow_downgrade=args.allow_downgrade))
    try:
        plan.method, reason = _method(catalog, device_type, release, state)
    except (ValueError, CatalogError) as exc:
        plan.problems.append(str(exc))
        reason = ""
    if plan.method == METHOD_TAKEOVER and not args.allow_takeover:
        plan.problems.append(f"needs the advanced update (takeover), which wipes the data partition ({reason}); set allow_takeover to allow it")
    pending = _pending_other_problem(state, release)
    if pending:
        plan.problems.append(pending)
    plan.problems.extend(_lock_problems(args, state, now))
    if plan.phase == PHASE_NEEDED:
        plan.problems.extend(_space_problems(args, release, state))
    if args.check_registry and plan.phase in (PHASE_NEEDED, PHASE_STAGED):
        registry = _registry_problem(registry_checks)
        if registry:
            plan.problems.append(registry)
    plan.problems = list(dict.fromkeys(plan.problems))
    return plan


# --- lock --------------------------------------------------------------------------------------

LOCK_NONE = "none"
LOCK_WRITE = "write"
LOCK_REMOVE = "remove"


@dataclass(frozen=True)
class LockArgs:
    state: str = "present"
    owner: str = ""
    run_id: str | None = None
    target: str | None = None
    stale_after: int = 7200
    force: bool = False


UNREADABLE_TOKEN = "?unreadable"


@dataclass
class LockPlan:
    op: str
    before: dict[str, t.Any] | None
    after: dict[str, t.Any] | None
    #: what the act script must still find in the lock file (compare-and-swap, see lock_token)
    expect: str
    actions: list[str] = field(default_factory=list)
    error: str | None = None


def _jq_text(value: t.Any) -> str:
    """How jq's string interpolation renders a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def lock_token(lock: dict[str, t.Any] | None, unreadable: bool = False) -> str:
    """``owner|since`` of a lock file as the act script computes it with jq ("" when absent)."""
    if unreadable:
        return UNREADABLE_TOKEN
    if lock is None:
        return ""
    return f"{_jq_text(lock.get('owner'))}|{_jq_text(lock.get('since'))}"


def _lock_view(lock: dict[str, t.Any] | None) -> dict[str, t.Any] | None:
    if lock is None:
        return None
    return {k: lock.get(k) for k in ("owner", "run_id", "since", "target")}


def decide_lock(args: LockArgs, state: DeviceState, now: int | None = None) -> LockPlan:
    """Take or release ``/mnt/state/osfleet/hup.lock``. ``after['since']`` None means "now"."""
    lock = state.lock
    unreadable = lock is None and bool(str(state.raw.get("lock", "")).strip())
    before = _lock_view(lock) if not unreadable else {"owner": "<unreadable lock file>", "run_id": None, "since": None, "target": None}
    plan = LockPlan(op=LOCK_NONE, before=before, after=before, expect=lock_token(lock, unreadable))
    if args.state == "absent":
        return _decide_unlock(args, plan, lock, unreadable)
    if state.legacy_lock_held:
        plan.error = f"update already in progress: {LEGACY_LOCK} is held (another updater runs)"
        return plan
    if lock is not None and lock.get("owner") == args.owner:
        wanted = dict(before or {})
        if args.run_id is not None:
            wanted["run_id"] = args.run_id
        if args.target is not None:
            wanted["target"] = args.target
        if wanted != before:
            plan.op, plan.after = LOCK_WRITE, wanted
            plan.actions.append(f"updated the lock of {args.owner} (run {wanted.get('run_id')}, target {wanted.get('target')})")
        return plan
    if unreadable and not args.force:
        plan.error = f"the update lock {LOCK_PATH} is unreadable; use force=true to replace it"
        return plan
    if lock is not None and not args.force and not lock_is_stale(lock, now, args.stale_after):
        plan.error = f"update already in progress: {_lock_text(lock)}"
        return plan
    plan.op = LOCK_WRITE
    plan.after = {"owner": args.owner, "run_id": args.run_id, "since": None, "target": args.target}
    if unreadable:
        plan.actions.append(f"replaced the unreadable lock file {LOCK_PATH} (force)")
    elif lock is not None:
        why = "force" if args.force else f"stale: older than {args.stale_after} s"
        plan.actions.append(f"took over the {_lock_text(lock)} ({why})")
    plan.actions.append(f"took the update lock {LOCK_PATH} for {args.owner}")
    return plan


def _decide_unlock(args: LockArgs, plan: LockPlan, lock: dict[str, t.Any] | None, unreadable: bool) -> LockPlan:
    if lock is None and not unreadable:
        return plan
    if (lock or {}).get("owner") != args.owner and not args.force:
        held = _lock_text(lock) if lock is not None else f"the lock file {LOCK_PATH} is unreadable"
        plan.error = f"{held}, not by {args.owner}; use force=true to remove it"
        return plan
    plan.op, plan.after = LOCK_REMOVE, None
    owner = (lock or {}).get("owner", "<unreadable>")
    plan.actions.append(f"released the update lock of {owner}" + (" (force)" if owner != args.owner else ""))
    return plan


# --- supervisor --------------------------------------------------------------------------------

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


# --- fetch and rootfs: the image cache ------------------------------------------------------------

@dataclass(frozen=True)
class CachedImage:
    """A verified OCI layout ``<cache_dir>/<hex>`` (moved there only after verification)."""

    name: str
    digest: str
    kind: str = ""
    ref: str = ""
    bytes: int = 0


@dataclass(frozen=True)
class CacheState:
    cache_dir: str
    images: tuple[CachedImage, ...] = ()
    staging: tuple[str, ...] = ()

    def find(self, digest: str) -> CachedImage | None:
        return next((i for i in self.images if i.name == digest_hex(digest) and i.digest == digest), None)


@dataclass(frozen=True)
class Wanted:
    """What the inactive root can be written from: the full image, or a delta on the active root."""

    full_digest: str
    delta_digest: str | None
    delta_from: str | None


def wanted_images(target: Target, catalog: Catalog, state: DeviceState) -> Wanted:
    base = active_release(catalog, target.device_type, state)
    delta = target.release.delta_from(base.version) if base is not None else None
    return Wanted(
        full_digest=target.release.digest,
        delta_digest=delta.digest if delta else None,
        delta_from=base.version if (delta and base) else None,
    )


def inactive_is_target(target: Target, state: DeviceState) -> bool:
    """The inactive root's stamp names the target's digest and version."""
    stamp = state.inactive_stamp or {}
    return stamp.get("digest") == target.release.digest and same_version(str(stamp.get("version", "")), target.release.version)


def cache_dir_problem(path: str) -> str | None:
    """cache_dir is removed from (stale and other layouts): only an absolute, normalised,
    at least two levels deep path without line breaks is accepted."""
    normal = posixpath.normpath(path) if path else ""
    if not path.startswith("/") or normal != path.rstrip("/") or normal.count("/") < 2 or any(c in path for c in "\n\r\0"):
        return f"cache_dir {path!r} must be an absolute, normalised path at least two levels deep (e.g. {DEFAULT_CACHE_DIR})"
    return None


def oci_tag(text: str) -> str:
    """A valid OCI layout ref name for ``text`` (``2.113.0+rev1`` → ``2.113.0_rev1``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:128] or "latest"


@dataclass(frozen=True)
class FetchArgs:
    release: ReleaseArgs
    sources: tuple[str, ...] = DEFAULT_SOURCES
    cache_dir: str = DEFAULT_CACHE_DIR


@dataclass(frozen=True)
class FetchAttempt:
    kind: str
    ref: str
    digest: str
    tag: str


@dataclass
class FetchPlan:
    done: bool
    cache_dir: str
    #: why nothing needs fetching ("inactive" root already written, or the "cache" holds it)
    done_by: str = ""
    cached: CachedImage | None = None
    attempts: list[FetchAttempt] = field(default_factory=list)
    remove_staging: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    error: str | None = None


def decide_fetch(args: FetchArgs, target: Target, catalog: Catalog, state: DeviceState, cache: CacheState) -> FetchPlan:
    plan = FetchPlan(done=False, cache_dir=args.cache_dir, remove_staging=list(cache.staging))
    release = target.release
    plan.error = cache_dir_problem(args.cache_dir)
    if plan.error:
        return plan
    if inactive_is_target(target, state):
        plan.done, plan.done_by = True, "inactive"
        return plan
    wanted = wanted_images(target, catalog, state)
    for digest in (wanted.full_digest, wanted.delta_digest):
        found = cache.find(digest) if digest else None
        if found is not None:
            plan.done, plan.done_by, plan.cached = True, "cache", found
            return plan
    base_version = wanted.delta_from
    try:
        sources = sources_for(release, base_version, target.registries)
    except CatalogError as exc:
        plan.error = str(exc)
        return plan
    by_kind = {s.kind: s for s in sources}
    for kind in args.sources:
        source: Source | None = by_kind.get(kind)
        if source is None:
            continue
        tag = oci_tag(f"{base_version}-{release.version}" if kind == KIND_DELTA else release.version)
        plan.attempts.append(FetchAttempt(kind, source.ref, source.digest, tag))
    if not plan.attempts:
        avail = ", ".join(s.kind for s in sources)
        plan.error = f"none of the sources {', '.join(args.sources)} is available for {release.version} (available: {avail})"
        return plan
    plan.actions.extend(_staging_actions(plan))
    first = plan.attempts[0]
    plan.actions.append(
        f"fetched {release.version} into {args.cache_dir} trying " + ", ".join(f"{a.kind} ({a.ref})" for a in plan.attempts)
        + (f"; the first is {first.kind}" if len(plan.attempts) > 1 else "")
    )
    return plan


def _staging_actions(plan: FetchPlan) -> list[str]:
    if not plan.remove_staging:
        return []
    return [f"removed {len(plan.remove_staging)} staging dir(s) of an interrupted fetch from {plan.cache_dir}"]


def fetched_actions(plan: FetchPlan, version: str, attempts: t.Sequence[t.Mapping[str, t.Any]], image: CachedImage) -> list[str]:
    """What a fetch did: stale staging removed, the sources that failed first, where the image came from."""
    actions = _staging_actions(plan)
    failed = [a for a in attempts if not a.get("ok")]
    if failed:
        actions.append(describe_attempt_errors(failed, "failed first"))
    actions.append(f"fetched {version} from {image.kind} ({image.ref}): {image.bytes} bytes")
    return actions


def describe_attempt_errors(attempts: t.Sequence[t.Mapping[str, t.Any]], lead: str = "all sources failed") -> str:
    """``all sources failed: delta (<ref>): <err>; registry (...): ...``"""
    return f"{lead}: " + "; ".join(f"{a.get('kind')} ({a.get('ref')}): {a.get('error') or 'failed'}" for a in attempts)


# --- rootfs --------------------------------------------------------------------------------------

MODE_FULL = "full"
MODE_DELTA = "delta"


@dataclass(frozen=True)
class RootfsArgs:
    release: ReleaseArgs
    cache_dir: str = DEFAULT_CACHE_DIR


@dataclass
class RootfsPlan:
    done: bool
    label: str
    dev: str
    cache_dir: str = DEFAULT_CACHE_DIR
    mode: str = ""
    image: CachedImage | None = None
    stamp: dict[str, t.Any] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    #: the image has not been fetched (check mode may still show the plan)
    missing_image: bool = False
    error: str | None = None

    @property
    def layout_dir(self) -> str:
        return f"{self.cache_dir.rstrip('/')}/{self.image.name}" if self.image else ""


def _stamp_source(image: CachedImage, mode: str) -> str:
    if image.kind in (KIND_DELTA, KIND_REGISTRY, KIND_FALLBACK):
        return image.kind
    return KIND_DELTA if mode == MODE_DELTA else KIND_REGISTRY


def decide_rootfs(args: RootfsArgs, target: Target, catalog: Catalog, state: DeviceState, cache: CacheState) -> RootfsPlan:
    release = target.release
    plan = RootfsPlan(done=False, label=state.inactive_label, dev=state.inactive_dev, cache_dir=args.cache_dir)
    if inactive_is_target(target, state):
        plan.done = True
        plan.stamp = dict(state.inactive_stamp or {})
        return plan
    if not state.inactive_dev or state.inactive_dev == state.active_dev:
        plan.error = f"refusing to write {state.inactive_label or 'the inactive root'}: it resolves to the running root ({state.active_dev})"
        return plan
    plan.error = cache_dir_problem(args.cache_dir)
    if plan.error:
        return plan
    wanted = wanted_images(target, catalog, state)
    full = cache.find(wanted.full_digest)
    delta = cache.find(wanted.delta_digest) if wanted.delta_digest else None
    plan.stamp = {"device_type": target.device_type, "version": release.version, "digest": release.digest, "source": None}
    if full is not None:
        plan.mode, plan.image = MODE_FULL, full
    elif delta is not None:
        plan.mode, plan.image = MODE_DELTA, delta
    else:
        plan.missing_image = True
        plan.error = f"no fetched image of {release.version} in {args.cache_dir}: run osfleet.hup.fetch first"
        plan.actions.append(f"formatted {plan.label} ({plan.dev}) and wrote {release.version} from the fetched image")
        return plan
    plan.stamp["source"] = _stamp_source(plan.image, plan.mode)
    how = f"the delta from {wanted.delta_from} applied to a copy of {state.active_label}" if plan.mode == MODE_DELTA else "the full image"
    plan.actions.append(f"formatted {plan.label} ({plan.dev}) and wrote {release.version} from {how}")
    plan.actions.append(f"checked the written root against usr/share/osfleet/rootfs.sha256 and stamped it ({release.digest})")
    return plan
