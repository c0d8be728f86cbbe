# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The takeover's checks and plan (steps/takeover.py): a table of device facts."""

from __future__ import annotations

import dataclasses
import typing as t

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog, Release
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.takeover import (
    LOST, MIB, RAM_RESERVE, TakeoverFacts, decide_takeover, facts_from_probe, image_intact, staged_already)

SHA = "ab" * 32
IMAGE = 200 * MIB  # the gzip'd disk image
RAW = 1014 * MIB  # unpacked: the l4t-r35 layout
DEVICE = "jx-01"


def target(catalog: Catalog, **disk: t.Any) -> Release:
    image = {"url": "http://127.0.0.1:8080/jetson-xavier-6.1.0.img.gz", "sha256": SHA, "size": IMAGE, "raw_size": RAW}
    image.update(disk)
    return dataclasses.replace(catalog.release("jetson-xavier", "6.1.0"), disk_image={k: v for k, v in image.items() if v is not None})


def facts(**changes: t.Any) -> TakeoverFacts:
    base: dict[str, t.Any] = {
        "disk": "/dev/mmcblk0", "disk_bytes": 1100 * MIB, "mem_available": 2048 * MIB, "staging_free": 1024 * MIB,
        "staging_is_ram": True, "data_clean": True,
        "keep": {"config.json": 512, "system-connections/wifi": 300},
        "boot_connections": {"wifi": "1" * 64}, "etc_connections": {"wifi": "1" * 64},
    }
    base.update(changes)
    return TakeoverFacts(**base)


def test_a_device_that_can_take_it_gets_the_whole_plan(catalog: Catalog) -> None:
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts())
    assert plan.ok, plan.problems
    assert plan.download_bytes == IMAGE and plan.disk_needed == RAW and plan.ram_needed == IMAGE + 812 + RAM_RESERVE
    assert plan.keep == ["config.json", "system-connections/wifi"] and plan.lost == list(LOST)
    text = " | ".join(plan.actions)
    assert "verified its sha256 " + SHA + " before anything was staged" in text
    assert "wrote the whole disk /dev/mmcblk0 (5.1.0 -> 6.1.0, layout l4t-r35)" in text
    assert plan.as_dict()["url"].endswith("jetson-xavier-6.1.0.img.gz")


def test_an_interrupted_download_is_resumed_and_its_bytes_count_towards_ram(catalog: Catalog) -> None:
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts(staged_bytes=150 * MIB, staging_free=60 * MIB, mem_available=150 * MIB))
    assert plan.ok, plan.problems
    assert plan.download_bytes == 50 * MIB
    assert "resuming after the 150 MiB already staged" in plan.actions[1]


CASES: list[tuple[str, dict[str, t.Any], dict[str, t.Any], str]] = [
    # (name, facts changes, disk image changes, the problem's fragment)
    ("no disk image url", {}, {"url": None}, "the catalog gives no disk image (disk_image url and sha256) for jetson-xavier 6.1.0"),
    ("no sha256", {}, {"sha256": None}, "the catalog gives no disk image"),
    ("no size", {}, {"size": None}, "gives no size for the disk image of 6.1.0"),
    ("no raw size", {}, {"raw_size": None}, "gives no raw_size for the disk image of 6.1.0"),
    ("disk too small", {"disk_bytes": 918 * MIB}, {}, "the disk /dev/mmcblk0 (918 MiB) is smaller than the disk image of 6.1.0 unpacked (1014 MiB"),
    ("not enough RAM", {"mem_available": 200 * MIB}, {}, "not enough RAM for the takeover: it needs 264 MiB"),
    ("staging too small", {"staging_free": 100 * MIB}, {}, "not enough room in RAM to stage the disk image"),
    ("staging on disk", {"staging_is_ram": False}, {}, "the staging directory is not a RAM filesystem"),
    ("data not clean", {"data_clean": False, "data_fsck": "resin-data: 12 errors\nresin-data contains a file system with errors"}, {},
     "the data partition is not clean (fsck -n: resin-data contains a file system with errors)"),
    ("no config.json", {"keep": {"system-connections/wifi": 300}}, {}, "the boot partition has no config.json"),
    ("connection only in /etc", {"etc_connections": {"wifi": "1" * 64, "lte": "2" * 64}}, {},
     "lte only in /etc/NetworkManager/system-connections"),
    ("connection differs", {"etc_connections": {"wifi": "3" * 64}}, {},
     "wifi differs between /etc/NetworkManager/system-connections and the boot partition"),
]


@pytest.mark.parametrize("name,fact_changes,disk_changes,fragment", CASES, ids=[c[0] for c in CASES])
def test_refusals_name_the_device_and_the_reason(catalog: Catalog, name: str, fact_changes: dict[str, t.Any],
                                                 disk_changes: dict[str, t.Any], fragment: str) -> None:
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog, **disk_changes), facts(**fact_changes))
    assert not plan.ok, name
    assert any(p.startswith(f"{DEVICE}: ") and fragment in p for p in plan.problems), plan.problems


def test_a_data_partition_not_checked_is_no_refusal_but_is_said(catalog: Catalog) -> None:
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts(data_clean=None))
    assert plan.ok and "data partition not checked (no fsck)" in plan.actions[0]


def test_a_connection_only_on_the_boot_partition_is_fine(catalog: Catalog) -> None:
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts(boot_connections={"wifi": "1" * 64, "eth": "4" * 64}))
    assert plan.ok, plan.problems


def test_an_image_staged_already_needs_no_download_and_no_more_room(catalog: Catalog) -> None:
    # the staging tmpfs is full of the verified image: only the kept files must fit beside it
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts(staged_image=SHA, reclaimable=IMAGE, staging_free=16 * MIB,
                                                                   mem_available=100 * MIB))
    assert plan.ok, plan.problems
    assert plan.download_bytes == 0


def test_an_image_of_another_release_is_freed_for_the_new_one(catalog: Catalog) -> None:
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts(staged_image="cd" * 32, reclaimable=IMAGE, staging_free=16 * MIB))
    assert plan.ok, plan.problems
    assert plan.download_bytes == IMAGE


def staged_probe(**changes: t.Any) -> dict[str, t.Any]:
    """scripts/takeover_probe.sh's JSON of a device whose staging holds the image SHA and config.json."""
    keep = {"config.json": {"size": 512, "sha256": "2" * 64}}
    raw: dict[str, t.Any] = {
        "disk": "/dev/mmcblk0", "disk_bytes": 1100 * MIB, "mem_available": 2048 * MIB, "staging_fstype": "tmpfs",
        "staging_free": 16 * MIB, "staged_bytes": 0, "image_bytes": IMAGE, "image_sha256": "", "fsck_rc": 0, "keep": keep,
        "record": {"url": "http://127.0.0.1:8080/jetson-xavier-6.1.0.img.gz", "sha256": SHA, "size": IMAGE,
                   "keep": [{"path": "config.json", "size": 512, "sha256": "2" * 64}]},
    }
    raw.update(changes)
    return raw


@pytest.mark.parametrize(("image_sha256", "intact"), [("", True), (SHA, True), ("cd" * 32, False)])
def test_a_staged_image_is_reused_only_while_it_has_its_sha256(catalog: Catalog, image_sha256: str, intact: bool) -> None:
    """A staged image read again (the probe's ``verify=1``) whose sha256 is no longer its record's was
    damaged in RAM: not staged, downloaded whole again (not counted as staged); not read again: the record holds."""
    raw = staged_probe(image_sha256=image_sha256)
    assert image_intact(raw) is intact
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts_from_probe(raw))
    assert plan.ok, plan.problems
    assert staged_already(raw, plan) is intact
    assert plan.download_bytes == (0 if intact else IMAGE)


def test_a_staged_image_without_a_record_is_not_intact() -> None:
    assert not image_intact(staged_probe(record=None, image_sha256=SHA))
