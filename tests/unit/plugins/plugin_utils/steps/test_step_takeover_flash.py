# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What state=flashed requires of a device after the whole-disk write (steps/takeover.py flash_problems)."""

from __future__ import annotations

import typing as t

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.takeover import carried_log, flash_problems, flash_view, layout_of, layout_text

R35 = [{"start": 2048, "size": 96 << 11, "name": "resin-boot"}, {"start": 2048 + (96 << 11), "size": 320 << 11, "name": "resin-rootA"}]
R32 = [{"start": 2048, "size": 40 << 11, "name": "resin-boot"}, {"start": 2048 + (40 << 11), "size": 300 << 11, "name": "resin-rootA"}]
KEEP = [{"path": "config.json", "size": 10, "sha256": "a" * 64}, {"path": "system-connections/wifi", "size": 5, "sha256": "b" * 64}]
RECORD = {"version": "6.1.0", "table": R35, "keep": KEEP}


def probe(table: t.Any = "r35", **keep: str) -> dict[str, t.Any]:
    """A device's probe after the write: its partition table (R35 unless given; None: none) and kept files."""
    files = {"config.json": "a" * 64, "system-connections/wifi": "b" * 64, **keep}
    return {"table": R35 if table == "r35" else table, "keep": {p: {"size": 1, "sha256": s} for p, s in files.items() if s}}


def test_the_target_on_the_image_layout_with_the_kept_files_is_done() -> None:
    assert flash_problems(probe(), "6.1.0", "6.1.0", RECORD) == []


def test_each_difference_is_named() -> None:
    problems = flash_problems(probe(R32, **{"config.json": "c" * 64, "system-connections/wifi": ""}), "5.1.0", "6.1.0", RECORD)
    assert len(problems) == 4, problems
    assert problems[0] == "the device runs 5.1.0, not 6.1.0"
    assert "is not the disk image's" in problems[1] and "resin-boot 2048+81920" in problems[1]
    assert f"has sha256 {'c' * 64}, not {'a' * 64}" in problems[2]
    assert problems[3] == "the kept file system-connections/wifi is missing on the new boot partition"


def test_a_record_without_a_table_or_a_device_without_one() -> None:
    assert flash_problems(probe(), "6.1.0", "6.1.0", {"keep": KEEP}) == ["the record of the whole-disk write names no partition table"]
    assert "no partition table" in flash_problems(probe(None), "6.1.0", "6.1.0", RECORD)[0]


def test_views() -> None:
    assert layout_of(None) == [] and layout_of([{"name": "x", "start": "1", "size": 2}, "junk"]) == [{"name": "x", "start": 1, "size": 2}]
    assert layout_text([]) == "no partition table"
    assert flash_view("6.1.0", R35) == {"version": "6.1.0", "layout": R35}


@pytest.mark.parametrize(("run_log", "carried"), [
    ("/mnt/data/balenahup/osfleet-hup.20261204T1200Z-ab12.log", "/mnt/data/balenahup/osfleet-hup.20261204T1200Z-ab12.log"),
    ("/mnt/data/other/osfleet-hup.x.log", ""),          # another log directory: not carried
    ("/mnt/data/balenahup/sub/x.log", ""),               # no subdirectories
    ("/mnt/data/balenahup/../state/x.log", ""),
    ("/mnt/data/balenahup/.hidden", ""),
    ("/mnt/data/balenahup/a b.log", ""),
    ("/mnt/data/balenahup/", ""),
    (None, ""),
    ("", ""),
])
def test_the_run_log_the_write_carries_over(run_log: t.Any, carried: str) -> None:
    assert carried_log(run_log) == carried
