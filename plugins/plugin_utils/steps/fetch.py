# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""The fetch step's decision: which sources to try, in which order, or why nothing needs fetching."""

from __future__ import annotations

import typing as t
from dataclasses import dataclass, field

from ansible_collections.osfleet.hup.plugins.plugin_utils.cache import CachedImage, CacheState, cache_dir_problem, cache_problem, oci_tag, wanted_images
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import KIND_DELTA, Catalog, Source, sources_for
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import DeviceState
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import ReleaseArgs, Target, inactive_is_target


@dataclass(frozen=True)
class FetchArgs:
    """The fetch module's options (defaults in its DOCUMENTATION)."""

    release: ReleaseArgs
    sources: tuple[str, ...]
    cache_dir: str

    @classmethod
    def from_args(cls, args: t.Mapping[str, t.Any]) -> FetchArgs:
        return cls(ReleaseArgs.from_args(args), tuple(args["sources"]), args["cache_dir"])


@dataclass(frozen=True)
class FetchAttempt:
    kind: str
    ref: str
    digest: str
    tag: str
    #: what a pull transfers, from the catalog (None: the catalog does not say)
    size: int | None = None


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


def decide_fetch(args: FetchArgs, target: Target, catalog: Catalog, state: DeviceState, cache: CacheState) -> FetchPlan:
    """PlanError (with the result key ``attempts``, empty) when no source can be tried."""
    plan = FetchPlan(done=False, cache_dir=args.cache_dir, remove_staging=list(cache.staging))
    release = target.release
    problem = cache_dir_problem(args.cache_dir) or cache_problem(cache)
    if problem:
        raise PlanError(problem, attempts=[])
    if inactive_is_target(target, state):
        plan.done, plan.done_by = True, "inactive"
        return plan
    wanted = wanted_images(target, catalog, state)
    # a cached delta counts only when the user's sources allow a delta
    usable = (wanted.full_digest, wanted.delta_digest if KIND_DELTA in args.sources else None)
    for digest in usable:
        found = cache.find(digest) if digest else None
        if found is not None:
            plan.done, plan.done_by, plan.cached = True, "cache", found
            return plan
    base_version = wanted.delta_from
    try:
        sources = sources_for(release, base_version, target.registries)
    except CatalogError as exc:
        raise PlanError(str(exc), attempts=[]) from None
    by_kind = {s.kind: s for s in sources}
    for kind in args.sources:
        source: Source | None = by_kind.get(kind)
        if source is None:
            continue
        tag = oci_tag(f"{base_version}-{release.version}" if kind == KIND_DELTA else release.version)
        plan.attempts.append(FetchAttempt(kind, source.ref, source.digest, tag, source.size))
    if not plan.attempts:
        avail = ", ".join(s.kind for s in sources)
        raise PlanError(f"none of the sources {', '.join(args.sources)} is available for {release.version} (available: {avail})", attempts=[])
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


def planned_result(plan: FetchPlan) -> dict[str, t.Any]:
    """Check mode's result: what the first source would bring (its catalog size as ``bytes``)."""
    first = plan.attempts[0]
    return {
        "source": first.kind,
        "ref": first.ref,
        "digest": first.digest,
        "layout": None,
        "bytes": first.size or 0,
        "cached": False,
        "attempts": [{"kind": a.kind, "ref": a.ref, "digest": a.digest, "bytes": a.size} for a in plan.attempts],
        "writer": "export",
        "transport": None,
        "saved_image": None,
    }


def _bytes_text(size: int | None) -> str:
    return f"{size} bytes over the wire" if size else "size unknown (the catalog gives none)"


def fetch_diff(plan: FetchPlan, version: str, image: CachedImage | None = None) -> dict[str, str]:
    """The image cache before and after: in check mode (``image`` None) the sources in the order they
    are tried, the first one's catalog size; after a fetch the image that came and its bytes."""
    before = f"{plan.cache_dir}: no image of {version}\n" + "".join(f"staging dir of an interrupted fetch: {name}\n" for name in plan.remove_staging)
    if image is not None:
        return {"before": before, "after": f"{plan.cache_dir}: {version} from {image.kind} ({image.ref}): {image.bytes} bytes over the wire\n"}
    first, rest = plan.attempts[0], plan.attempts[1:]
    after = f"{plan.cache_dir}: {version} from {first.kind} ({first.ref}): {_bytes_text(first.size)}\n"
    after += "".join(f"  if that fails: {a.kind} ({a.ref}): {_bytes_text(a.size)}\n" for a in rest)
    return {"before": before, "after": after}


def fetched_result(cache_dir: str, image: CachedImage | None, digest: str, attempts: list[dict[str, t.Any]] | None = None) -> dict[str, t.Any]:
    """The fetch step's result keys for the image in the cache (``image`` None: the inactive root
    already holds the release; ``attempts`` None: nothing was pulled)."""
    pulled = attempts is not None and image is not None
    return {
        "source": image.kind if image else "inactive",
        "ref": image.ref if image else None,
        "digest": image.digest if image else digest,
        "layout": f"{cache_dir.rstrip('/')}/{image.name}" if image else None,
        "bytes": image.bytes if pulled and image else 0,
        "cached": not pulled,
        "attempts": attempts or [],
        "writer": "export",
        "transport": None,
        "saved_image": None,
    }
