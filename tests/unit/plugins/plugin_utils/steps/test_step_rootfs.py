# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rootfs step's decision (steps/rootfs.py): full image or delta, and the stamp."""

from __future__ import annotations

import copy
import typing as t

import pytest
from documented import documented
from prepare_model import (
    CACHE,
    CATALOG,
    MIB,
    D113,
    D114,
    DELTA113,
    GX,
    cached,
    fetch,
    make_state,
    preflight,
    rootfs,
    stamp,
)

from ansible_collections.osfleet.hup.plugins.plugin_utils.cache import CachedImage, CacheState, digest_hex
from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import NotStaged, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import resolve_target
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.rootfs import RootfsArgs, decide_rootfs


ROOTFS_CASES: list[tuple[str, dict[str, t.Any], tuple[CachedImage, ...], str, str | None, str | None]] = [
    # (name, state kwargs, cached images, mode, stamp source, error fragment)
    ("full image", {}, (cached(D113, "fallback"),), "full", "fallback", None),
    ("delta", {}, (cached(DELTA113, "delta"),), "delta", "delta", None),
    ("full preferred over delta", {}, (cached(DELTA113, "delta"), cached(D113)), "full", "registry", None),
    ("full image without fetch metadata", {}, (CachedImage(digest_hex(D113), D113),), "full", "registry", None),
    ("delta without a matching base", {"active_stamp": None}, (cached(DELTA113, "delta"),), "", None, "no fetched image of 2.113.0"),
    ("nothing fetched", {}, (), "", None, "no fetched image of 2.113.0 in /mnt/data/osfleet/images: run osfleet.hup.fetch first"),
    ("another release cached", {}, (cached(D114),), "", None, "no fetched image"),
    ("inactive resolves to the running root", {"same_dev": True}, (cached(D113),), "", None, "refusing to write resin-rootB"),
]


@pytest.mark.parametrize(("state_kw", "images", "mode", "source", "error"), [c[1:] for c in ROOTFS_CASES], ids=[c[0] for c in ROOTFS_CASES])
def test_rootfs(catalog: Catalog, state_kw: dict[str, t.Any], images: tuple[CachedImage, ...], mode: str, source: str | None,
                error: str | None) -> None:
    if error:
        assert mode == ""
        with pytest.raises(PlanError) as exc:
            rootfs(catalog, make_state(**state_kw), images)
        assert error in str(exc.value)
        assert exc.value.data == {"partition": "resin-rootB", "stamp": None, "mode": None, "source": None, "listing_verified": None, "listing": None,
                                  "bytes": 0, "attempts": []}
        return
    plan = rootfs(catalog, make_state(**state_kw), images)
    assert not plan.done
    assert plan.mode == mode
    assert plan.label == "resin-rootB" and plan.dev == "/dev/loop1p3"
    assert plan.stamp == {"device_type": GX, "version": "2.113.0", "digest": D113, "source": source}
    assert plan.layout_dir == f"{CACHE}/{plan.image.name}" if plan.image else False
    assert len(plan.actions) == 2


def test_rootfs_done_when_stamped(catalog: Catalog) -> None:
    written = stamp("2.113.0", D113, source="delta")
    plan = rootfs(catalog, make_state(inactive_stamp=written), ())
    assert plan.done and plan.stamp == written and plan.actions == []


def test_rootfs_stamp_with_the_digest_but_another_version_is_rewritten(catalog: Catalog) -> None:
    plan = rootfs(catalog, make_state(inactive_stamp=stamp("2.114.1+rev1", D113)), (cached(D113),))
    assert not plan.done and plan.mode == "full"
    assert not fetch(catalog, make_state(inactive_stamp=stamp("2.114.1+rev1", D113))).done
    assert preflight(catalog, make_state(inactive_stamp=stamp("2.114.1+rev1", D113))).phase == "needed"


def test_rootfs_another_stamp_is_rewritten(catalog: Catalog) -> None:
    plan = rootfs(catalog, make_state(inactive_stamp=stamp("2.114.1+rev1", D114)), (cached(D113),))
    assert not plan.done and plan.mode == "full"


def _with_root_listing(version: str = "2.113.0") -> Catalog:
    data = copy.deepcopy(CATALOG)
    next(r for r in data["releases"] if r["version"] == version)["root_listing"] = {"sha256": "c" * 64, "entries": 791}
    return Catalog(data, "test-catalog.json")


@pytest.mark.parametrize("images", [(cached(D113),), (cached(DELTA113, "delta"),)], ids=["full", "delta"])
def test_rootfs_checks_the_written_root_against_the_release_listing(images: tuple[CachedImage, ...]) -> None:
    """Issue 7 item 4: the write gets the catalog's root_listing of the target, for a delta as for a full image."""
    plan = rootfs(_with_root_listing(), make_state(), images)
    assert plan.listing is not None and (plan.listing.sha256, plan.listing.entries) == ("c" * 64, 791)
    assert plan.actions[1].startswith("checked the written root against usr/share/osfleet/rootfs.sha256 and against the catalog's "
                                      "root_listing of 2.113.0 (791 entries, sha256 cccccccccccc...)")


def test_rootfs_without_a_release_listing_says_it_is_not_verified(catalog: Catalog) -> None:
    plan = rootfs(catalog, make_state(), (cached(DELTA113, "delta"),))
    assert plan.listing is None
    assert "the catalog has no root_listing for 2.113.0, so it was not verified against a listing of the release" in plan.actions[1]
    # another release's listing is not this one's
    assert rootfs(_with_root_listing("2.114.1+rev1"), make_state(), (cached(D113),)).listing is None


def test_rootfs_missing_image_is_marked_for_check_mode(catalog: Catalog) -> None:
    plan = rootfs(catalog, make_state(), (), assume_staged=True)
    assert plan.missing_image and plan.actions
    with pytest.raises(NotStaged, match="run osfleet.hup.fetch first"):
        rootfs(catalog, make_state(), ())


@pytest.mark.parametrize("fetched, mode, source", [("delta", "delta", "delta"), ("registry", "full", "registry"), ("fallback", "full", "fallback"),
                                                   ("inactive", "", None)])
def test_rootfs_check_mode_plans_the_write_from_the_fetch_before(catalog: Catalog, fetched: str, mode: str, source: str | None) -> None:
    """Issue 8: check mode fetched nothing; assume_fetched (the fetch step's planned source) gives the mode and
    source the real write has (other values are ignored)."""
    args = documented("rootfs", catalog="test-catalog.json", target_version="2.113.0", cache_dir=CACHE, assume_fetched=fetched)
    rargs = RootfsArgs.from_args(args)
    state = make_state()
    plan = decide_rootfs(rargs, resolve_target(rargs.release, catalog, state), catalog, state, CacheState(CACHE, ()), assume_staged=True)
    assert plan.missing_image and (plan.mode, plan.stamp["source"]) == (mode, source)
    if mode == "delta":
        assert "the delta from 2.88.4 applied to a copy of resin-rootA (fetched from delta)" in plan.actions[-1]


def test_rootfs_bad_cache_dir(catalog: Catalog) -> None:
    with pytest.raises(PlanError, match="must be an absolute"):
        rootfs(catalog, make_state(), (cached(D113),), cache_dir="relative/dir")


def test_rootfs_refuses_an_image_that_unpacks_larger_than_the_root() -> None:
    """Issue 7 item 9: the rootfs step refuses before mkfs, as the preflight does."""
    data = copy.deepcopy(CATALOG)
    next(r for r in data["releases"] if r["version"] == "2.113.0")["size_unpacked"] = 300 * MIB
    with pytest.raises(PlanError, match="the inactive root resin-rootB is too small: 283 MiB, 2.113.0 needs 330 MiB unpacked") as exc:
        rootfs(Catalog(data, "test-catalog.json"), make_state(), (cached(D113),))
    assert exc.value.data["stamp"] is None


# --- issue 7 item 1: nothing writes the root that the bootloader env boots next -------------------------

@pytest.mark.parametrize("upgrade", [0, 1], ids=["disarmed (a rollback waiting for its reboot)", "armed (a killed run)"])
def test_env_naming_the_inactive_root_is_pointed_at_the_running_root_first(catalog: Catalog, upgrade: int) -> None:
    plan = rootfs(catalog, make_state(root_part=3, upgrade=upgrade), (cached(D113),))
    assert plan.point_env_first and plan.mode == "full"
    assert plan.actions[0].startswith("pointed the bootloader env at the running root resin-rootA first (it named resin-rootB")
    assert len(plan.actions) == 3
    # the env names the running root: written at once
    assert not rootfs(catalog, make_state(), (cached(D113),)).point_env_first


def test_env_is_not_touched_when_the_inactive_root_already_holds_the_target(catalog: Catalog) -> None:
    plan = rootfs(catalog, make_state(root_part=3, upgrade=1, inactive_stamp=stamp("2.113.0", D113)), (cached(D113),))
    assert plan.done and not plan.point_env_first


@pytest.mark.parametrize(("state_kw", "error"), [
    ({"upgrade": 1}, "refusing to write resin-rootB: the device booted resin-rootA with upgrade_available=1 (not committed), "
                     "so resin-rootB is the root the bootloader falls back to; commit or roll back first"),
    ({"root_part": 5}, "refusing to write resin-rootB: the bootloader env names partition 5, which is neither root"),
    ({"uenv": "upgrade_available=0\n"}, "refusing to write resin-rootB: cannot read the bootloader env: resinOS_uEnv.txt: resin_root_part is missing"),
], ids=["booted, not committed", "another partition", "unreadable env"])
def test_rootfs_refuses_when_the_inactive_root_is_what_the_bootloader_needs(catalog: Catalog, state_kw: dict[str, t.Any],
                                                                            error: str) -> None:
    with pytest.raises(PlanError) as exc:
        rootfs(catalog, make_state(**state_kw), (cached(D113),))
    assert str(exc.value) == error
    assert exc.value.data["partition"] == "resin-rootB"
