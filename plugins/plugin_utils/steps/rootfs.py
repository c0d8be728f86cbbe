# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The rootfs step's decision: write the inactive root from the full image or from the delta on a copy
of the active root, and the stamp it gets.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils.bootenv import boot_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.cache import CachedImage, CacheState, cache_dir_problem, cache_problem, wanted_images
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import KIND_DELTA, KIND_FALLBACK, KIND_REGISTRY, Catalog, RootListing
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import NotStaged, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import ReleaseArgs, Target, inactive_is_target, root_space_problem

MODE_FULL = "full"
MODE_DELTA = "delta"


@dataclass(frozen=True)
class RootfsArgs:
    """The rootfs module's options (defaults in its DOCUMENTATION)."""

    release: ReleaseArgs
    cache_dir: str
    extra_keep: tuple[str, ...]
    #: check mode: the source the fetch step before would have brought the image from (option assume_fetched)
    assume_fetched: str | None = None

    @classmethod
    def from_args(cls, args: t.Mapping[str, t.Any]) -> RootfsArgs:
        fetched = args.get("assume_fetched")
        return cls(ReleaseArgs.from_args(args), args["cache_dir"], tuple(args["extra_keep"] or ()),
                   fetched if fetched in (KIND_DELTA, KIND_REGISTRY, KIND_FALLBACK) else None)


@dataclass
class RootfsPlan:
    done: bool
    label: str
    dev: str
    cache_dir: str
    mode: str = ""
    image: CachedImage | None = None
    stamp: dict[str, t.Any] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    #: check mode: the image has not been fetched yet; the plan shows what the write would be
    missing_image: bool = False
    #: the bootloader env names the partition to write: point it at the running root first
    #: (steps.bootenv.plan_point_at_running), synced, then write
    point_env_first: bool = False
    #: the release's root_listing from the catalog: the written root must list exactly so
    #: (write_root.sh); None: checked only against what the image or delta brought
    listing: RootListing | None = None

    @property
    def layout_dir(self) -> str:
        return f"{self.cache_dir.rstrip('/')}/{self.image.name}" if self.image else ""


def stamped(state: DeviceState) -> dict[str, t.Any]:
    """The result keys of a rootfs step that wrote nothing: the inactive root as it is."""
    return {"partition": state.inactive_label, "stamp": state.inactive_stamp, "mode": None, "source": (state.inactive_stamp or {}).get("source"),
            "listing_verified": None, "listing": None, "bytes": 0, "attempts": []}


def _stamp_source(image: CachedImage, mode: str) -> str:
    if image.kind in (KIND_DELTA, KIND_REGISTRY, KIND_FALLBACK):
        return image.kind
    return KIND_DELTA if mode == MODE_DELTA else KIND_REGISTRY


def _env_names_inactive(state: DeviceState) -> bool:
    """Whether the bootloader env names the inactive root as the root to boot (armed or not); PlanError
    when the inactive root is the fallback of a booted, uncommitted update (nothing may write it)."""
    try:
        env = boot_state(state)
    except PlanError as exc:
        raise PlanError(f"refusing to write {state.inactive_label}: {exc}", **stamped(state)) from None
    if env.root_part not in (state.active_index, state.inactive_index):
        raise PlanError(f"refusing to write {state.inactive_label}: the bootloader env names partition {env.root_part}, which is neither root",
                        **stamped(state))
    if env.root_part == state.active_index and env.upgrade_available:
        raise PlanError(
            f"refusing to write {state.inactive_label}: the device booted {state.active_label} with upgrade_available=1 (not committed), "
            f"so {state.inactive_label} is the root the bootloader falls back to; commit or roll back first", **stamped(state))
    return env.root_part == state.inactive_index


def decide_rootfs(args: RootfsArgs, target: Target, catalog: Catalog, state: DeviceState, cache: CacheState,
                  assume_staged: bool = False) -> RootfsPlan:
    """PlanError (with the result keys of :func:`stamped`) when the root cannot be written;
    NotStaged when the image is not fetched, unless ``assume_staged`` (check mode)."""
    release = target.release
    plan = RootfsPlan(done=False, label=state.inactive_label, dev=state.inactive_dev, cache_dir=args.cache_dir)
    if inactive_is_target(target, state):
        plan.done = True
        plan.stamp = dict(state.inactive_stamp or {})
        return plan
    if not state.inactive_dev or state.inactive_dev == state.active_dev:
        raise PlanError(f"refusing to write {state.inactive_label or 'the inactive root'}: it resolves to the running root ({state.active_dev})",
                        **stamped(state))
    problem = cache_dir_problem(args.cache_dir) or cache_problem(cache) or root_space_problem(release, state)
    if problem:
        raise PlanError(problem, **stamped(state))
    plan.point_env_first = _env_names_inactive(state)
    if plan.point_env_first:
        plan.actions.append(f"pointed the bootloader env at the running root {state.active_label} first (it named {state.inactive_label}, "
                            f"the partition to write), with its boot files, and synced it")
    wanted = wanted_images(target, catalog, state)
    full = cache.find(wanted.full_digest)
    delta = cache.find(wanted.delta_digest) if wanted.delta_digest else None
    plan.stamp = {"device_type": target.device_type, "version": release.version, "digest": release.digest, "source": None}
    if full is not None:
        plan.mode, plan.image = MODE_FULL, full
    elif delta is not None:
        plan.mode, plan.image = MODE_DELTA, delta
    else:
        if not assume_staged:
            raise NotStaged(f"no fetched image of {release.version} in {args.cache_dir}: run osfleet.hup.fetch first", **stamped(state))
        plan.missing_image = True
        if args.assume_fetched is None:
            plan.actions.append(f"formatted {plan.label} ({plan.dev}) and wrote {release.version} from the fetched image")
            return plan
        # check mode of a whole update: the image the fetch step before would have brought
        plan.mode = MODE_DELTA if args.assume_fetched == KIND_DELTA and wanted.delta_digest else MODE_FULL
        plan.stamp["source"] = args.assume_fetched
        how = f"the delta from {wanted.delta_from} applied to a copy of {state.active_label}" if plan.mode == MODE_DELTA else "the full image"
        plan.actions.append(f"formatted {plan.label} ({plan.dev}) and wrote {release.version} from {how} (fetched from {args.assume_fetched})")
        return plan
    plan.stamp["source"] = _stamp_source(plan.image, plan.mode)
    plan.listing = release.root_listing
    how = f"the delta from {wanted.delta_from} applied to a copy of {state.active_label}" if plan.mode == MODE_DELTA else "the full image"
    plan.actions.append(f"formatted {plan.label} ({plan.dev}) and wrote {release.version} from {how}")
    plan.actions.append(listing_action(release.version, plan.listing) + f", and stamped it ({release.digest})")
    return plan


def listing_action(version: str, listing: RootListing | None) -> str:
    """What the write checks the written root against."""
    if listing is None:
        return (f"checked the written root against its own usr/share/osfleet/rootfs.sha256 only: the catalog has no root_listing "
                f"for {version}, so it was not verified against a listing of the release")
    return (f"checked the written root against usr/share/osfleet/rootfs.sha256 and against the catalog's root_listing of {version} "
            f"({listing.entries} entries, sha256 {listing.sha256[:12]}...)")
