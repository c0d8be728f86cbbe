# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fetch step's decision (steps/fetch.py): the sources in order, or why nothing needs fetching."""

from __future__ import annotations

import dataclasses
import re
import typing as t

import pytest
from prepare_model import (
    CACHE,
    D113,
    D114,
    D88,
    DELTA113,
    JX,
    cached,
    fetch,
    make_catalog,
    make_state,
    rootfs,
    stamp,
)

from ansible_collections.osfleet.hup.plugins.plugin_utils.cache import CachedImage, CacheState
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import CatalogError, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.fetch import FetchPlan, describe_attempt_errors, fetch_diff, fetched_actions, planned_result


FULL_P = f"127.0.0.1:5000/osfleet/gx@{D113}"
FULL_F = f"127.0.0.1:5001/osfleet/gx@{D113}"
DELTA_P = f"127.0.0.1:5000/osfleet/gx-delta@{DELTA113}"
FETCH_CASES: list[tuple[str, dict[str, t.Any], dict[str, t.Any], list[tuple[str, str]], str | None]] = [
    # (name, state kwargs, fetch kwargs, [(kind, ref)] to try, error fragment)
    ("delta first when the active root is its base", {}, {}, [("delta", DELTA_P), ("registry", FULL_P), ("fallback", FULL_F)], None),
    ("no delta without an active stamp", {"active_stamp": None}, {}, [("registry", FULL_P), ("fallback", FULL_F)], None),
    ("no delta when the stamp's digest is not the catalog's", {"active_stamp": stamp("2.88.4", D114)}, {},
     [("registry", FULL_P), ("fallback", FULL_F)], None),
    ("no delta from another device type's stamp", {"active_stamp": stamp("2.88.4", D88, JX)}, {}, [("registry", FULL_P), ("fallback", FULL_F)], None),
    ("no delta from another version", {"version": "2.12.0"}, {}, [("registry", FULL_P), ("fallback", FULL_F)], None),
    ("the user's order", {}, {"sources": ("fallback", "delta")}, [("fallback", FULL_F), ("delta", DELTA_P)], None),
    ("registry only", {}, {"sources": ("registry",)}, [("registry", FULL_P)], None),
    ("delta only, none applies", {"active_stamp": None}, {"sources": ("delta",)}, [],
     "none of the sources delta is available for 2.113.0 (available: registry, fallback)"),
    ("cache dir must be safe", {}, {"cache_dir": "/"}, [], "cache_dir '/' must be an absolute"),
    ("cache dir must be normalised", {}, {"cache_dir": "/mnt/data/../x"}, [], "must be an absolute, normalised path"),
]


@pytest.mark.parametrize(("state_kw", "fetch_kw", "tries", "error"), [c[1:] for c in FETCH_CASES], ids=[c[0] for c in FETCH_CASES])
def test_fetch_sources(catalog: Catalog, state_kw: dict[str, t.Any], fetch_kw: dict[str, t.Any], tries: list[tuple[str, str]],
                       error: str | None) -> None:
    if error:
        assert tries == []
        with pytest.raises(PlanError) as exc:
            fetch(catalog, make_state(**state_kw), **fetch_kw)
        assert error in str(exc.value) and exc.value.data == {"attempts": []}
        return
    plan = fetch(catalog, make_state(**state_kw), **fetch_kw)
    assert not plan.done
    assert [(a.kind, a.ref) for a in plan.attempts] == tries
    assert plan.actions and all(a.digest in a.ref for a in plan.attempts)


def test_fetch_tags_are_valid_oci_ref_names(catalog: Catalog) -> None:
    plan = fetch(catalog, make_state(version="2.113.0"), target="2.114.1+rev1")
    assert [a.tag for a in plan.attempts] == ["2.113.0-2.114.1_rev1", "2.114.1_rev1", "2.114.1_rev1"]


@pytest.mark.parametrize(("state_kw", "images", "done_by", "cached_digest"), [
    ({"inactive_stamp": stamp("2.113.0", D113)}, (), "inactive", None),
    ({}, (cached(D113),), "cache", D113),
    ({}, (cached(DELTA113, "delta"),), "cache", DELTA113),
    ({}, (cached(D114), cached(D113, "fallback")), "cache", D113),
])
def test_fetch_done(catalog: Catalog, state_kw: dict[str, t.Any], images: tuple[CachedImage, ...], done_by: str,
                    cached_digest: str | None) -> None:
    plan = fetch(catalog, make_state(**state_kw), CacheState(CACHE, images))
    assert plan.done and plan.done_by == done_by
    assert (plan.cached.digest if plan.cached else None) == cached_digest
    assert plan.attempts == [] and plan.actions == []


def test_fetch_ignores_unusable_cache(catalog: Catalog) -> None:
    """A cached delta whose base is not the active root, or another release, is no reason to skip."""
    cache = CacheState(CACHE, (cached(DELTA113, "delta"), cached(D114)), staging=(".staging-" + "2" * 64,))
    plan = fetch(catalog, make_state(active_stamp=None), cache)
    assert not plan.done
    assert [a.kind for a in plan.attempts] == ["registry", "fallback"]
    assert plan.remove_staging == [".staging-" + "2" * 64]
    assert plan.actions[0] == f"removed 1 staging dir(s) of an interrupted fetch from {CACHE}"


def test_fetch_without_fallback_registry() -> None:
    catalog = make_catalog(registries={"primary": "reg.example:443"})
    plan = fetch(catalog, make_state())
    assert [a.kind for a in plan.attempts] == ["delta", "registry"]


def test_fetch_unknown_target(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="unknown target version 3.0.0 for genericx86-64-ext; known: 2.12.0, 2.88.4"):
        fetch(catalog, make_state(), target="3.0.0")


def test_fetched_actions() -> None:
    plan = FetchPlan(done=False, cache_dir=CACHE, remove_staging=[".staging-x"])
    image = CachedImage("ab", "sha256:ab", "fallback", "r3", 1234)
    attempts = [{"kind": "registry", "ref": "r2", "ok": False, "error": "refused"}, {"kind": "fallback", "ref": "r3", "ok": True, "error": ""}]
    assert fetched_actions(plan, "2.113.0", attempts, image) == [
        f"removed 1 staging dir(s) of an interrupted fetch from {CACHE}",
        "failed first: registry (r2): refused",
        "fetched 2.113.0 from fallback (r3): 1234 bytes",
    ]


def test_attempt_errors_message() -> None:
    text = describe_attempt_errors([
        {"kind": "delta", "ref": "r1", "error": "manifest unknown"},
        {"kind": "registry", "ref": "r2", "error": "connection refused"},
        {"kind": "fallback", "ref": "r3", "error": ""},
    ])
    assert text == "all sources failed: delta (r1): manifest unknown; registry (r2): connection refused; fallback (r3): failed"


@pytest.mark.parametrize("step", ["fetch", "rootfs"])
def test_a_mount_point_or_a_foreign_directory_is_no_cache(catalog: Catalog, step: str) -> None:
    """Issue 7 item 6: /mnt/data as cache_dir is refused before anything runs on the device."""
    mount = CacheState("/mnt/data", (cached(D113),), exists=True, directory=True, mount_point=True, marked=True, entries=4)
    foreign = CacheState("/mnt/data/docker", (), exists=True, directory=True, entries=2, names=("volumes", "containers"))
    for cache, fragment in ((mount, "refusing cache_dir /mnt/data: it is a mount point"),
                            (foreign, "refusing cache_dir /mnt/data/docker: it is not empty (volumes, containers) and has no .osfleet-cache")):
        with pytest.raises(PlanError, match=re.escape(fragment)):
            if step == "fetch":
                fetch(catalog, make_state(), cache, cache_dir=cache.cache_dir)
            else:
                rootfs(catalog, make_state(), cache.images, cache_dir=cache.cache_dir, cache=cache)


def test_check_mode_result_names_what_would_cross_the_wire(catalog: Catalog) -> None:
    """--check reports the first source and its catalog size, not "0 bytes" (issue 8)."""
    plan = fetch(catalog, make_state())
    release = catalog.release("genericx86-64-ext", "2.113.0")
    delta = release.delta_from("2.88.4")
    result = planned_result(plan)
    assert (result["source"], result["ref"], result["digest"], result["layout"]) == ("delta", DELTA_P, DELTA113, None)
    assert result["bytes"] == delta.size and delta.size > 0
    assert [(a["kind"], a["bytes"]) for a in result["attempts"]] == [("delta", delta.size), ("registry", release.size), ("fallback", release.size)]


def test_a_cached_delta_is_not_used_when_sources_exclude_delta(catalog: Catalog) -> None:
    """Issue 7 item 4: sources without delta never take the delta a former run left in the cache."""
    cache = CacheState(CACHE, (cached(DELTA113, "delta"),))
    plan = fetch(catalog, make_state(), cache, sources=("registry", "fallback"))
    assert not plan.done and [a.kind for a in plan.attempts] == ["registry", "fallback"]
    assert fetch(catalog, make_state(), cache).done_by == "cache"


def test_fetch_diff_shows_the_plan_and_what_came(catalog: Catalog) -> None:
    """--check --diff shows the sources in order with their bytes (issue 8); after a fetch, the source that brought it."""
    plan = fetch(catalog, make_state())
    delta = catalog.release("genericx86-64-ext", "2.113.0").delta_from("2.88.4")
    diff = fetch_diff(plan, "2.113.0")
    assert diff["before"] == f"{CACHE}: no image of 2.113.0\n"
    lines = diff["after"].splitlines()
    assert lines[0] == f"{CACHE}: 2.113.0 from delta ({DELTA_P}): {delta.size} bytes over the wire"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["if that fails", "if that fails"] and "registry" in lines[1]
    image = dataclasses.replace(cached(DELTA113, "delta"), bytes=delta.size)
    assert fetch_diff(plan, "2.113.0", image)["after"] == f"{CACHE}: 2.113.0 from delta ({image.ref}): {delta.size} bytes over the wire\n"
