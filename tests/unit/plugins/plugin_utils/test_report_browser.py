# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""report.html in a real headless browser: rendered text of the rows, pixels of the timeline bars.

One report with every outcome (a committed device, an already current one, a failed one, a
rollback, an unreachable one, a deferred one, a halted wave and a wave that never started).
"""

from __future__ import annotations

import typing as t

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.report import ReportBuilder
from ansible_collections.osfleet.hup.plugins.plugin_utils.report_html import COLOURS
from ansible_collections.osfleet.hup.plugins.plugin_utils.report_render import write_reports
from osfleet_browser import Page, hex_rgb, read_page
from report_events import START, TARGET, Clock, committed_run, failed_fetch_run, preflight, rolled_back_run, task


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Page, dict[str, t.Any]]:
    b = ReportBuilder("run-browser", START, playbook="osfleet.hup.rollout")
    b.play_start("wave")
    clock = Clock()
    committed_run(b, clock, "canary-1", nbytes=123456789)
    clock.tick(20)
    committed_run(b, clock, "early-1")
    preflight(b, clock, "early-2", phase="current", version=TARGET)
    failed_fetch_run(b, clock, "early-3")
    rolled_back_run(b, clock, "early-4")
    task(b, clock, "early-5", "osfleet.hup.reboot", "unreachable", step="reboot", result={"unreachable": True, "msg": "gone"})
    custom = {"_run": {"osfleet_hup": {
        "rollout": {"id": "R-42"},
        "waves": {"canary": {"order": 1, "devices": ["canary-1"], "reason": "0 failures, limit 0: continued"},
                  "early": {"order": 2, "devices": ["early-1", "early-2", "early-3", "early-4", "early-5", "early-6"],
                            "halted": True, "reason": "3 failures > limit 1: halted"},
                  "broad": {"order": 3, "devices": ["broad-1"]}},
        "devices": {"early-6": {"outcome": "deferred", "reason": "offline before any change"}},
    }}}
    report = b.build(clock.tick(), custom_stats=custom)
    directory = tmp_path_factory.mktemp("report")
    write_reports(report, directory)
    return read_page(directory / "report.html", directory / "screenshot.png"), report


def test_rendered_rows_of_devices_and_waves(page: tuple[Page, dict[str, t.Any]]) -> None:
    shown, report = page
    assert shown.title == "osfleet.hup run run-browser"
    assert sorted(shown.devices) == sorted(d["name"] for d in report["devices"])
    assert shown.device_outcomes == {d["name"]: d["outcome"] for d in report["devices"]}
    row = shown.devices["canary-1"]
    for text in ("canary", "2.88.4", "2.113.0", "balenahup", "delta", "123,456,789", "committed", "/mnt/data/balenahup/osfleet-hup.20261201T100000Z-ab12.log"):
        assert text in row, (text, row)
    assert "failed at step fetch" in shown.devices["early-3"] and "no source worked" in shown.devices["early-3"]
    assert "rolled back (health)" in shown.devices["early-4"] and "yes (health)" in shown.devices["early-4"]
    assert "unreachable (nothing changed)" in shown.devices["early-5"]
    assert "deferred" in shown.devices["early-6"] and "offline before any change" in shown.devices["early-6"]
    assert "already current" in shown.devices["early-2"] and "skipped" in shown.devices["broad-1"]
    assert list(shown.waves) == ["canary", "early", "broad"]
    assert "HALTED" in shown.waves["early"] and "3 failures > limit 1" in shown.waves["early"]
    assert "1 committed" in shown.waves["early"] and "1 rolled back" in shown.waves["early"] and "1 deferred" in shown.waves["early"]
    assert "HALTED" not in shown.waves["canary"] and "continued" in shown.waves["canary"]


def test_timeline_bars_are_drawn_in_the_outcome_colours(page: tuple[Page, dict[str, t.Any]]) -> None:
    shown, report = page
    started = {d["name"] for d in report["devices"] if d["started"]}
    assert set(shown.bars) == started  # every device that ran has a bar; deferred and skipped have none
    assert {b.outcome for b in shown.bars.values()} == {"committed", "current", "failed", "rolled_back", "unreachable"}
    for drawn in shown.bars.values():
        assert drawn.rgb == hex_rgb(COLOURS[drawn.outcome]), (drawn, shown.screenshot)
    # the timeline runs left to right: the canary started first and ended before the early wave started
    canary, early = shown.bars["canary-1"], shown.bars["early-1"]
    assert canary.box[0] < early.box[0] and canary.box[0] + canary.box[2] < early.box[0]
    assert canary.box[1] < early.box[1]  # the canary wave's rows come first
    assert early.box[2] > shown.bars["early-2"].box[2]  # a full update takes longer than a preflight
